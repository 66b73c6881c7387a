"""The placement planner: vLLM's rules, the seed case, fixed choices, free memory and nothing-fits suggestions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.hardware import Machine
from qwendeploy.core.models import find_model
from qwendeploy.core.planner import (
    PlanRequest,
    plan,
    raise_if_infeasible,
    tp_rule_violation,
    valid_tp_sizes,
    yarn_override,
)
from qwendeploy.core.profile_builder import profile_from_plan
from qwendeploy.core.units import GiB
from qwendeploy.errors import BadInput, PlanInfeasible


def model(ref: str):  # type: ignore[no-untyped-def]
    spec = find_model(ref)
    assert spec is not None, ref
    return spec


Q7 = "Qwen/Qwen2.5-7B-Instruct"


def seed(**kw: object):  # type: ignore[no-untyped-def]
    return plan(PlanRequest(spec=model(Q7), machine=parse_inventory("4xRTX4090D"), max_model_len=131072, **kw))  # type: ignore[arg-type]


def test_tp8_on_28_heads_names_the_heads() -> None:
    rule, reason = tp_rule_violation(model(Q7), 8) or ("", "")
    assert rule == "heads"
    assert reason.startswith("28 attention heads cannot be split over 8 GPUs")


def test_valid_tp_sizes_follow_both_vllm_rules() -> None:
    # 7 and 14 pass the head rule but break the KV-head rule (vllm.md); 28 also breaks the MLP split
    # (intermediate_size 18944 is not divisible by 28, and vLLM's column-parallel layers assert it).
    assert valid_tp_sizes(model(Q7), 28) == [1, 2, 4]
    assert tp_rule_violation(model(Q7), 7) == (
        "kv_heads",
        "4 KV heads cannot be replicated over 7 GPUs (vLLM needs 7 to be a multiple of 4)",
    )


def test_fixed_invalid_tp_is_bad_input_with_the_way_out() -> None:
    req = PlanRequest(spec=model(Q7), machine=parse_inventory("8xH100-80GB"), tp=8)
    with pytest.raises(BadInput) as e:
        plan(req)
    assert "28" in e.value.message
    assert e.value.hint is not None
    assert "values that fit this model" in e.value.hint
    assert "--dp 2" in e.value.hint


def test_seed_case_weighs_tp4_against_replicas() -> None:
    p = seed()
    assert p.fits
    labels = {c.label: c for c in p.candidates}
    assert {"TP4", "2× TP2", "4× TP1, fp8 KV"} <= set(labels)
    # 4× TP1 with a bf16 KV cache misses 131072 by a little: it is listed with the longest context that fits.
    tp1 = labels["4× TP1"]
    assert tp1.status == "shorter"
    assert tp1.max_model_len_fit is not None and 100_000 < tp1.max_model_len_fit < 131072
    assert labels["4× TP1, fp8 KV"].fits
    assert p.chosen is not None and p.chosen.tp * p.chosen.pp * p.chosen.dp <= 4
    text = " ".join(p.why)
    assert "Against" in text and "all-reduce" in text
    # The override vLLM 0.33 needs for 131072 tokens.
    assert p.hf_overrides == {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
        },
        "max_position_embeddings": 131072,
    }


def test_seed_case_pcie_without_p2p_is_costed() -> None:
    p = seed(tp=4)
    assert p.chosen is not None and p.chosen.cost is not None
    assert p.chosen.cost.link == "pcie-no-p2p"
    assert p.chosen.cost.comm_ms > 0
    nv = plan(PlanRequest(spec=model(Q7), machine=parse_inventory("4xH100-80GB"), max_model_len=131072, tp=4))
    assert nv.chosen is not None and nv.chosen.cost is not None
    assert nv.chosen.cost.comm_ms < p.chosen.cost.comm_ms


def test_latency_objective_prefers_widest_tp() -> None:
    p = seed(objective="latency")
    assert p.chosen is not None and p.chosen.tp == 4 and p.chosen.pp == 1


def test_fixed_choices_override_the_search() -> None:
    p = seed(tp=2, dp=2, kv_cache_dtype="fp8", gpu_memory_utilization=0.85, max_num_seqs=64, enforce_eager=True)
    assert {(c.tp, c.pp, c.dp, c.kv_cache_dtype) for c in p.candidates} == {(2, 1, 2, "fp8")}
    c = p.chosen
    assert c is not None and c.estimate is not None
    assert c.gpu_memory_utilization == 0.85
    assert c.estimate.settings.max_num_seqs == 64
    assert all(m.cuda_graph_bytes == 0 for m in c.estimate.per_gpu)


def test_context_beyond_the_yarn_maximum_is_refused() -> None:
    with pytest.raises(BadInput, match="at most 131072"):
        yarn_override(model(Q7), 262144)
    assert yarn_override(model(Q7), 32768) is None


def test_nothing_fits_gives_computed_suggestions() -> None:
    p = plan(
        PlanRequest(spec=model("Qwen/Qwen2.5-72B-Instruct"), machine=parse_inventory("1xRTX4090"), max_model_len=32768)
    )
    assert not p.fits
    assert any(s.startswith("more GPUs:") for s in p.suggestions)
    with pytest.raises(PlanInfeasible) as e:
        raise_if_infeasible(p)
    assert e.value.exit_code == 1
    assert e.value.hint and "more GPUs" in e.value.hint


def test_short_of_target_suggests_fp8_kv_and_the_longest_context() -> None:
    # One 4090 with 7B at 131072: bf16 KV misses it; fp8 KV is the cheapest change.
    p = plan(
        PlanRequest(spec=model(Q7), machine=parse_inventory("1xRTX4090"), max_model_len=131072, kv_cache_dtype="auto")
    )
    assert not p.fits
    assert any(s.startswith("--kv-cache-dtype fp8") for s in p.suggestions)
    assert any(s.startswith("--max-model-len ") for s in p.suggestions)


def test_memory_held_by_other_processes_counts() -> None:
    m = parse_inventory("4xRTX4090D")
    busy = replace(m.gpus[0], free_bytes=8 * GiB)
    machine = Machine(gpus=(busy, *m.gpus[1:]), links=m.links, interconnect=m.interconnect, source="test")
    # Fixed utilisation that GPU 0 cannot give: TP4 must use GPU 0 and is refused with the numbers.
    p = plan(PlanRequest(spec=model(Q7), machine=machine, max_model_len=32768, tp=4, gpu_memory_utilization=0.9))
    assert not p.fits
    assert "GPU 0 has 8.0 GiB free" in p.candidates[0].reason
    # Left to choose, 3 replicas of TP1 avoid the busy GPU.
    p2 = plan(PlanRequest(spec=model(Q7), machine=machine, max_model_len=32768, tp=1, dp=3))
    assert p2.chosen is not None and 0 not in {g.index for g in p2.chosen.gpus}


def test_tp_never_crosses_a_node() -> None:
    m = parse_inventory("2xH100-80GB", nodes=2)
    with pytest.raises(BadInput, match="within a node"):
        plan(PlanRequest(spec=model(Q7), machine=m, tp=4))


def test_profile_from_plan_carries_placement_and_estimate() -> None:
    p = seed()
    prof = profile_from_plan(p, generated_by="qwendeploy plan x")
    c = p.chosen
    assert c is not None and c.estimate is not None
    assert prof.placement.tensor_parallel_size == c.tp
    assert prof.model.max_model_len == 131072
    assert prof.model.hf_overrides == p.hf_overrides
    assert prof.estimate.kv_cache_tokens == c.estimate.kv_cache_tokens
    assert prof.hardware.simulated
    if c.tp > 1:  # GeForce without P2P
        assert prof.env.get("NCCL_P2P_DISABLE") == "1"
        assert prof.engine.disable_custom_all_reduce


def test_large_search_is_complete() -> None:
    p = plan(
        PlanRequest(
            spec=model("Qwen/Qwen2.5-72B-Instruct"),
            machine=parse_inventory("8xH100-80GB", nodes=8),
            max_model_len=131072,
        )
    )
    assert p.fits
    assert all(c.tp <= 8 for c in p.candidates if c.status != "no")


def test_a_busy_gpu_is_left_out_rather_than_sinking_every_replica() -> None:
    m = parse_inventory("4xRTX4090D")
    busy = replace(m.gpus[3], free_bytes=4 * GiB)
    machine = Machine(gpus=(*m.gpus[:3], busy), links=m.links, interconnect=m.interconnect, source="test")
    p = plan(PlanRequest(spec=model(Q7), machine=machine, max_model_len=32768))
    assert p.fits and p.chosen is not None
    assert 3 not in {g.index for g in p.chosen.gpus}
    assert any("leaves GPU 3 out for less free memory (GPU 3 has 4.0 GiB free" in n for n in p.notes)
    # The shapes that need all four GPUs are still listed, refused because of GPU 3.
    assert any(c.tp * c.pp * c.dp == 4 and not c.fits for c in p.candidates)
    prof = profile_from_plan(p, generated_by="qwendeploy plan x")
    assert "3" not in prof.placement.gpus and len(prof.placement.gpus) == p.chosen.tp * p.chosen.pp * p.chosen.dp


def test_weights_that_do_not_fit_are_not_blamed_on_the_footprint() -> None:
    p = plan(
        PlanRequest(
            spec=model("Qwen/Qwen3-235B-A22B"), machine=parse_inventory("8xH100-80GB", nodes=2), max_model_len=32768
        )
    )
    tp1 = next(c for c in p.candidates if (c.tp, c.pp) == (1, 1))
    assert tp1.reason.startswith("does not fit: weights 437.9 GiB")
    assert "lower --gpu-memory-utilization" not in tp1.reason
    # Memory held by another process: the budget was lowered to what is free, and the reason says so.
    m = parse_inventory("1xA10G")
    busy = Machine(gpus=(replace(m.gpus[0], free_bytes=6 * GiB),), interconnect=m.interconnect, source="test")
    p2 = plan(PlanRequest(spec=model(Q7), machine=busy, max_model_len=8192))
    assert p2.candidates[0].reason.startswith("does not fit: weights 14.2 GiB")
    assert "lowered to" in p2.candidates[0].reason and "GPU 0 has only 6.0 GiB free" in p2.candidates[0].reason


def test_moe_expert_width_rejections_name_expert_parallel() -> None:
    from qwendeploy.core.models import find_model
    from qwendeploy.core.planner import tp_rule_violation

    moe = find_model("Qwen/Qwen3-30B-A3B-FP8")
    dense = find_model("Qwen/Qwen3-8B-FP8")
    assert moe is not None and dense is not None
    rule = tp_rule_violation(moe, 4)
    assert rule is not None and rule[0] == "fp8_block" and "--enable-expert-parallel" in rule[1]
    for tp in (3, 5, 6, 7):  # a dense model's rejections never mention experts
        dense_rule = tp_rule_violation(dense, tp)
        assert dense_rule is None or "expert" not in dense_rule[1]
