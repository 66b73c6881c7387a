"""The plan in words: why the chosen placement, and how it compares with the others."""

from __future__ import annotations

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.networks import NETWORKS, SLOW_HOP_FRACTION, SLOW_PREFILL_HOP_S, find_network
from qwendeploy.core.params import param_breakdown
from qwendeploy.core.planner.cost_model import Cost
from qwendeploy.core.planner.values import Candidate, PlanRequest
from qwendeploy.core.units import gib_text

# ----------------------------------------------------------------------------------------------------------
# Explaining and suggesting
# ----------------------------------------------------------------------------------------------------------


_LINK_WORDS = {
    "none": "no all-reduce",
    "nvlink": "NVLink",
    "pcie-p2p": "PCIe with peer-to-peer",
    "pcie-no-p2p": "PCIe without peer-to-peer (through host memory)",
    "network": "the network",
}


def _step_parts(req: PlanRequest, cost: Cost) -> str:
    """What one decode step's time is made of (docs/planning.md §5): the GPU's reads and matrix products, or the
    engine's host work where that is longer."""
    cm = req.cost
    per_request = f"{cm.seq_overhead_s * 1e6:.0f} µs per request"
    host = f"host work {cost.host_ms:.1f} ms: {cm.step_floor_s * 1e3:.1f} ms + {per_request}"
    gpu = f"reads {cost.memory_ms:.1f} ms at {cm.bandwidth_efficiency:.2f} of peak bandwidth"
    gpu += f" + matrix products {cost.compute_ms:.1f} ms at {cm.compute_efficiency:.2f} of tensor peak"
    if cost.host_ms >= cost.memory_ms + cost.compute_ms + cost.comm_ms:
        return f"set by the engine's {host}; the GPU's {gpu} is hidden"
    return f"{gpu}; the {host} is hidden"


def _explain(req: PlanRequest, ranked: list[Candidate], chosen: Candidate | None, max_len: int) -> tuple[str, ...]:
    if chosen is None or chosen.cost is None or chosen.estimate is None:
        return ("No placement holds the target context; see the suggestions.",)
    c, cost, est = chosen, chosen.cost, chosen.estimate
    lines = [
        f"{c.label} wins for {req.objective}: ~{cost.tokens_per_s:,.0f} tok/s estimated "
        f"({'one request' if req.objective == 'latency' else f'{c.dp} replica(s) × batch {cost.batch}'}).",
    ]
    kv_per_gpu = est.per_gpu[0].kv_cache_bytes
    held = est.per_gpu[0].weights_bytes
    bd = param_breakdown(req.spec)
    active = bd.active() / bd.total() if bd.total() else 1.0
    # An MoE step reads only the experts its tokens are routed to; a TP 1 replica has no all-reduce at all.
    reads = (
        f"{gib_text(held * active)} of weights per GPU (the active experts of the {gib_text(held)} it holds)"
        if active < 0.999
        else f"{gib_text(held)} of weights per GPU"
    )
    comm = (
        f"of which {cost.comm_ms:.1f} ms is all-reduce over {_LINK_WORDS[cost.link]}"
        if cost.link != "none"
        else "with no all-reduce (TP 1)"
    )
    lines.append(
        f"Each replica holds {est.kv_cache_tokens:,} KV tokens ({est.per_gpu[0].kv_bytes_per_token:,} B/token per "
        f"GPU, {gib_text(kv_per_gpu)} of KV per GPU); a decode step reads {reads} and takes ~{cost.step_ms:.1f} ms "
        f"({_step_parts(req, cost)}), {comm}."
    )
    others = [x for x in ranked if x.fits and x is not c and x.cost is not None]
    # Compare with the best of a different shape: more replicas vs more TP.
    contrast = next((x for x in others if (x.tp, x.pp) != (c.tp, c.pp)), None)
    if contrast is not None and contrast.cost is not None and contrast.estimate is not None:
        ratio = cost.tokens_per_s / contrast.cost.tokens_per_s if contrast.cost.tokens_per_s else float("inf")
        lines.append(
            f"Against {contrast.label} (~{contrast.cost.tokens_per_s:,.0f} tok/s, {ratio:.2f}× slower): "
            f"{_contrast(c, contrast)}."
        )
    lines += _network_lines(req, c)
    if c.kv_cache_dtype.startswith("fp8"):
        lines.append("It stores the KV cache in fp8 (half the bytes per token); quality impact is usually small.")
    shorter = [x for x in ranked if x.status == "shorter"]
    if shorter:
        s = shorter[0]
        lines.append(f"{s.label} would hold only {s.max_model_len_fit:,} tokens of the {max_len:,} asked.")
    return tuple(lines)


def _contrast(c: Candidate, x: Candidate) -> str:
    """Why ``c`` outranks ``x``, in statements that hold for these two (not a story about GPU counts)."""
    assert c.cost is not None and c.estimate is not None and x.cost is not None and x.estimate is not None
    reasons: list[str] = []
    wc, wx = c.estimate.per_gpu[0].weights_bytes, x.estimate.per_gpu[0].weights_bytes
    if wc < wx * 0.95:
        reasons.append(f"each GPU holds and reads {gib_text(wc)} of weights instead of {gib_text(wx)}")
    kvc, kvx = c.estimate.kv_cache_tokens * c.dp, x.estimate.kv_cache_tokens * x.dp
    if kvc > kvx * 1.05:
        reasons.append(
            f"it has more KV cache in all ({kvc:,} vs {kvx:,} tokens), so it decodes more requests at once "
            f"({c.cost.batch * c.dp} vs {x.cost.batch * x.dp})"
        )
    if x.pp > c.pp:
        reasons.append(
            f"{x.label} sends every step through {x.pp} pipeline stages, which idle part of the time (bubble) "
            "and hand activations on"
        )
    if c.dp > x.dp and c.tp < x.tp:
        reasons.append(f"independent replicas avoid {x.label}'s all-reduce ({x.cost.comm_ms:.1f} ms per step)")
    elif c.cost.comm_ms < x.cost.comm_ms:
        reasons.append(f"less all-reduce per step ({c.cost.comm_ms:.1f} vs {x.cost.comm_ms:.1f} ms)")
    if not reasons:
        reasons.append("the cost model's step time is shorter for the batch each holds")
    out = "; ".join(reasons)
    if c.cost.comm_ms > x.cost.comm_ms and c.cost.link != "none":
        out += f"; that outweighs its own all-reduce ({c.cost.comm_ms:.1f} ms per step)"
    return out


def _network_lines(req: PlanRequest, c: Candidate) -> list[str]:
    """What the inter-node link costs the chosen placement; says so when PP across it hurts."""
    nodes = len({g.node for g in c.gpus})
    if nodes < 2 or c.cost is None:
        return []
    net, cost = find_network(req.network), c.cost
    if cost.network_hops == 0:
        return [
            f"Each replica stays inside one node ({c.dp} replicas over {nodes} nodes): no traffic crosses "
            f"the {net.name} between nodes except requests."
        ]
    share = cost.network_hop_ms / cost.step_ms if cost.step_ms else 0.0
    line = (
        f"Pipeline stages span {nodes} nodes over {net.name}: activations cross {cost.network_hops} network "
        f"hop(s) per step, {cost.network_hop_ms:.2f} ms of the {cost.step_ms:.1f} ms decode step ({share:.0%}); "
        f"a {c.estimate.settings.max_num_batched_tokens if c.estimate else 0}-token prefill chunk takes "
        f"{cost.prefill_hop_ms:.1f} ms per hop."
    )
    out = [line]
    if share > SLOW_HOP_FRACTION or cost.prefill_hop_ms / 1e3 > SLOW_PREFILL_HOP_S:
        faster = [n for n in NETWORKS if n.bandwidth > net.bandwidth]
        out.append(
            f"PP across {net.id} hurts: "
            + (f"the link adds {share:.0%} to every decode step" if share > SLOW_HOP_FRACTION else "")
            + (" and " if share > SLOW_HOP_FRACTION and cost.prefill_hop_ms / 1e3 > SLOW_PREFILL_HOP_S else "")
            + (
                f"every prefill chunk waits {cost.prefill_hop_ms:.0f} ms per hop (time to first token grows)"
                if cost.prefill_hop_ms / 1e3 > SLOW_PREFILL_HOP_S
                else ""
            )
            + (
                f"; {faster[-1].id} would move it {faster[-1].bandwidth / net.bandwidth:.0f}× faster."
                if faster
                else "."
            )
        )
    return out


def _tokens(c: Candidate) -> str:
    return f"{c.estimate.kv_cache_tokens:,}" if c.estimate else "?"


def _holders(g: Gpu) -> str:
    procs = sorted(g.processes, key=lambda p: -(p.used_bytes or 0))
    named = [
        f"PID {p.pid}"
        + (f" ({p.name[:40]})" if p.name else "")
        + (f" {gib_text(p.used_bytes)}" if p.used_bytes else "")
        for p in procs[:3]
    ]
    return ", ".join(named) + (f" and {len(procs) - 3} more" if len(procs) > 3 else "") if named else ""
