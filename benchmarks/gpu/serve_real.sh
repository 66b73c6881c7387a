#!/usr/bin/env bash
# Device side: prove plan/serve/doctor against real NVML and real vLLM (the staged 0.26 recipe).
# usage: bash benchmarks/gpu/serve_real.sh MODEL_DIR CONTEXT [extra plan flags...]
# Writes plan/doctor JSON, serve output, timings and nvidia-smi snapshots to $OUT (one tgz).
set -u
MODEL=$1; CTX=$2; shift 2
TAG=$(basename "$MODEL")-$CTX
source .dev/device-vllm/env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qd-site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/qd-site:$PYTHONPATH
printf '#!/bin/sh\nexec python3 -m vllm.entrypoints.cli.main "$@"\n' > /tmp/vllm && chmod +x /tmp/vllm
R=/tmp/qd-real/$TAG; rm -rf "$R"; mkdir -p "$R"
now() { date +%s.%N; }
python3 -m qwendeploy doctor --json > "$R/doctor.json"; echo "doctor rc=$?" | tee -a "$R/timings.txt"
python3 -m qwendeploy doctor --dump-facts > "$R/facts.json" 2>&1
python3 -m qwendeploy plan "$MODEL" --gpus auto --context "$CTX" "$@" -o "$R/profile.yaml" > "$R/plan.txt" 2>&1; echo "plan rc=$?" | tee -a "$R/timings.txt"
python3 -m qwendeploy plan "$MODEL" --gpus auto --context "$CTX" "$@" --json > "$R/plan.json" 2>&1
python3 -m qwendeploy serve "$R/profile.yaml" --vllm-bin /tmp/vllm --dry-run > "$R/dryrun.txt" 2>&1
t0=$(now)
setsid python3 -m qwendeploy serve "$R/profile.yaml" --vllm-bin /tmp/vllm --log-dir "$R/logs" > "$R/serve.out" 2>&1 &
QD=$!
port=$(python3 -c "import yaml,sys; print(yaml.safe_load(open('$R/profile.yaml'))['server']['port'])")
wait_ready() { for i in $(seq 400); do c=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/health); [ "$c" = 200 ] && return 0; kill -0 $QD 2>/dev/null || return 1; sleep 0.5; done; return 1; }
if wait_ready; then
  echo "ready after $(echo "$(now) - $t0" | bc) s" | tee -a "$R/timings.txt"
  curl -s http://127.0.0.1:$port/v1/models > "$R/models.json"
  name=$(python3 -c "import json; print(json.load(open('$R/models.json'))['data'][0]['id'])")
  curl -s http://127.0.0.1:$port/v1/completions -H 'Content-Type: application/json' -d "{\"model\":\"$name\",\"prompt\":[11,12,13,14],\"max_tokens\":8,\"ignore_eos\":true}" > "$R/completion.json"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > "$R/smi_serving.txt"
  ps -eo pid,ppid,pgid,sid,args > "$R/ps_serving.txt"
  eng=$(pgrep -f "VLLM::EngineCore" | head -1)
  echo "killing engine core $eng" | tee -a "$R/timings.txt"; tc=$(now); kill -9 "$eng"
  for i in $(seq 60); do c=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/health); [ "$c" != 200 ] && break; sleep 0.25; done
  echo "health lost after $(echo "$(now) - $tc" | bc) s (code $c)" | tee -a "$R/timings.txt"
  if wait_ready; then echo "restarted and ready $(echo "$(now) - $tc" | bc) s after the kill" | tee -a "$R/timings.txt"; fi
fi
ts=$(now); kill -TERM $QD; wait $QD; echo "serve exit=$? after SIGTERM in $(echo "$(now) - $ts" | bc) s" | tee -a "$R/timings.txt"
sleep 1
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > "$R/smi_after.txt"
nvidia-smi --query-gpu=memory.used --format=csv >> "$R/smi_after.txt"
ps -eo pid,ppid,pgid,sid,args | grep -iE "vllm|qwendeploy" | grep -v grep > "$R/ps_after.txt"
cat "$R/timings.txt" "$R/smi_after.txt" "$R/ps_after.txt"; tail -30 "$R/serve.out"
[ -n "${OUT:-}" ] && tar -czf "$OUT/real_$TAG.tgz" -C /tmp/qd-real "$TAG"
