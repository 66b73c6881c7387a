#!/usr/bin/env bash
# Device side: run doctor and plan --gpus auto against real NVML (no vLLM needed); results into $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qd-site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/qd-site
python3 -m qwendeploy doctor > "$OUT/doctor.txt" 2>&1; echo "doctor rc=$?"
python3 -m qwendeploy doctor --json > "$OUT/doctor.json" 2>&1; echo "doctor --json rc=$?"
python3 -m qwendeploy doctor --dump-facts > "$OUT/facts.json" 2>&1; echo "dump-facts rc=$?"
python3 benchmarks/gpu/nvml_dump.py > "$OUT/nvml_raw.json" 2>&1
python3 -m qwendeploy plan Qwen/Qwen2.5-7B-Instruct --gpus auto > "$OUT/plan.txt" 2>&1; echo "plan rc=$?"
python3 -m qwendeploy plan Qwen/Qwen2.5-7B-Instruct --gpus auto --json > "$OUT/plan.json" 2>&1; echo "plan --json rc=$?"
python3 -m qwendeploy plan Qwen/Qwen2.5-7B-Instruct --gpus 0 --context 131072 -o "$OUT/p7-131k.yaml" > "$OUT/plan131k.txt" 2>&1; echo "plan 131k rc=$?"
nvidia-smi -q > "$OUT/nvidia_smi_q.txt"
cat "$OUT/doctor.txt" | head -60; head -40 "$OUT/plan.txt"
