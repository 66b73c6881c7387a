"""One placement judged: vLLM's rules for its shape, GPUs assigned, each distinct replica sized, then fits /
fits only a shorter context / does not fit, scored by the cost model (``_evaluate``; the search calls it for every
(TP, PP, DP) and KV dtype)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import Accounting, EngineSettings, MemoryEstimate, effective_quantization, estimate
from qwendeploy.core.planner.assignment import _assign, _custom_all_reduce, _skips_busy_gpu, left_out, link_class
from qwendeploy.core.planner.cost import decode_cost
from qwendeploy.core.planner.cost_model import Cost
from qwendeploy.core.planner.rules import Batching, _model_limit, default_batching, tp_rule_violation
from qwendeploy.core.planner.values import Candidate, PlanRequest, Status
from qwendeploy.core.units import gib_text, human_size


@dataclass(frozen=True)
class Rejection:
    """Why a placement cannot be used: the rule's id (``Candidate.rule``) and the reason in words."""

    rule: str
    reason: str


@dataclass(frozen=True)
class Shape:
    """The placement being judged: parallel sizes and the KV cache dtype."""

    tp: int
    pp: int
    dp: int
    kv_cache_dtype: str


@dataclass(frozen=True)
class ReplicaEstimate:
    """One replica's GPUs, its gpu_memory_utilization and the estimate at it."""

    estimate: MemoryEstimate
    replica: tuple[Gpu, ...]
    util: float


@dataclass(frozen=True)
class Sized:
    """A placement's GPUs assigned and sized: the candidate is judged by its replica with the smallest KV cache."""

    gpus: tuple[Gpu, ...]
    """Every GPU used, replica by replica."""
    replica: tuple[Gpu, ...]
    """The replica with the smallest KV cache."""
    estimate: MemoryEstimate
    """That replica's estimate."""
    util: float
    """Its gpu_memory_utilization (the asked one, or vLLM's default lowered to free memory)."""
    needed_bytes_per_gpu: int
    """What the target context × concurrency would need per GPU inside the budget."""
    capacity_bytes: int
    """The smallest budget (utilisation × total) of the replica's GPUs."""


def _candidate(
    shape: Shape,
    status: Status,
    reason: str,
    *,
    sized: Sized | None = None,
    score: float = 0.0,
    fit_len: int | None = None,
    cost: Cost | None = None,
    rule: str = "",
) -> Candidate:
    """``shape`` judged: with its GPUs, estimate and budget once it was sized."""
    if sized is None:
        return Candidate(shape.tp, shape.pp, shape.dp, shape.kv_cache_dtype, status, reason, score, rule=rule)
    return Candidate(
        shape.tp,
        shape.pp,
        shape.dp,
        shape.kv_cache_dtype,
        status,
        reason,
        score,
        gpus=sized.gpus,
        estimate=sized.estimate,
        gpu_memory_utilization=sized.util,
        max_model_len_fit=fit_len,
        needed_bytes_per_gpu=sized.needed_bytes_per_gpu,
        cost=cost,
        rule=rule,
    )


def _reject(shape: Shape, why: Rejection, sized: Sized | None = None) -> Candidate:
    return _candidate(shape, "no", why.reason, sized=sized, rule=why.rule)


def _evaluate(
    req: PlanRequest,
    machine: Machine,
    tp: int,
    pp: int,
    dp: int,
    kv_dtype: str,
    max_len: int,
    acc: Accounting,
) -> Candidate:
    """One placement judged, in order: vLLM's rules for the shape, GPU assignment, memory per replica, then
    whether the target context fits (ranked by the cost model), fits only a shorter one, or nothing fits."""
    shape = Shape(tp, pp, dp, kv_dtype)
    refused = _shape_rejection(req, machine, shape)
    if refused is not None:
        return _reject(shape, refused)
    replicas = _assign(machine, tp, pp, dp)
    if replicas is None:
        return _reject(
            shape,
            Rejection("gpus", f"cannot form {dp} replica(s) of TP {tp} × PP {pp} with TP groups inside a node"),
        )
    sized = _size(req, machine, shape, replicas, max_len, acc)
    if isinstance(sized, Rejection):
        return _reject(shape, sized)
    no_room = _budget_rejection(req, sized, acc)
    if no_room is not None:
        return _reject(shape, no_room, sized)
    return _judge(req, machine, shape, sized, max_len)


def _shape_rejection(req: PlanRequest, machine: Machine, shape: Shape) -> Rejection | None:
    """The first rule that forbids ``shape`` on this inventory before any GPU is assigned, or None."""
    spec, tp, pp, dp = req.spec, shape.tp, shape.pp, shape.dp
    n = len(machine.gpus)
    gpn = machine.gpus_per_node
    violation = tp_rule_violation(spec, tp, quantization=req.quantization)
    if violation:
        return Rejection(*violation)
    if tp > gpn:  # TP stays within a node
        return Rejection("tp_node", f"tensor parallelism must stay within a node: TP {tp} > {gpn} GPUs per node")
    if pp > spec.num_hidden_layers:
        return Rejection("pp_layers", f"{spec.num_hidden_layers} layers cannot be split into {pp} pipeline stages")
    if tp * pp * dp > n:
        return Rejection("gpus", f"needs {tp * pp * dp} GPUs (TP {tp} × PP {pp} × DP {dp}); the inventory has {n}")
    quant = effective_quantization(spec, req.quantization)
    if quant is not None and quant.method == "fp8":
        old = [g for g in machine.gpus if g.compute_capability < (8, 0)]
        if old:
            return Rejection(
                "fp8_weights",
                (f"FP8 weights need compute capability ≥ 8.0; {old[0].name} is {old[0].compute_capability}"),
            )
    return None


def _batching(req: PlanRequest, gpu: Gpu) -> Batching:
    """The request's batching limits, vLLM's defaults for ``gpu`` where it fixes none."""
    default = default_batching(gpu)
    max_seqs = req.max_num_seqs or default.max_num_seqs
    batched = req.max_num_batched_tokens or default.max_num_batched_tokens
    if batched < max_seqs:
        # vLLM refuses max_num_batched_tokens < max_num_seqs: a fixed token budget lowers the default sequence cap
        # (the profile then writes it); a default token budget is raised to the sequence cap.
        if req.max_num_batched_tokens is None:
            batched = max_seqs
        else:
            max_seqs = batched
    return Batching(max_num_seqs=max_seqs, max_num_batched_tokens=batched)


def _utilisation(req: PlanRequest, replica: tuple[Gpu, ...], default_util: float) -> float | Rejection:
    """The replica's gpu_memory_utilization: the asked one if its GPUs have that much free, else vLLM's default
    lowered to what the fullest GPU has free."""
    # Free memory counts: vLLM refuses to start when free < utilisation × total (after its CUDA context).
    room = min((g.free_bytes - req.calibration.cuda_context_bytes) / g.total_bytes for g in replica)
    if req.gpu_memory_utilization is not None:
        util = req.gpu_memory_utilization
        if room < util:
            g = min(replica, key=lambda g: g.free_bytes)
            return Rejection(
                "free_memory",
                f"GPU {g.index} has {gib_text(g.free_bytes)} free; vLLM needs gpu_memory_utilization {util} × "
                f"{gib_text(g.total_bytes)} = {gib_text(util * g.total_bytes)} free (plus its CUDA context) to start",
            )
        return util
    util = min(default_util, math.floor(room * 100) / 100)
    if util < 0.05:
        g = min(replica, key=lambda g: g.free_bytes)
        return Rejection("free_memory", f"GPU {g.index} has only {gib_text(g.free_bytes)} free")
    return util


def _size(
    req: PlanRequest,
    machine: Machine,
    shape: Shape,
    replicas: list[tuple[Gpu, ...]],
    max_len: int,
    acc: Accounting,
) -> Sized | Rejection:
    """Estimate every distinct replica and keep the one with the smallest KV cache."""
    batching = _batching(req, replicas[0][0])
    worst: ReplicaEstimate | None = None
    seen: set[tuple[object, ...]] = set()
    for replica in replicas:
        link = link_class(machine, replica[: shape.tp])
        # Replicas on identical GPUs with the same free memory and links give the same estimate.
        signature = (link, *((g.name, g.total_bytes, g.free_bytes) for g in replica))
        if signature in seen:
            continue
        seen.add(signature)
        util = _utilisation(req, replica, acc.default_gpu_memory_utilization)
        if isinstance(util, Rejection):
            return util
        settings = EngineSettings(
            max_model_len=max_len,
            max_num_seqs=batching.max_num_seqs,
            max_num_batched_tokens=batching.max_num_batched_tokens,
            gpu_memory_utilization=util,
            kv_cache_dtype=shape.kv_cache_dtype,
            dtype=req.dtype,
            quantization=req.quantization,
            enforce_eager=req.enforce_eager,
            custom_all_reduce=_custom_all_reduce(link, shape.tp) and not req.disable_custom_all_reduce,
            nvlink=link == "nvlink",
        )
        est = estimate(
            req.spec, replica, tp=shape.tp, pp=shape.pp, settings=settings, accounting=acc, calibration=req.calibration
        )
        if worst is None or est.num_blocks < worst.estimate.num_blocks:
            worst = ReplicaEstimate(est, replica, util)
    assert worst is not None
    est, replica, util = worst.estimate, worst.replica, worst.util
    target_blocks = est.blocks_for(max_len, req.concurrency)
    block = est.settings.block_size
    return Sized(
        gpus=tuple(g for r in replicas for g in r),
        replica=replica,
        estimate=est,
        util=util,
        needed_bytes_per_gpu=max(
            m.capacity_bytes - m.kv_budget_bytes + target_blocks * m.kv_bytes_per_token * block for m in est.per_gpu
        ),
        capacity_bytes=min(m.capacity_bytes for m in est.per_gpu),
    )


def _budget_rejection(req: PlanRequest, sized: Sized, acc: Accounting) -> Rejection | None:
    """No room for a KV cache inside the budget, or more outside it than the GPU has free; else None."""
    est, util = sized.estimate, sized.util
    if any(m.kv_budget_bytes <= 0 for m in est.per_gpu) or est.num_blocks < 2:
        fixed = max(m.capacity_bytes - m.kv_budget_bytes for m in est.per_gpu)
        m0 = est.per_gpu[0]
        lowered = _lowered(req, util, acc.default_gpu_memory_utilization, sized.replica)
        return Rejection(
            "memory",
            f"does not fit: weights {gib_text(m0.weights_bytes)} + activation {gib_text(m0.activation_bytes)} + "
            f"overhead {gib_text(fixed - m0.weights_bytes - m0.activation_bytes)} per GPU leave no room for a KV cache "
            f"in {util} × {gib_text(m0.gpu.total_bytes)} = {gib_text(sized.capacity_bytes)}" + lowered,
        )
    # What sits outside the budget (CUDA context, graphs captured after the KV cache in some releases, the sampler
    # warm-up's working memory) must still fit in what the GPU physically has free.
    over = [m for m in est.per_gpu if m.footprint_bytes > m.gpu.free_bytes]
    if not over:
        return None
    m = over[0]
    graphs = "" if m.graphs_in_budget else f"CUDA graphs {human_size(m.cuda_graph_bytes)}, "
    return Rejection(
        "cuda_graphs" if not m.graphs_in_budget else "footprint",
        f"the process would hold {human_size(m.footprint_bytes)} on GPU {m.gpu.index} ({util} budget "
        f"{human_size(m.capacity_bytes)} plus {graphs}CUDA context and working memory outside it in vLLM "
        f"{acc.vllm_version}) but {human_size(m.gpu.free_bytes)} is free; lower --gpu-memory-utilization"
        + (" or use --enforce-eager" if not m.graphs_in_budget else ""),
    )


def _judge(req: PlanRequest, machine: Machine, shape: Shape, sized: Sized, max_len: int) -> Candidate:
    """A sized placement with room for a KV cache: fits the target (scored by the cost model), fits only a shorter
    context (scored there), or does not fit."""
    est = sized.estimate
    fit_len = min(est.max_len_for(req.concurrency), _model_limit(req.spec))
    conc = f" × {req.concurrency} requests" if req.concurrency > 1 else ""
    # Say which GPUs were skipped only when a busier one was left out (not for a plain remainder).
    skipped = f"; {left_out(machine, sized.gpus)}" if _skips_busy_gpu(machine, sized.gpus) else ""
    needed, capacity = gib_text(sized.needed_bytes_per_gpu), gib_text(sized.capacity_bytes)
    if est.fits(req.concurrency):
        cost = decode_cost(req, machine, est, sized.replica, shape.dp, max_len)
        speed = "" if req.spec.is_pooling else f", ~{cost.tokens_per_s:,.0f} tok/s"
        reason = (
            f"fits {max_len} tokens{conc}: KV cache {est.kv_cache_tokens:,} tokens per replica "
            f"({est.max_concurrency:.2f}× concurrency){speed}"
        )
        score = round(cost.tokens_per_s, 1)
        return _candidate(shape, "fits", reason + skipped, sized=sized, score=score, fit_len=fit_len, cost=cost)
    if fit_len >= est.settings.block_size:
        shorter = replace(est.settings, max_model_len=fit_len)
        est_short = replace(est, settings=shorter, max_concurrency=est.kv_cache_tokens / fit_len)
        cost = decode_cost(req, machine, est_short, sized.replica, shape.dp, fit_len)
        reason = f"fits only {fit_len} tokens{conc} (target {max_len}): needs {needed} per GPU, has {capacity}"
        score = round(cost.tokens_per_s, 1)
        return _candidate(
            shape, "shorter", reason + skipped, sized=sized, score=score, fit_len=fit_len, cost=cost, rule="memory"
        )
    why = Rejection("memory", f"does not fit: needs {needed} per GPU for {max_len} tokens{conc}, has {capacity}")
    return _reject(shape, why, sized)


def _lowered(req: PlanRequest, util: float, default_util: float, replica: Sequence[Gpu]) -> str:
    """Why the budget is smaller than vLLM's default, when free memory lowered it."""
    if req.gpu_memory_utilization is not None or util >= default_util:
        return ""
    low = min(replica, key=lambda g: g.free_bytes)
    return (
        f" (gpu_memory_utilization lowered to {util} because GPU {low.index} has only {gib_text(low.free_bytes)} free)"
    )
