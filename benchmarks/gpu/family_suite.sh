#!/usr/bin/env bash
# Device side: vLLM 0.26 start-ups of the Qwen families (hybrid, MoE, VL, embedding) and decode benchmarks.
# usage: bash GDIR/family_suite.sh LABEL CASE [CASE ...]
#   GDIR holds this script, make_family_models.py and bench_sweep.py (carried as .dev/gpu: the device gets the
#   session's checkout, not this worktree); the vLLM recipe is .dev/device-vllm, the staged chunks /tmp/stage.
# Each case: build the random-weight checkpoint (make_family_models.py), `vllm serve` it with the case's flags,
# wait for /health, one request, nvidia-smi + torch.cuda.mem_get_info while serving; for bench cases
# bench_sweep.py (vllm bench serve, random 1000 in / 256 out, concurrency 1, 16, 64) on the same boot; SIGTERM;
# the checkpoint is deleted afterwards (disk). Results: /tmp/results/CASE/ (cmd.txt, vllm.log, ready.txt,
# smi_*.txt, mem_get_info.txt, request.json, bench_c*.json), packed into $OUT/results_LABEL.tgz after every case,
# so a call that runs out of time still returns what ran. A case is skipped when less than its need is left of
# SUITE_BUDGET_S (default 560 s).
set -u
LABEL=$1; shift
G=$(cd "$(dirname "$0")" && pwd)
R=${RECIPE:-.dev/device-vllm}
source "$R/env.sh"
T0=$(date +%s); BUDGET=${SUITE_BUDGET_S:-560}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
if ! python3 -c "import vllm" 2>/dev/null; then
  bash "$R/dev_install.sh" 2>&1 | tail -12
fi
M=/tmp/models; RES=/tmp/results; PORT=8000; mkdir -p "$M" "$RES"
runs=()
pack() {
  [ -n "${OUT:-}" ] || return 0
  tar -czf "$OUT/results_$LABEL.tgz" -C "$RES" "${runs[@]}" 2>/dev/null
  for r in "${runs[@]}"; do cat "$RES/$r/summary.txt" 2>/dev/null; done > "$OUT/summary_$LABEL.txt"
}
smi() { nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader > "$D/smi_$1.txt"
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader >> "$D/smi_$1.txt"; }
# run CASE MODEL NEED_S BENCH(0/1) REQUEST(completion|embedding) [vllm serve flags...]
run() {
  local name=$1 model=$2 need=$3 bench=$4 req=$5; shift 5
  if [ "$(left)" -lt "$need" ]; then echo "SKIP $name: $(left) s left, needs $need"; return; fi
  [ -f "$M/$model/config.json" ] || python3 "$G/make_family_models.py" "$M" "$model"
  D=$RES/$name; rm -rf "$D"; mkdir -p "$D"; runs+=("$name")
  smi before
  echo "vllm serve $M/$model --host 127.0.0.1 --port $PORT --served-model-name $name $*" > "$D/cmd.txt"
  local t0; t0=$(date +%s%N)
  setsid python3 -m vllm.entrypoints.cli.main serve "$M/$model" --host 127.0.0.1 --port "$PORT" \
        --served-model-name "$name" "$@" > "$D/vllm.log" 2>&1 < /dev/null &
  local pid=$! code=000
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true)
    [ "$code" = 200 ] && break
    kill -0 $pid 2>/dev/null || { echo "server exited early"; break; }
    [ "$(left)" -le 15 ] && { echo "out of budget while starting"; break; }
    sleep 1
  done
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "health=$code after $((ms/1000)).$(printf %03d $((ms%1000)))s" | tee "$D/ready.txt"
  if [ "$code" = 200 ]; then
    smi serving
    python3 -c "import torch; f,t=torch.cuda.mem_get_info(); print(f'mem_get_info free={f} total={t} used={t-f} (GiB used {(t-f)/2**30:.3f}, total {t/2**30:.3f})')" > "$D/mem_get_info.txt" 2>&1
    curl -s "http://127.0.0.1:$PORT/v1/models" > "$D/models.json"
    if [ "$req" = embedding ]; then
      curl -s "http://127.0.0.1:$PORT/v1/embeddings" -H 'Content-Type: application/json' \
           -d "{\"model\":\"$name\",\"input\":[11,12,13,14]}" | head -c 600 > "$D/request.json"
    else
      curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
           -d "{\"model\":\"$name\",\"prompt\":[11,12,13,14],\"max_tokens\":8,\"ignore_eos\":true}" > "$D/request.json"
    fi
    if [ "$bench" = 1 ] && [ "$(left)" -gt 60 ]; then
      timeout $(( $(left) - 25 )) python3 "$G/bench_sweep.py" "$name" "$M/$model/tokenizer" "$D" "$PORT" > "$D/bench.log" 2>&1
      grep "^BENCH\|FAILED" "$D/bench.log"
    fi
  fi
  kill -TERM $pid 2>/dev/null
  local i
  for i in $(seq 40); do kill -0 $pid 2>/dev/null || break; sleep 1; done
  local rest; rest=$(ps -eo pid=,sid= | awk -v s=$pid '$2==s{print $1}')
  if [ -n "$rest" ]; then echo "leftover after SIGTERM: $rest" >> "$D/ready.txt"; kill -KILL $rest 2>/dev/null; sleep 2; fi
  echo "stopped (main exited within ${i}s)" >> "$D/ready.txt"
  smi after
  {
    echo "== $name"; cat "$D/cmd.txt"; cat "$D/ready.txt"
    grep -E "Model loading took|Available KV cache memory|GPU KV cache size|Maximum concurrency|Free memory on device|Desired GPU memory|for peak activation|Graph capturing finished|mamba|Mamba|page size|block_size|runner|pooling|Pooling|encoder|Encoder|multimodal|Initializing a V1|Traceback|Error" "$D/vllm.log" | grep -v "Warning: " | cut -c1-400 | head -50
    echo "-- nvidia-smi before/serving/after"; cat "$D"/smi_before.txt "$D"/smi_serving.txt "$D"/smi_after.txt 2>/dev/null
    cat "$D/mem_get_info.txt" 2>/dev/null
    echo "-- request: $(head -c 300 "$D/request.json" 2>/dev/null)"
    grep "^BENCH\|FAILED" "$D/bench.log" 2>/dev/null
  } > "$D/summary.txt"
  tail -n 25 "$D/summary.txt"
  [ "${KEEP_MODELS:-0}" = 1 ] || case " ${KEEP:-} " in *" $model "*) ;; *) rm -rf "${M:?}/$model";; esac
  pack
}
for c in "$@"; do
  case $c in
    # start-ups of the four families, vLLM defaults apart from a fixed --max-model-len (and the util noted)
    next_l8) run next_l8 qwen3-next-80b-a3b-l8 200 0 completion --max-model-len 32768 --gpu-memory-utilization 0.9;;
    # the same with the Triton GDN prefill kernel (the staged recipe prunes the CUTLASS DSL FlashInfer's needs)
    next_l8_tri) run next_l8_tri qwen3-next-80b-a3b-l8 200 1 completion --max-model-len 32768 --gpu-memory-utilization 0.9 --gdn-prefill-backend triton;;
    moe_l12) run moe_l12 qwen3-30b-a3b-l12 200 1 completion --max-model-len 32768 --gpu-memory-utilization 0.9;;
    vl7) run vl7 qwen2.5-vl-7b-instruct 200 0 completion --max-model-len 32768 --gpu-memory-utilization 0.9;;
    emb06) run emb06 qwen3-embedding-0.6b 120 0 embedding --max-model-len 32768 --gpu-memory-utilization 0.9;;
    # decode benchmarks (start-up recorded too)
    q7_bench) run q7_bench qwen2.5-7b-instruct 200 1 completion --max-model-len 32768 --gpu-memory-utilization 0.9 --tokenizer $M/qwen2.5-7b-instruct/tokenizer;;
    q7_fp8_bench) run q7_fp8_bench qwen2.5-7b-instruct 170 1 completion --max-model-len 32768 --gpu-memory-utilization 0.9 --tokenizer $M/qwen2.5-7b-instruct/tokenizer --kv-cache-dtype fp8;;
    q05_bench) run q05_bench qwen2.5-0.5b-instruct 120 1 completion --max-model-len 32768 --gpu-memory-utilization 0.9 --tokenizer $M/qwen2.5-0.5b-instruct/tokenizer;;
    *) echo "unknown case $c";;
  esac
done
pack
echo "suite $LABEL done in $(( $(date +%s) - T0 )) s; $(left) s of budget left"
