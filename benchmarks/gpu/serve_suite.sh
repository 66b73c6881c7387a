#!/usr/bin/env bash
# Device side: drive `qwendeploy serve` against real vLLM (the staged 0.26 recipe: benchmarks/gpu/README.md)
# through named cases, inside one device call's time limit.
#
# usage: bash benchmarks/gpu/serve_suite.sh LABEL CASE...     (cases: crash32k crashkill yarn128k fp8 fail q14 q3_8b)
#   crash32k  Qwen2.5-7B at 32K: plan --gpus "$GPUS" -o, serve, ready, /v1/models, a completion, kill -9 the engine
#             core: the crash noticed, the old process group gone, restarted and ready again; SIGTERM; GPU empty.
#   crashkill crash32k, plus `doctor` and `plan --gpus auto` while the server holds the GPU, and at the end serve
#             itself is SIGKILLed instead of stopped: its watchdog must end vLLM and free the GPU.
#   yarn128k  Qwen2.5-7B at 128K (the planner adds the YaRN override): ready, a completion over a 40,000-token
#             prompt (beyond the native 32K), SIGTERM; GPU empty.
#   fp8       Qwen2.5-7B at 32K with an fp8 KV cache: ready, a completion, SIGTERM; GPU empty.
#   fail      the 32K profile edited to gpu_memory_utilization 0.21: vLLM refuses max-model-len 32768 (its KV cache
#             cannot hold it); serve must not retry, and must print the doctor's diagnosis.
#   q14, q3_8b  Qwen2.5-14B-Instruct / Qwen3-8B at 32K: ready, a completion, SIGTERM (held-out calibration points).
# Everything lands in /tmp/qd-suite/CASE and, after every step, in $OUT/suite_LABEL.tgz (a timeout keeps what ran).
# A case is skipped when less time is left than it needs (SUITE_BUDGET_S, default 570 s from the script's start).
set -u
LABEL=$1; shift
START=$(date +%s); BUDGET=${SUITE_BUDGET_S:-570}
BASE=/tmp/qd-suite; mkdir -p "$BASE"; T=$BASE/timings.txt
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
left() { echo $((START + BUDGET - $(date +%s))); }
log() { echo "[$(date +%T)] $*" | tee -a "$T"; }
snap() { [ -n "${OUT:-}" ] && tar -czf "$OUT/suite_$LABEL.tgz" -C "$BASE" . 2>/dev/null && cp "$T" "$OUT/suite_$LABEL.txt"; }
MODEL=${SUITE_MODEL:-/tmp/models/qwen2.5-7b-instruct}; GPUS=${SUITE_GPUS:-auto}; VLLM=${SUITE_VLLM:-/tmp/vllm}

setup() {
  if [ ! -d /tmp/site/vllm ]; then
    (cd /tmp/stage && cat site.tar.xz.part* > site.tar.xz && sha256sum -c site.tar.xz.sha256 >/dev/null \
      && tar -xJf site.tar.xz -C /tmp && rm -f site.tar.xz) || { log "unpack failed"; exit 1; }
    log "vLLM site unpacked"
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qd-site .whl/*.whl >/dev/null 2>&1
  printf '#!/bin/sh\nexec python3 -m vllm.entrypoints.cli.main "$@"\n' > /tmp/vllm && chmod +x /tmp/vllm
}
ensure_model() {  # NAME — the random-weight checkpoint under /tmp/models (built on first use)
  [ -n "${SUITE_VLLM:-}" ] && return 0
  [ -f "/tmp/models/$1/config.json" ] && return 0
  python3 benchmarks/gpu/make_models_extra.py /tmp/models "$1" >/dev/null 2>&1; log "$1 checkpoint written"
}
if [ -z "${SUITE_VLLM:-}" ]; then  # SUITE_MODEL/SUITE_GPUS/SUITE_VLLM: a dry run of this script off the GPU
  source .dev/device-vllm/env.sh
  export PYTHONPATH=$PWD:/tmp/site:/tmp/qd-site   # vLLM's own pinned packages first, then ours
  setup
fi

VLLM_MAIN_PATTERN=${SUITE_MAIN_PATTERN:-vllm.entrypoints.cli.main serve}
gpu_snapshot() {  # FILE
  { nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader; } > "$1" 2>&1
}
stamp() { while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "$l"; done; }
health() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${PORT}/health"; }
wait_health() {  # wait for /health 200 while serve ($QD) lives; gives up when the suite's time runs out
  while [ "$(left)" -gt 15 ]; do
    [ "$(health)" = 200 ] && return 0
    kill -0 "$QD" 2>/dev/null || return 1
    sleep 0.25
  done
  return 1
}
start_serve() {  # R PROFILE
  python3 -m qwendeploy serve "$2" --vllm-bin "$VLLM" --log-dir "$1/logs" > >(stamp > "$1/serve.out") 2>&1 &
  QD=$!
  PORT=$(python3 -c "import yaml; print(yaml.safe_load(open('$2'))['server']['port'])")
}
stop_serve() {  # R
  local ts; ts=$(now); kill -TERM "$QD"; wait "$QD"; local rc=$?
  log "serve exit=$rc $(since "$ts") s after SIGTERM"
  sleep 1; gpu_snapshot "$1/smi_after.txt"
  log "after SIGTERM: $(tr '\n' '|' < "$1/smi_after.txt")"
  ps -eo pid,ppid,pgid,args | grep -iE "vllm|EngineCore|qwendeploy" | grep -v grep > "$1/ps_after.txt"
  log "processes left: $(wc -l < "$1/ps_after.txt")"
}
plan_profile() {  # R PLAN-ARGS...
  local r=$1; shift
  python3 -m qwendeploy plan $MODEL --gpus "$GPUS" --vllm-version 0.26 --name "$(basename "$MODEL")" "$@" --json > "$r/plan.json" 2> "$r/plan.err"
  python3 -m qwendeploy plan $MODEL --gpus "$GPUS" --vllm-version 0.26 --name "$(basename "$MODEL")" "$@" --explain -o "$r/profile.yaml" > "$r/plan.txt" 2>&1
  log "plan $* rc=$? ($(python3 -c "import json; d=json.load(open('$r/plan.json')); print('kv', d['kv_cache_tokens'], 'tokens, util', d['engine']['gpu_memory_utilization'])" 2>&1))"
}
completion() {  # R PROMPT_TOKENS
  python3 - "$1" "$2" "$PORT" <<'EOF'
import json, random, sys, time, urllib.request
r, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"
models = json.load(urllib.request.urlopen(base + "/v1/models", timeout=10))
json.dump(models, open(f"{r}/models.json", "w"))
name = models["data"][0]["id"]
random.seed(0)
body = {"model": name, "prompt": [random.randrange(100, 150000) for _ in range(n)], "max_tokens": 8, "ignore_eos": True}
req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
t = time.time()
out = json.load(urllib.request.urlopen(req, timeout=300))
took = time.time() - t
json.dump(out, open(f"{r}/completion.json", "w"))
print(f"model {name} max_model_len {models['data'][0].get('max_model_len')}; completion of {n} prompt tokens:",
      f"usage {out.get('usage')}, {took:.2f} s")
EOF
}

case_serve() {  # TAG NEED_S CRASH PROMPT_TOKENS PLAN-ARGS...
  local tag=$1 need=$2 crash=$3 ntok=$4; shift 4
  if [ "$(left)" -lt "$need" ]; then log "SKIP $tag: $(left) s left, needs $need"; return; fi
  local R=$BASE/$tag; rm -rf "$R"; mkdir -p "$R"; log "== $tag"
  plan_profile "$R" "$@"
  gpu_snapshot "$R/smi_before.txt"
  local t0; t0=$(now); start_serve "$R" "$R/profile.yaml"
  if ! wait_health; then log "$tag: not ready after $(since "$t0") s"; stop_serve "$R"; snap; return; fi
  log "$tag: launch to /health 200: $(since "$t0") s"
  completion "$R" "$ntok" 2>&1 | tee -a "$T"
  gpu_snapshot "$R/smi_serving.txt"; log "serving: $(tr '\n' '|' < "$R/smi_serving.txt")"
  python3 -c "import torch; f, t = torch.cuda.mem_get_info(); print(f'mem_get_info free={f} total={t}')" \
    > "$R/mem_get_info.txt" 2>&1
  ps -eo pid,ppid,pgid,args | grep -iE "vllm|EngineCore" | grep -v grep > "$R/ps_serving.txt"
  if [ "${DOCTOR_WHILE_SERVING:-0}" = 1 ]; then  # real NVML with a real server holding the GPU
    python3 -m qwendeploy doctor --json > "$R/doctor_serving.json" 2>&1; log "doctor while serving rc=$?"
    python3 -m qwendeploy plan $MODEL --gpus "$GPUS" --vllm-version 0.26 --context 32768 --json \
      > "$R/plan_busy.json" 2> "$R/plan_busy.err"; log "plan --gpus auto while serving rc=$? $(head -c 300 "$R/plan_busy.err")"
  fi
  snap
  if [ "$crash" = 1 ]; then
    local main eng pg old tc
    main=$(pgrep -f "$VLLM_MAIN_PATTERN" | head -1); pg=$(ps -o pgid= -p "$main" | tr -d ' ')
    old=$(ps -eo pid=,pgid= | awk -v g="$pg" '$2==g {print $1}' | tr '\n' ' ')
    eng=$(pgrep -f "VLLM::EngineCore" | head -1); [ -z "$eng" ] && eng=$(pgrep "VLLM::EngineCor" | head -1)
    [ -z "$eng" ] && eng=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | head -1 | tr -d ' ')
    log "kill -9 engine core $eng (vLLM main $main, process group $pg: $old)"
    tc=$(now); kill -9 "$eng"
    local code=200
    while [ "$(left)" -gt 15 ]; do code=$(health); [ "$code" != 200 ] && break; sleep 0.1; done
    log "/health answered '$code' $(since "$tc") s after the kill"
    sleep 1
    while [ "$(left)" -gt 15 ] && ! grep -q '"restart"\| restart ' "$R/serve.out"; do sleep 0.25; done
    log "serve events after the kill: $(grep -E 'exited|unhealthy|stopped|restart|diagnosis|leftover' "$R/serve.out" | cut -c1-220 | tr '\n' '|')"
    if wait_health; then
      log "restarted: /health 200 again $(since "$tc") s after the kill"
      local alive=""; for p in $old; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
      log "old process group members still alive: '${alive}'"
      completion "$R" 8 2>&1 | tee -a "$T"
    else
      log "no restart within the time left"
    fi
    snap
  fi
  if [ "${STOP_WITH:-term}" = kill ]; then kill_serve "$R"; else stop_serve "$R"; fi
  snap
}

kill_serve() {  # R — SIGKILL serve itself: its watchdog (and PR_SET_PDEATHSIG) must take vLLM down
  local ts; ts=$(now); kill -9 "$QD"; wait "$QD" 2>/dev/null
  log "serve SIGKILLed"
  while [ "$(left)" -gt 5 ] && pgrep -f "$VLLM_MAIN_PATTERN|VLLM::EngineCore" >/dev/null; do sleep 0.2; done
  log "vLLM processes gone $(since "$ts") s after serve was SIGKILLed (left: $(pgrep -f "$VLLM_MAIN_PATTERN|VLLM::EngineCore" | tr '\n' ' '))"
  sleep 1; gpu_snapshot "$1/smi_after.txt"; log "after serve's SIGKILL: $(tr '\n' '|' < "$1/smi_after.txt")"
  ps -eo pid,ppid,pgid,args | grep -iE "vllm|EngineCore|qwendeploy" | grep -v grep > "$1/ps_after.txt"
}

case_fail() {
  local need=200
  if [ "$(left)" -lt "$need" ]; then log "SKIP fail: $(left) s left"; return; fi
  local R=$BASE/fail; rm -rf "$R"; mkdir -p "$R"; log "== fail"
  plan_profile "$R" --context 32768 --kv-cache-dtype auto
  sed 's/^\(  gpu_memory_utilization:\) .*/\1 0.21/' "$R/profile.yaml" > "$R/profile_021.yaml"
  python3 -m qwendeploy plan $MODEL --gpus "$GPUS" --vllm-version 0.26 --context auto --kv-cache-dtype auto \
    --gpu-memory-utilization 0.21 --json > "$R/plan_auto_021.json" 2>&1
  log "planner at util 0.21: longest context $(python3 -c "import json; print(json.load(open('$R/plan_auto_021.json')).get('max_model_len_fit'))" 2>&1)"
  local t0; t0=$(now); start_serve "$R" "$R/profile_021.yaml"
  while [ "$(left)" -gt 10 ] && kill -0 "$QD" 2>/dev/null; do sleep 0.5; done
  if kill -0 "$QD" 2>/dev/null; then log "fail: serve still running, stopping it"; kill -TERM "$QD"; fi
  wait "$QD"; log "fail: serve exit=$? after $(since "$t0") s; starts: $(grep -c ' started pid ' "$R/serve.out")"
  grep -E "diagnosis|gave up|not restarting|fix|max-model-len|estimated maximum" "$R/serve.out" | cut -c1-400 >> "$T"
  python3 -m qwendeploy doctor --log "$R"/logs/*.log > "$R/doctor_log.txt" 2>&1; log "doctor --log rc=$?"
  gpu_snapshot "$R/smi_after.txt"; log "after: $(tr '\n' '|' < "$R/smi_after.txt")"
  snap
}

log "suite $LABEL: cases $*; $(left) s budget"
DEFAULT_MODEL=$MODEL
for c in "$@"; do
  MODEL=$DEFAULT_MODEL
  case $c in q14) MODEL=/tmp/models/qwen2.5-14b-instruct ;; q3_8b) MODEL=/tmp/models/qwen3-8b ;; esac
  ensure_model "$(basename "$MODEL")"
  case $c in
    crash32k) case_serve crash32k 330 1 1000 --context 32768 --kv-cache-dtype auto ;;
    crashkill) DOCTOR_WHILE_SERVING=1 STOP_WITH=kill case_serve crashkill 330 1 1000 --context 32768 --kv-cache-dtype auto ;;
    yarn128k) case_serve yarn128k 170 0 40000 --context 131072 --kv-cache-dtype auto ;;
    fp8) case_serve fp8 150 0 1000 --context 32768 --kv-cache-dtype fp8 ;;
    fail) case_fail ;;
    q14) case_serve q14 330 0 1000 --context 32768 --kv-cache-dtype auto ;;
    q3_8b) case_serve q3_8b 200 0 1000 --context 32768 --kv-cache-dtype auto ;;
    *) log "unknown case $c" ;;
  esac
done
log "suite $LABEL done, $(left) s left"
snap
