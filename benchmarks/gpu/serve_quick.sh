#!/usr/bin/env bash
# Device side, one call on a fresh machine (chunks c01/c02 already copied to /tmp/stage): unpack the vLLM 0.26
# recipe, build the Qwen2.5-0.5B random-weight checkpoint, then plan --gpus auto and serve it with qwendeploy
# against real vLLM (--enforce-eager: no compile, a short boot): ready, /v1/models, one completion, kill the
# engine core (crash noticed, leftovers reaped, restart begun), SIGTERM, and nvidia-smi shows nothing left.
# A cold machine needs minutes before vLLM is ready (imports alone took over 60 s there): allow 300 s.
set -u
R=/tmp/r; mkdir -p $R; T=$R/timings.txt; now() { date +%s.%N; }; el() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
cd /tmp/stage && cat site.tar.xz.part* > site.tar.xz && sha256sum -c site.tar.xz.sha256 >/dev/null && tar -xJf site.tar.xz -C /tmp && rm -f site.tar.xz; cd - >/dev/null
source .dev/device-vllm/env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qd-site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site:/tmp/qd-site
printf '#!/bin/sh\nexec python3 -m vllm.entrypoints.cli.main "$@"\n' > /tmp/vllm && chmod +x /tmp/vllm
python3 .dev/device-vllm/make_models.py /tmp/models qwen2.5-0.5b-instruct > /dev/null 2>&1
M=/tmp/models/qwen2.5-0.5b-instruct; P=$R/profile.yaml
python3 -m qwendeploy plan $M --gpus auto --context 4096 --enforce-eager --vllm-version 0.26 -o $P > $R/plan.txt 2>&1; echo "plan rc=$?" >> $T
t0=$(now)
python3 -m qwendeploy serve $P --vllm-bin /tmp/vllm --log-dir $R/logs > $R/serve.out 2>&1 &
QD=$!
ready() { for i in $(seq 1200); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/health)" = 200 ] && return 0; kill -0 $QD 2>/dev/null || return 1; sleep 0.25; done; return 1; }
if ready; then
  echo "launch to ready (health 200): $(el $t0) s" >> $T
  curl -s http://127.0.0.1:8000/v1/models > $R/models.json
  curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d "{\"model\":\"$M\",\"prompt\":[11,12,13,14],\"max_tokens\":8,\"ignore_eos\":true}" > $R/completion.json
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > $R/smi_serving.txt
  ps -eo pid,ppid,pgid,sid,args | grep -iE "vllm|qwendeploy" | grep -v grep > $R/ps_serving.txt
  eng=$(pgrep -f "VLLM::EngineCore" | head -1); echo "kill -9 engine core $eng" >> $T; tc=$(now); kill -9 "$eng"
  for i in $(seq 120); do grep -qE "restart|exited|unhealthy" $R/serve.out && break; sleep 0.25; done
  echo "crash noticed by serve after $(el $tc) s: $(grep -E 'exited|unhealthy|restart' $R/serve.out | head -2 | tr '\n' '|')" >> $T
  sleep 4; ps -eo pid,ppid,pgid,sid,args | grep -iE "vllm|EngineCore" | grep -v grep > $R/ps_after_crash.txt
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > $R/smi_after_crash.txt
else
  echo "not ready: $(el $t0) s" >> $T
fi
ts=$(now); kill -TERM $QD; wait $QD; echo "serve exit=$? $(el $ts) s after SIGTERM" >> $T
sleep 1; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > $R/smi_after.txt
nvidia-smi --query-gpu=memory.used --format=csv,noheader >> $R/smi_after.txt
ps -eo pid,ppid,args | grep -iE "vllm|EngineCore|qwendeploy" | grep -v grep > $R/ps_after.txt
cat $T; tail -25 $R/serve.out
tar -czf "$OUT/serve_quick.tgz" -C /tmp r; cp $T "$OUT/"
