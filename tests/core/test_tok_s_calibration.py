"""The planner's tok/s cost model against vLLM's own benchmark client on an H200 (issue 13).

tests/fixtures/gpu-runs/h200-bench-vllm0.26/<case>/bench_c<C>.json are ``vllm bench serve`` results (random data,
1000 prompt tokens, 256 output tokens, --ignore-eos, concurrency C) against vLLM 0.26.0 on one NVIDIA H200. The
planner's cost model predicts decode speed: one request's tokens/s (``single_stream_tokens_per_s``) and the
throughput of a batch of C requests (``tokens_per_s``). The measured counterparts are 1000 / TPOT (time per output
token after the first, vLLM's ``median_tpot_ms``) and C × 1000 / TPOT. Each setting is planned as served there,
with ``--max-model-len`` twice the requests' mean context (prompt + 256/2: the planner takes requests as half full,
so its mean context is then the benchmark's), ``--max-num-seqs`` C (the batch), utilisation 0.9, its KV dtype.
Target: within 15%.

Only points where every request completed are used for a batch. The dense models' first runs lost most requests to
a tokenizer problem of the stand-in checkpoints; they were run again on 2026-12-03 (second session) with a
tokenizer that decodes with spaces, and every request completed (q7_fp8_bench's C = 64 did not fit the device time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.models import ModelSpec, find_model, spec_from_hf_config
from qwendeploy.core.planner import Cost, PlanRequest, plan, weights_read_fraction

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "fixtures" / "gpu-runs" / "h200-bench-vllm0.26"
FAMILIES = ROOT / "tests" / "fixtures" / "gpu-runs" / "h200-families-vllm0.26"
INPUT, OUTPUT = 1000, 256


def _moe_spec() -> ModelSpec:
    cfg = json.loads((FAMILIES / "moe_l12" / "config.json").read_text(encoding="utf-8"))
    return spec_from_hf_config(cfg, id="Qwen3-30B-A3B (12 of 48 layers)", source="local:moe_l12")


def _catalog(ref: str) -> ModelSpec:
    spec = find_model(ref)
    assert spec is not None, ref
    return spec


# case → (model, kv cache dtype)
SETTINGS: dict[str, tuple[str, str]] = {
    "q7_bench": ("Qwen/Qwen2.5-7B-Instruct", "auto"),
    "q7_fp8_bench": ("Qwen/Qwen2.5-7B-Instruct", "fp8"),
    "q05_bench": ("Qwen/Qwen2.5-0.5B-Instruct", "auto"),
    "moe_l12": ("moe_l12", "auto"),
}


def spec_for(case: str) -> ModelSpec:
    model = SETTINGS[case][0]
    return _moe_spec() if model == "moe_l12" else _catalog(model)


def result(case: str, c: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BENCH / case / f"bench_c{c}.json").read_text(encoding="utf-8"))
    return data


def valid_points() -> list[tuple[str, int]]:
    """(case, concurrency) where the benchmark's requests decoded: all of them for a batch, at least one alone."""
    out = []
    for case in SETTINGS:
        for f in sorted((BENCH / case).glob("bench_c*.json")):
            c = int(f.stem.removeprefix("bench_c"))
            r = result(case, c)
            if r["completed"] >= 1 and (c == 1 or r["failed"] == 0):
                out.append((case, c))
    return out


POINTS = valid_points()


def planned_len(case: str, c: int) -> int:
    r = result(case, c)
    prompt = round(r["total_input_tokens"] / r["completed"])
    return 2 * (prompt + OUTPUT // 2)


def predicted(case: str, c: int) -> float:
    spec = spec_for(case)
    req = PlanRequest(
        spec=spec,
        machine=parse_inventory("1xH200"),
        max_model_len=planned_len(case, c),
        max_num_seqs=c,
        gpu_memory_utilization=0.9,
        kv_cache_dtype=SETTINGS[case][1],
        vllm_version="0.26",
        tp=1,
        objective="latency" if c == 1 else "throughput",
    )
    p = plan(req, suggest=False)
    assert p.chosen is not None and p.chosen.cost is not None
    cost = p.chosen.cost
    if c == 1:
        return cost.single_stream_tokens_per_s
    assert cost.batch == c
    return cost.tokens_per_s


def measured(case: str, c: int) -> float:
    return c * 1000.0 / float(result(case, c)["median_tpot_ms"])


def test_the_valid_points_cover_four_settings_alone_and_batched() -> None:
    assert {case for case, c in POINTS if c == 1} == set(SETTINGS)
    assert {case for case, c in POINTS if c > 1} == set(SETTINGS)  # every setting batched too
    assert {c for case, c in POINTS} == {1, 16, 64}
    for case, c in POINTS:  # the runs are what the docstring says: every request of 1000 in, 256 out
        r = result(case, c)
        assert r["max_concurrency"] == c and r["failed"] == 0
        assert r["total_output_tokens"] == OUTPUT * r["completed"] and r["total_input_tokens"] == INPUT * r["completed"]
    assert planned_len("moe_l12", 16) == 2256 == planned_len("q7_bench", 1)


@pytest.mark.parametrize(("case", "c"), POINTS, ids=[f"{case}-c{c}" for case, c in POINTS])
def test_predicted_decode_speed_within_15_percent(case: str, c: int) -> None:
    p, m = predicted(case, c), measured(case, c)
    assert abs(p - m) / m <= 0.15, f"{case} c={c}: predicted {p:,.0f} tok/s, measured {m:,.0f}"


def test_host_work_bounds_a_small_model_and_matrix_products_a_large_batch() -> None:
    """The two terms that make batched decode slower than weight reads alone: a 0.5B model's step is the engine's
    host work (floor + per-request share) at every batch; a 7B model's batch of 64 adds matrix products on top of
    its memory reads, and one request is bound by memory."""

    def cost(model: str, c: int) -> Cost:
        req = PlanRequest(
            spec=_catalog(model),
            machine=parse_inventory("1xH200"),
            max_model_len=2256,
            max_num_seqs=c,
            gpu_memory_utilization=0.9,
            vllm_version="0.26",
            tp=1,
        )
        p = plan(req, suggest=False)
        assert p.chosen is not None and p.chosen.cost is not None
        return p.chosen.cost

    small, big, one = (
        cost("Qwen/Qwen2.5-0.5B-Instruct", 64),
        cost("Qwen/Qwen2.5-7B-Instruct", 64),
        cost("Qwen/Qwen2.5-7B-Instruct", 1),
    )
    assert small.step_ms == pytest.approx(small.host_ms)
    assert small.host_ms > small.memory_ms + small.compute_ms
    assert big.step_ms == pytest.approx(big.memory_ms + big.compute_ms)
    assert big.memory_ms + big.compute_ms > big.host_ms
    assert big.compute_ms > 0.2 * big.memory_ms and one.compute_ms < 0.01 * one.memory_ms


def test_an_moe_batch_reads_more_experts_than_one_request() -> None:
    spec = _moe_spec()
    one, sixteen, many = (weights_read_fraction(spec, b) for b in (1, 16, 4096))
    assert 0.1 < one < 0.2 < sixteen < 0.8 < many <= 1.0
    assert weights_read_fraction(_catalog("Qwen/Qwen2.5-7B-Instruct"), 64) == 1.0
