"""The supervisor's live status walks vLLM's real start-up phases in order (logs from vLLM 0.26 on an H200)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwendeploy.core.serve_phases import PHASE_ORDER, phase_of

RUNS = Path(__file__).parent.parent / "fixtures" / "gpu-runs" / "h200-vllm0.26"
FULL = [
    "loading weights",
    "profiling memory",
    "KV cache allocated",
    "capturing CUDA graphs",
    "sampler warm-up",
    "ready",
]


def _walk(log: Path) -> list[str]:
    seen: list[str] = []
    for line in log.read_text().splitlines():
        ph = phase_of(line)
        if ph and (not seen or PHASE_ORDER[ph] > PHASE_ORDER[seen[-1]]):
            seen.append(ph)
    return seen


@pytest.mark.parametrize("case", ["q7_u90", "q05_def", "q3_8b", "q14_u90", "q7_fp8", "q7_yarn"])
def test_served_runs_walk_every_phase(case: str) -> None:
    assert _walk(RUNS / case / "vllm.log") == FULL


def test_eager_run_skips_graph_capture() -> None:
    assert _walk(RUNS / "q7_eager" / "vllm.log") == [p for p in FULL if p != "capturing CUDA graphs"]


def test_failed_start_stops_in_profiling() -> None:
    assert _walk(RUNS / "q7_fail" / "vllm.log")[-1] == "profiling memory"


def test_engine_config_line_is_not_graph_capture() -> None:
    line = next(
        x for x in (RUNS / "q7_u90" / "vllm.log").read_text().splitlines() if "Initializing a V1 LLM engine" in x
    )
    assert phase_of(line) != "capturing CUDA graphs"
