"""The planner's steps on their own: the cost model's parts (links, step model, ranking batch, pipeline hops),
one candidate's checks (shape rules, batching, utilisation) and the ranking — each checked against what the whole
plan does with it, so a step that drifts from ``decode_cost`` or ``_evaluate`` fails here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.hardware import Machine
from qwendeploy.core.models import ModelSpec, find_model
from qwendeploy.core.planner import PlanRequest, default_batching, plan
from qwendeploy.core.planner.cost import pipeline_hops, ranking_batch, replica_links, step_model
from qwendeploy.core.planner.evaluate import Rejection, Shape, _batching, _shape_rejection, _utilisation
from qwendeploy.core.planner.search import _rank
from qwendeploy.core.units import GiB

Q7 = "Qwen/Qwen2.5-7B-Instruct"
Q72 = "Qwen/Qwen2.5-72B-Instruct"


def model(ref: str) -> ModelSpec:
    spec = find_model(ref)
    assert spec is not None, ref
    return spec


def test_a_pipeline_across_two_nodes_has_one_network_hop() -> None:
    p = plan(PlanRequest(spec=model(Q72), machine=parse_inventory("8xH100-80GB", nodes=2), max_model_len=131072))
    cross = [c for c in p.candidates if c.cost is not None and c.pp == 2 and c.tp == 8]
    assert cross, "TP8 × PP2 over two nodes of 8 is a candidate"
    c = cross[0]
    links = replica_links(p.request.machine, c.gpus[:16], 8, 2)
    assert links.network_hops == 1 and links.tp_link == "nvlink"
    assert c.cost is not None and c.cost.network_hops == links.network_hops
    one_node = replica_links(parse_inventory("8xH100-80GB"), parse_inventory("8xH100-80GB").gpus, 4, 2)
    assert one_node.network_hops == 0 and one_node.local_link == "nvlink"


def test_a_single_gpu_replica_hops_over_the_machine_s_own_link() -> None:
    m = parse_inventory("4xL40S")
    links = replica_links(m, m.gpus[:2], 1, 2)
    assert links.tp_link == "none" and links.local_link == "pcie-p2p"


def test_the_step_parts_add_up_to_the_decode_cost() -> None:
    """decode_cost's step is each stage's longer of host and GPU work, times the stages, plus the hops."""
    p = plan(PlanRequest(spec=model(Q72), machine=parse_inventory("8xH100-80GB", nodes=2), max_model_len=131072))
    fitting = [c for c in p.candidates if c.fits]
    assert any(c.pp > 1 for c in fitting) and any(c.pp == 1 for c in fitting)
    mean_ctx = p.max_model_len * p.request.cost.mean_context_fraction
    for c in fitting:
        assert c.cost is not None and c.estimate is not None
        m = step_model(p.request, p.request.machine, c.estimate, c.gpus[: c.tp * c.pp], mean_ctx)
        micro = max(1.0, c.cost.batch / c.pp)
        work = m.stage(micro)
        assert work.gpu_s == pytest.approx(work.memory_s + work.comm_s + work.compute_s)
        assert c.cost.memory_ms == pytest.approx(work.memory_s * 1e3)
        assert c.cost.comm_ms == pytest.approx(work.comm_s * 1e3)
        assert (c.cost.comm_ms > 0) == (c.tp > 1)
        hop = pipeline_hops(m, c.pp, micro).mean_s
        stage = max(m.host(micro), work.gpu_s)
        assert c.cost.step_ms == pytest.approx((c.pp * stage + (c.pp - 1) * hop) * 1e3)
        assert (hop > 0) == (c.pp > 1)


def test_the_ranking_batch_is_one_for_latency_and_what_the_kv_cache_holds_for_throughput() -> None:
    req = PlanRequest(spec=model(Q7), machine=parse_inventory("1xH100-80GB"), max_model_len=32768)
    p = plan(req)
    assert p.chosen is not None and p.chosen.estimate is not None and p.chosen.cost is not None
    est = p.chosen.estimate
    assert ranking_batch(replace(req, objective="latency"), est, 16384.0) == 1
    assert ranking_batch(req, est, 16384.0) == p.chosen.cost.batch
    # Short requests: the KV cache would hold more than the engine runs at once.
    assert ranking_batch(req, est, 1.0) == est.settings.max_num_seqs
    # Requests longer than the cache: still one.
    assert ranking_batch(req, est, 1e12) == 1


def test_pipeline_hops_without_a_pipeline_cost_nothing() -> None:
    p = plan(PlanRequest(spec=model(Q7), machine=parse_inventory("1xH100-80GB"), max_model_len=32768))
    c = p.chosen
    assert c is not None and c.estimate is not None
    m = step_model(p.request, p.request.machine, c.estimate, c.gpus, 1000.0)
    assert pipeline_hops(m, 1, 8.0).mean_s == 0.0
    two = pipeline_hops(m, 2, 8.0)
    assert two.mean_s == pytest.approx(m.hop(m.links.local_link, 8.0)) and two.mean_s > 0


@pytest.mark.parametrize(
    ("inventory", "tp", "pp", "dp", "rule"),
    [
        ("2xH100-80GB", 4, 1, 1, "tp_node"),
        ("8xH100-80GB", 1, 64, 1, "pp_layers"),
        ("4xH100-80GB", 2, 2, 2, "gpus"),
        ("4xH100-80GB", 3, 1, 1, "heads"),
        ("4xH100-80GB", 2, 2, 1, None),
    ],
)
def test_shape_rules_come_before_any_gpu_is_assigned(
    inventory: str, tp: int, pp: int, dp: int, rule: str | None
) -> None:
    m = parse_inventory(inventory, nodes=2) if inventory.startswith("2x") else parse_inventory(inventory)
    req = PlanRequest(spec=model(Q7), machine=m)
    got = _shape_rejection(req, m, Shape(tp, pp, dp, "auto"))
    assert (got.rule if got is not None else None) == rule
    if got is not None:
        assert got.reason


def test_fp8_weights_are_refused_on_old_gpus() -> None:
    m = parse_inventory("2xT4")
    req = PlanRequest(spec=model(Q7), machine=m, quantization="fp8")
    got = _shape_rejection(req, m, Shape(1, 1, 1, "auto"))
    assert got is not None and got.rule == "fp8_weights"


def test_batching_keeps_vllm_s_rule_that_the_token_budget_holds_every_sequence() -> None:
    gpu = parse_inventory("1xH100-80GB").gpus[0]
    default = default_batching(gpu)
    base = PlanRequest(spec=model(Q7), machine=parse_inventory("1xH100-80GB"))
    assert _batching(base, gpu) == default
    # A fixed token budget below the default sequence cap lowers the cap.
    fixed_tokens = _batching(replace(base, max_num_batched_tokens=128), gpu)
    assert fixed_tokens.max_num_seqs == fixed_tokens.max_num_batched_tokens == 128
    # A fixed sequence cap above the default token budget raises the budget.
    many = default.max_num_batched_tokens * 2
    fixed_seqs = _batching(replace(base, max_num_seqs=many), gpu)
    assert fixed_seqs.max_num_seqs == fixed_seqs.max_num_batched_tokens == many


def test_default_batching_is_larger_on_large_cards_but_not_a100() -> None:
    big = default_batching(parse_inventory("1xH100-80GB").gpus[0])
    a100 = default_batching(parse_inventory("1xA100-80GB").gpus[0])
    small = default_batching(parse_inventory("1xL4").gpus[0])
    assert a100 == small
    assert big.max_num_seqs > small.max_num_seqs and big.max_num_batched_tokens > small.max_num_batched_tokens


def test_utilisation_is_lowered_to_free_memory_or_refused_when_fixed() -> None:
    m = parse_inventory("2xRTX4090D")
    busy = replace(m.gpus[0], free_bytes=12 * GiB)
    machine = Machine(gpus=(busy, *m.gpus[1:]), links=m.links, interconnect=m.interconnect, source="test")
    req = PlanRequest(spec=model(Q7), machine=machine)
    lowered = _utilisation(req, machine.gpus, 0.92)
    assert isinstance(lowered, float) and lowered < 12 / 23.64
    assert _utilisation(req, machine.gpus[1:], 0.92) == 0.92
    refused = _utilisation(replace(req, gpu_memory_utilization=0.9), machine.gpus, 0.92)
    assert isinstance(refused, Rejection) and refused.rule == "free_memory" and "GPU 0" in refused.reason
    gone = replace(busy, free_bytes=GiB // 2)
    assert isinstance(_utilisation(req, (gone,), 0.92), Rejection)


def test_ranking_puts_fitting_first_by_score_then_shorter_by_length_then_refused() -> None:
    # Qwen2.5-7B at 128K on four 24 GB cards: six shapes fit, TP1 with the default KV cache only a shorter context.
    p = plan(PlanRequest(spec=model(Q7), machine=parse_inventory("4xRTX4090D"), max_model_len=131072))
    ranked = _rank(list(reversed(p.candidates)))
    assert sorted(map(repr, ranked)) == sorted(map(repr, p.candidates))
    statuses = [c.status for c in ranked]
    assert statuses == sorted(statuses, key=["fits", "shorter", "no"].index)
    assert {"fits", "shorter"} <= set(statuses)
    scores = [c.score for c in ranked if c.fits]
    assert len(scores) > 1 and scores == sorted(scores, reverse=True)
