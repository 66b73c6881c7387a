"""Parse real vLLM start-up logs into the measured-runs table: ``python benchmarks/gpu/parse_runs.py``.

Reads every ``tests/fixtures/gpu-runs/<card>-vllm<version>/<case>/`` folder (``cmd.txt``, ``vllm.log``,
``smi_serving.txt``, ``mem_get_info.txt``) and writes ``tests/fixtures/gpu-runs/measured.yaml``: per case the settings
(from the command line and vLLM's own config lines), the terms vLLM measured ("Model loading took", the "Actual usage
is …" line, "Available KV cache memory", "GPU KV cache size", "Maximum concurrency", "Graph capturing finished",
a start-up refusal's "estimated maximum model length"), the process footprint nvidia-smi showed while serving, the
card, the driver and the vLLM version. ``--check`` exits 1 when the file on disk differs from what the logs give.

``parse_log`` and ``parse_run`` are importable (tests/core/test_gpu_calibration.py uses the table, not the logs).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from qwendeploy.core.gpus import find_gpu

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "tests" / "fixtures" / "gpu-runs"
OUT = RUNS / "measured.yaml"

# Catalog model ids of the random-weight checkpoints (built from the real configs by make_models.py).
MODEL_IDS = {
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-14b-instruct": "Qwen/Qwen2.5-14B-Instruct",
    "qwen3-8b": "Qwen/Qwen3-8B",
    # benchmarks/gpu/make_family_models.py (2026-12-03); the two "-lN" checkpoints keep N of the published layers,
    # so their case folder carries the config.json vLLM loaded (settings.hf_config) and the published id is a label.
    "qwen3-next-80b-a3b-l8": "Qwen/Qwen3-Next-80B-A3B-Instruct",
    "qwen3-30b-a3b-l12": "Qwen/Qwen3-30B-A3B",
    "qwen2.5-vl-7b-instruct": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-embedding-0.6b": "Qwen/Qwen3-Embedding-0.6B",
}

_NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
PATTERNS: dict[str, str] = {
    "vllm_version": r"Initializing a V1 LLM engine \(v([0-9][^)]*)\)",
    "weights_gib": rf"Model loading took {_NUM} GiB",
    "checkpoint_gib": rf"Checkpoint size: {_NUM} GiB",
    "available_kv_gib": rf"Available KV cache memory: {_NUM} GiB",
    "kv_cache_tokens": rf"GPU KV cache size: {_NUM} tokens",
    "max_concurrency": rf"Maximum concurrency for [0-9,]+ tokens per request: {_NUM}x",
    "graphs_captured_gib": rf"Graph capturing finished in [0-9.]+ secs, took {_NUM} GiB",
    "startup_free_gib": rf"Free memory on device \({_NUM}/",
    "cuda_total_gib": rf"Free memory on device \([0-9.]+/{_NUM} GiB\)",
    "requested_gib": rf"Desired GPU memory utilization is \([0-9.]+, {_NUM} GiB\)",
    "activation_gib": rf"GiB for weight, {_NUM} GiB for peak activation",
    "non_torch_gib": rf"GiB for peak activation, {_NUM} GiB for non-torch memory",
    "cuda_graph_gib": rf"non-torch memory, and {_NUM} GiB for CUDAGraph memory",
    "refused_needed_kv_gib": rf"\({_NUM} GiB KV cache is needed",
    "estimated_max_model_len": rf"the estimated maximum model length is {_NUM}",
    "max_num_batched_tokens_logged": rf"Chunked prefill is enabled with max_num_batched_tokens={_NUM}",
    "max_cudagraph_capture_size": rf"'max_cudagraph_capture_size': {_NUM}",
    "max_model_len_logged": rf"max_seq_len={_NUM}",
    "cuda_graph_estimated_gib": rf"Estimated CUDA graph memory: {_NUM} GiB total",
    # hybrid (Gated DeltaNet + attention) models: vLLM's page-size unification
    "attention_block_size": rf"Setting attention block size to {_NUM} tokens",
    "mamba_page_padding_pct": rf"Padding mamba page size by {_NUM}%",
}
TEXT_PATTERNS: dict[str, str] = {
    "runner_resolved": r"Resolved `--runner auto` to `--runner ([a-z]+)`",
    "pooling_type": r"Resolved pooling config: pooling_type=([A-Z]+)",
}
INTS = {
    "kv_cache_tokens",
    "estimated_max_model_len",
    "max_num_batched_tokens_logged",
    "max_cudagraph_capture_size",
    "max_model_len_logged",
    "attention_block_size",
}


def _number(text: str, key: str) -> int | float:
    clean = text.replace(",", "")
    return int(clean) if key in INTS else float(clean)


def parse_log(text: str) -> dict[str, Any]:
    """The memory figures of one vLLM start-up log (first occurrence of each line); absent lines are left out."""
    found: dict[str, Any] = {}
    for key, pattern in PATTERNS.items():
        m = re.search(pattern, text)
        if m is None:
            continue
        found[key] = m.group(1) if key == "vllm_version" else _number(m.group(1), key)
    for key, pattern in TEXT_PATTERNS.items():
        t = re.search(pattern, text)
        if t is not None:
            found[key] = t.group(1)
    found["model_runner"] = "v2" if "Using V2 Model Runner" in text else "v1"
    found["started"] = "Starting vLLM server" in text or "Application startup complete" in text
    return found


def parse_command(cmd: str) -> dict[str, Any]:
    """Engine settings from a ``vllm serve`` command line (flags not given are left out: vLLM's defaults apply)."""
    overrides = None
    m = re.search(r"--hf-overrides\s+'?(\{.*\})'?", cmd)
    if m:  # cmd.txt carries the JSON unquoted: take it before shell-splitting the rest
        overrides = json.loads(m.group(1))
        cmd = cmd[: m.start()] + cmd[m.end() :]
    argv = shlex.split(cmd.strip())
    args: dict[str, Any] = {"model_path": argv[2] if len(argv) > 2 else None}
    i = 3
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("--"):
            i += 1
            continue
        name = flag[2:].replace("-", "_")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value: Any = argv[i + 1]
            i += 2
        else:
            value = True
            i += 1
        args[name] = value
    out: dict[str, Any] = {}
    if args.get("model_path"):
        out["model"] = MODEL_IDS.get(Path(str(args["model_path"])).name, str(args["model_path"]))
    for key in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
        if key in args:
            out[key] = int(args[key])
    if "gpu_memory_utilization" in args:
        out["gpu_memory_utilization"] = float(args["gpu_memory_utilization"])
    out["kv_cache_dtype"] = str(args.get("kv_cache_dtype", "auto"))
    out["enforce_eager"] = bool(args.get("enforce_eager", False))
    if overrides is not None:
        out["hf_overrides"] = overrides
    return out


def parse_smi(text: str) -> dict[str, Any]:
    """``name, driver, used MiB, total MiB`` and ``pid, used MiB`` lines of nvidia-smi while serving."""
    out: dict[str, Any] = {}
    m = re.search(r"^(NVIDIA [^,]+), ([0-9.]+), ([0-9]+) MiB, ([0-9]+) MiB", text, re.M)
    if m:
        out.update(card=m.group(1), driver=m.group(2), smi_used_mib=int(m.group(3)), nvml_total_mib=int(m.group(4)))
    p = re.search(r"^[0-9]+, (?:[^,\n]+, )?([0-9]+) MiB", text, re.M)  # pid, [process name,] used
    if p:
        out["process_mib"] = int(p.group(1))
    return out


def parse_run(folder: Path) -> dict[str, Any]:
    """One case folder → one row of the measured table."""
    settings = parse_command((folder / "cmd.txt").read_text(encoding="utf-8"))
    if (folder / "config.json").exists():  # the checkpoint's own config (a reduced-layer one, or not in the catalog)
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        settings["hf_config"] = str((folder / "config.json").relative_to(ROOT))
        settings["num_hidden_layers"] = int(cfg["num_hidden_layers"])
    log = parse_log((folder / "vllm.log").read_text(encoding="utf-8", errors="replace"))
    logged = ("vllm_version", "max_num_batched_tokens_logged", "max_model_len_logged")
    measured = {k: v for k, v in log.items() if k not in logged}
    if "max_model_len" not in settings and "max_model_len_logged" in log:
        settings["max_model_len_effective"] = log["max_model_len_logged"]
    if "max_num_batched_tokens" not in settings and "max_num_batched_tokens_logged" in log:
        settings["max_num_batched_tokens_effective"] = log["max_num_batched_tokens_logged"]
    row: dict[str, Any] = {"case": folder.name, "vllm_version": log.get("vllm_version"), "settings": settings}
    smi_file = folder / "smi_serving.txt"
    smi = parse_smi(smi_file.read_text(encoding="utf-8")) if smi_file.exists() else {}
    if not smi:
        before = next((f for f in (folder / "smi_before.txt", folder / "smi_after.txt") if f.exists()), None)
        if before is not None:
            smi = {k: v for k, v in parse_smi(before.read_text(encoding="utf-8")).items() if k in ("card", "driver")}
            smi["nvml_total_mib"] = parse_smi(before.read_text(encoding="utf-8")).get("nvml_total_mib")
    row["card"] = smi.pop("card", None)
    row["driver"] = smi.pop("driver", None)
    row["nvml_total_mib"] = smi.pop("nvml_total_mib", None)
    row["cuda_total_bytes"] = None
    mem = folder / "mem_get_info.txt"
    if mem.exists():
        m = re.search(r"total=([0-9]+)", mem.read_text(encoding="utf-8"))
        if m:
            row["cuda_total_bytes"] = int(m.group(1))
    measured.update(smi)
    row["measured"] = measured
    return row


def collect(root: Path = RUNS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for group in sorted(p for p in root.iterdir() if p.is_dir() and "-vllm" in p.name):
        for case in sorted(p for p in group.iterdir() if (p / "vllm.log").exists() and (p / "cmd.txt").exists()):
            row = parse_run(case)
            row["source"] = str(case.relative_to(ROOT))
            rows.append(row)
    # No mem_get_info while serving (the serve suite's runs): the GPU catalog's CUDA total of that card, when it agrees
    # with the total vLLM's own "Free memory on device (free/total GiB)" line printed.
    for r in rows:
        logged = r["measured"].get("cuda_total_gib")
        if not r.get("cuda_total_bytes") and r.get("card") and logged is not None:
            spec = find_gpu(str(r["card"]))
            if round(spec.total_bytes / 2**30, 2) == logged:
                r["cuda_total_bytes"] = spec.total_bytes
    # The CUDA total is the same card's for a failed start (no mem_get_info while serving).
    totals = {r["card"]: r["cuda_total_bytes"] for r in rows if r.get("cuda_total_bytes")}
    for r in rows:
        if not r.get("cuda_total_bytes") and r.get("card") in totals:
            r["cuda_total_bytes"] = totals[r["card"]]
    return rows


HEADER = """\
# Real vLLM start-ups measured on a GPU. GENERATED by `python benchmarks/gpu/parse_runs.py` from the logs under
# tests/fixtures/gpu-runs/*-vllm*/<case>/ — do not edit by hand. GiB = 2^30 bytes, as vLLM prints them (rounded to
# 0.01). settings: the flags of cmd.txt (absent = vLLM's default). measured: vLLM's own start-up lines, plus
# nvidia-smi while serving (smi_used_mib: the whole card; process_mib: the vLLM worker).
"""


def render(rows: list[dict[str, Any]]) -> str:
    return HEADER + yaml.safe_dump(rows, sort_keys=False, allow_unicode=True, width=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if measured.yaml is not what the logs give")
    args = ap.parse_args(argv)
    text = render(collect())
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python benchmarks/gpu/parse_runs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({text.count('- case:')} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
