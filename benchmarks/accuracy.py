"""Print the accuracy tables of docs/accuracy.md: ``python benchmarks/accuracy.py [published|gpu]``.

* ``published`` — the estimator against published vLLM start-up logs (tests/fixtures/published_logs.yaml).
* ``gpu`` — the estimator against vLLM start-ups measured on the project's GPU (tests/fixtures/gpu-runs/measured.yaml,
  regenerated from the logs by ``benchmarks/gpu/parse_runs.py``): one table per term.

Both reuse the comparison code of the tests (tests/core/test_accuracy.py, tests/core/test_gpu_calibration.py), so the
tables and the assertions cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

GPU_TERMS = (
    ("weights", 'vLLM "Model loading took X GiB"'),
    ("activation", 'vLLM "X GiB for peak activation"'),
    ("non-torch", 'vLLM "X GiB for non-torch memory"'),
    ("CUDA graphs", 'vLLM "Graph capturing finished …, took X GiB"'),
    ("available KV", 'vLLM "Available KV cache memory: X GiB"'),
    ("KV tokens", 'vLLM "GPU KV cache size: N tokens"'),
    ("longest context", 'vLLM "the estimated maximum model length is N" (the refused start)'),
    ("footprint", "nvidia-smi while serving, the vLLM process"),
)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "core" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def published_table() -> str:
    mod = _load("test_accuracy")
    head = ("settings", "weights published → predicted (GiB)", "error", "KV tokens published → predicted", "error")
    head = (*head, "source")
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|---|---|"]
    for entry in mod.ENTRIES:
        _, r = mod.predict(entry)
        lines.append(
            f"| {r.settings} | {r.weights_pub:.2f} → {r.weights_pred:.2f} | {r.weights_err:+.1f}% | "
            f"{r.tokens_pub:,} → {r.tokens_pred:,} | {r.tokens_err:+.1f}% | {r.source} |"
        )
    return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if unit == "GiB":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def gpu_tables() -> str:
    mod = _load("test_gpu_calibration")
    out: list[str] = []
    for term, what in GPU_TERMS:
        rows = []
        for run in mod.RUNS:
            t = next((x for x in mod.terms(run) if x.name == term), None)
            if t is None or t.measured is None:
                continue
            err = t.error_pct
            rows.append(
                f"| {run['case']} | {mod.describe(run)} | {_fmt(t.predicted, t.unit)} | {_fmt(t.measured, t.unit)} | "
                f"{'–' if err is None else f'{err:+.1f}%'} | {run['card']} | {run['driver']} | {run['vllm_version']} |"
            )
        if not rows:
            continue
        unit = next(x.unit for x in mod.terms(mod.RUNS[0]) if x.name == term) if term != "longest context" else "tokens"
        out.append(f"**{term}** ({unit}; measured = {what})\n")
        out.append("| case | settings | predicted | measured | error | card | driver | vLLM |")
        out.append("|---|---|---|---|---|---|---|---|")
        out.extend(rows)
        out.append("")
    return "\n".join(out).rstrip()


def main(argv: list[str]) -> None:
    which = argv[1] if len(argv) > 1 else "all"
    if which in ("all", "published"):
        print(published_table())
    if which == "all":
        print()
    if which in ("all", "gpu"):
        print(gpu_tables())


if __name__ == "__main__":
    main(sys.argv)
