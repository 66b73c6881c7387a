#!/usr/bin/env bash
# Device side: run vLLM start-ups for the estimator's calibration matrix and pack the logs into $OUT.
# Needs the vLLM 0.26 recipe staged as .dev/device-vllm (see docs/accuracy.md, "How the GPU figures were made").
# usage: bash benchmarks/gpu/calibration_cases.sh LABEL CASE [CASE ...]
set -u
LABEL=$1; shift
R=.dev/device-vllm
source "$R/env.sh"
M=/tmp/models
YARN='{"rope_parameters":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768,"rope_theta":1000000.0},"max_position_embeddings":131072}'
need() { [ -f "$M/$1/config.json" ] || python3 benchmarks/gpu/make_models_extra.py "$M" "$1"; }
runs=()
run() { local name=$1 model=$2; shift 2; need "$model"; bash "$R/serve_measure.sh" "$name" "$M/$model" "$@"; runs+=("$name"); }
for c in "$@"; do
  case $c in
    q7_u90) run q7_u90 qwen2.5-7b-instruct --max-model-len 32768 --gpu-memory-utilization 0.9;;
    q7_eager) run q7_eager qwen2.5-7b-instruct --max-model-len 32768 --gpu-memory-utilization 0.9 --enforce-eager;;
    q7_fp8) run q7_fp8 qwen2.5-7b-instruct --max-model-len 32768 --gpu-memory-utilization 0.9 --kv-cache-dtype fp8;;
    q7_yarn) run q7_yarn qwen2.5-7b-instruct --max-model-len 131072 --gpu-memory-utilization 0.9 --hf-overrides "$YARN";;
    q7_u50) run q7_u50 qwen2.5-7b-instruct --max-model-len 32768 --gpu-memory-utilization 0.5;;
    q7_mbt16k) run q7_mbt16k qwen2.5-7b-instruct --max-model-len 32768 --gpu-memory-utilization 0.9 --max-num-batched-tokens 16384;;
    q7_mbt2k) run q7_mbt2k qwen2.5-7b-instruct --max-model-len 32768 --gpu-memory-utilization 0.9 --max-num-batched-tokens 2048 --max-num-seqs 64;;
    q7_nofit) run q7_nofit qwen2.5-7b-instruct --max-model-len 131072 --gpu-memory-utilization 0.2 --hf-overrides "$YARN";;
    q7_fail) run q7_fail qwen2.5-7b-instruct --max-model-len 131072 --gpu-memory-utilization 0.15 --hf-overrides "$YARN";;
    q05_def) run q05_def qwen2.5-0.5b-instruct;;
    q05_u30) run q05_u30 qwen2.5-0.5b-instruct --max-model-len 4096 --gpu-memory-utilization 0.3 --max-num-seqs 64;;
    q3_8b) run q3_8b qwen3-8b --max-model-len 32768 --gpu-memory-utilization 0.92;;
    q3_8b_fp8e) run q3_8b_fp8e qwen3-8b --max-model-len 32768 --gpu-memory-utilization 0.92 --kv-cache-dtype fp8 --enforce-eager;;
    q14_u90) run q14_u90 qwen2.5-14b-instruct --max-model-len 32768 --gpu-memory-utilization 0.9;;
    *) echo "unknown case $c";;
  esac
done
if [ -n "${OUT:-}" ] && [ ${#runs[@]} -gt 0 ]; then
  tar -czf "$OUT/results_$LABEL.tgz" -C /tmp/results "${runs[@]}"
  for r in "${runs[@]}"; do cat "/tmp/results/$r/summary.txt"; done > "$OUT/summary_$LABEL.txt"
fi
