"""vLLM's start-up figures, read from real vLLM 0.26 logs and compared with the plan's stored prediction."""

from __future__ import annotations

from pathlib import Path

import yaml

from qwendeploy.core.diagnosis.startup import StartupReport, compare, read_startup
from qwendeploy.core.profile import EstimateSection, GpuEstimate, Profile

RUNS = Path(__file__).parent.parent / "fixtures" / "gpu-runs"
LOG_8B = RUNS / "h100-vllm0.26" / "h100_q3_8b" / "vllm.log"
PROFILE_8B = RUNS / "h100-serve-7b" / "q3_8b" / "profile.yaml"


def _profile(path: Path) -> Profile:
    return Profile.model_validate(yaml.safe_load(path.read_text()))


def test_reads_every_figure_of_a_real_start_up() -> None:
    r = read_startup(LOG_8B.read_text().splitlines())
    assert r.weights_gib == 15.27 and r.kv_cache_gib == 56.07 and r.kv_cache_tokens == 408_256
    assert r.max_concurrency == 12.46 and r.concurrency_len == 32_768
    assert r.activation_gib == 1.29 and r.non_torch_gib is not None
    assert set(r.lines) == {"weights", "kv_cache_memory", "kv_cache_tokens", "max_concurrency", "activation"}


def test_every_served_h200_start_up_has_its_kv_figures() -> None:
    for log in sorted((RUNS / "h200-vllm0.26").glob("*/vllm.log")):
        r = read_startup(log.read_text().splitlines())
        if "Application startup complete" in log.read_text():
            assert r.kv_complete and r.weights_gib, log


def test_the_calibrated_plan_matches_its_start_up_within_2_percent() -> None:
    rows = compare(read_startup(LOG_8B.read_text().splitlines()), _profile(PROFILE_8B).estimate)
    assert [r.name for r in rows] == [
        "weights per GPU",
        "peak activation",
        "KV memory per GPU",
        "KV cache",
        "max concurrency",
    ]
    assert not any(r.flagged for r in rows)


def test_a_difference_over_2_percent_is_flagged_and_an_unknown_prediction_skipped() -> None:
    est = EstimateSection(kv_cache_tokens=400_000, max_concurrency=0.0, per_gpu=[GpuEstimate(weights_bytes=0)])
    r = StartupReport()
    assert r.feed(7, "INFO [kv_cache_utils.py:2177] GPU KV cache size: 408,256 tokens")
    assert not r.feed(8, "INFO [kv_cache_utils.py:2177] GPU KV cache size: 1 tokens")  # first one kept
    r.feed(9, "Maximum concurrency for 32,768 tokens per request: 12.46x")
    (row,) = compare(r, est)  # concurrency and weights predicted as 0: not compared
    assert row.name == "KV cache" and row.line == 7 and row.flagged and round(row.diff * 100, 2) == 2.06
    assert "+2.1%" in row.text() and "more than 2%" in row.text()
    within = compare(r, EstimateSection(kv_cache_tokens=404_000))
    assert not within[0].flagged
