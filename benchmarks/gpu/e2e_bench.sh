#!/usr/bin/env bash
# Device side: qwendeploy plan → serve → bench (vLLM's client) on real vLLM 0.26, Qwen2.5-0.5B random weights.
# Off the GPU: E2E_VLLM=tests/fakes/fake_vllm.py E2E_GPUS=1xH200 E2E_CLIENT=builtin runs the same against the fake.
set -u
OUTD=${OUT:-/tmp/e2e-out}; R=$OUTD/e2e; mkdir -p "$R"
M=/tmp/models; NAME=qwen2.5-0.5b-instruct; PORT=8011
if [ -z "${E2E_VLLM:-}" ]; then
  source .dev/device-vllm/env.sh
  python3 -c "import vllm" 2>/dev/null || bash .dev/device-vllm/dev_install.sh 2>&1 | tail -3
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qd-site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=$PWD:${PYTHONPATH:-}:/tmp/qd-site
  printf '#!/bin/sh\nexec python3 -m vllm.entrypoints.cli.main "$@"\n' > /tmp/vllm && chmod +x /tmp/vllm
  VLLM=/tmp/vllm
  [ -f "$M/$NAME/config.json" ] || python3 .dev/gpu/make_family_models.py "$M" "$NAME" > "$R/build.txt" 2>&1
  MODEL=$M/$NAME; TOK=$M/$NAME/tokenizer
else
  VLLM=$E2E_VLLM; MODEL=${E2E_MODEL}; TOK=""
fi
GPUS=${E2E_GPUS:-auto}; CLIENT=${E2E_CLIENT:-vllm}
t0=$(date +%s)
python3 -m qwendeploy plan "$MODEL" --gpus "$GPUS" --vllm-version 0.26 --context 32768 --name q05e2e --port $PORT \
  --explain -o "$R/profile.yaml" > "$R/plan.txt" 2>&1; echo "plan rc=$?"
python3 - "$R/profile.yaml" "$TOK" <<'PY'
import sys, yaml
p = sys.argv[1]; d = yaml.safe_load(open(p))
d["engine"]["extra_args"] = ["--tokenizer", sys.argv[2]] if sys.argv[2] else []  # the stand-in's word-level tokenizer
tmp = p + ".new"; yaml.safe_dump(d, open(tmp, "w"), sort_keys=False); __import__("os").replace(tmp, p)
print("profile engine:", d["engine"])
PY
echo "serve: $(date +%s)"
python3 -m qwendeploy serve "$R/profile.yaml" --vllm-bin "$VLLM" --log-dir "$R/logs" > "$R/serve.out" 2>&1 &
QD=$!
for i in $(seq 300); do
  [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' http://127.0.0.1:$PORT/health)" = 200 ] && break
  kill -0 $QD 2>/dev/null || { echo "serve exited"; break; }; sleep 1
done
echo "ready after $(( $(date +%s) - t0 )) s"
python3 -m qwendeploy bench "$R/profile.yaml" --concurrency 1,16,64 --client "$CLIENT" ${TOK:+--tokenizer "$TOK"} \
  --vllm-bin "$VLLM" --result-dir "$R/bench" > "$R/bench.txt" 2>&1; echo "bench rc=$?"
python3 -m qwendeploy bench "$R/profile.yaml" --concurrency 1,16 --client builtin --result-dir "$R/bench-builtin" \
  --json > "$R/bench_builtin.json" 2> "$R/bench_builtin.err"; echo "bench builtin rc=$?"
kill -TERM $QD; wait $QD; echo "serve exit=$?"
ps -eo pid,args | grep -iE "vllm|EngineCore" | grep -v grep > "$R/ps_after.txt"
tail -30 "$R/bench.txt"; tail -15 "$R/serve.out"
