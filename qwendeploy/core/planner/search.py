"""The search: every (TP, PP, DP) evaluated against memory and the rules, ranked by the cost model, one chosen."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from qwendeploy.core import family_rules
from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import (
    Accounting,
    EngineSettings,
    MemoryEstimate,
    accounting_for,
    effective_quantization,
    estimate,
    resolve_dtype,
)
from qwendeploy.core.planner.assignment import (
    _assign,
    _custom_all_reduce,
    _dp_options,
    _skips_busy_gpu,
    left_out,
    link_class,
)
from qwendeploy.core.planner.cost import decode_cost
from qwendeploy.core.planner.explain import _explain
from qwendeploy.core.planner.rules import (
    _check_request,
    _gib,
    _kv_options,
    _model_limit,
    _pp_options,
    _tp_options,
    default_batching,
    tp_rule_violation,
    yarn_override,
)
from qwendeploy.core.planner.suggest import _suggest
from qwendeploy.core.planner.values import Candidate, Plan, PlanRequest
from qwendeploy.core.releases import release_note
from qwendeploy.core.units import human_size
from qwendeploy.errors import BadInput, PlanInfeasible


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
    spec = req.spec

    def reject(rule: str, reason: str, **kw: Any) -> Candidate:
        return Candidate(tp, pp, dp, kv_dtype, "no", reason, 0.0, rule=rule, **kw)

    n = len(machine.gpus)
    gpn = machine.gpus_per_node
    violation = tp_rule_violation(spec, tp, quantization=req.quantization)
    if violation:
        return reject(*violation)
    if tp > gpn:  # TP stays within a node
        return reject("tp_node", f"tensor parallelism must stay within a node: TP {tp} > {gpn} GPUs per node")
    if pp > spec.num_hidden_layers:
        return reject("pp_layers", f"{spec.num_hidden_layers} layers cannot be split into {pp} pipeline stages")
    if tp * pp * dp > n:
        return reject("gpus", f"needs {tp * pp * dp} GPUs (TP {tp} × PP {pp} × DP {dp}); the inventory has {n}")
    quant = effective_quantization(spec, req.quantization)
    if quant is not None and quant.method == "fp8":
        old = [g for g in machine.gpus if g.compute_capability < (8, 0)]
        if old:
            return reject(
                "fp8_weights",
                (f"FP8 weights need compute capability ≥ 8.0; {old[0].name} is {old[0].compute_capability}"),
            )
    replicas = _assign(machine, tp, pp, dp)
    if replicas is None:
        return reject("gpus", f"cannot form {dp} replica(s) of TP {tp} × PP {pp} with TP groups inside a node")
    max_seqs_default, batched_default = default_batching(replicas[0][0])
    max_seqs = req.max_num_seqs or max_seqs_default
    batched = req.max_num_batched_tokens or batched_default
    if batched < max_seqs:
        # vLLM refuses max_num_batched_tokens < max_num_seqs: a fixed token budget lowers the default sequence cap
        # (the profile then writes it); a default token budget is raised to the sequence cap.
        if req.max_num_batched_tokens is None:
            batched = max_seqs
        else:
            max_seqs = batched
    cal = req.calibration
    default_util = acc.default_gpu_memory_utilization
    worst: tuple[MemoryEstimate, tuple[Gpu, ...], float] | None = None
    seen: set[tuple[object, ...]] = set()
    for replica in replicas:
        link = link_class(machine, replica[:tp])
        # Replicas on identical GPUs with the same free memory and links give the same estimate.
        signature = (link, *((g.name, g.total_bytes, g.free_bytes) for g in replica))
        if signature in seen:
            continue
        seen.add(signature)
        # Free memory counts: vLLM refuses to start when free < utilisation × total (after its CUDA context).
        room = min((g.free_bytes - cal.cuda_context_bytes) / g.total_bytes for g in replica)
        if req.gpu_memory_utilization is not None:
            util = req.gpu_memory_utilization
            if room < util:
                g = min(replica, key=lambda g: g.free_bytes)
                return reject(
                    "free_memory",
                    f"GPU {g.index} has {_gib(g.free_bytes)} free; vLLM needs gpu_memory_utilization {util} × "
                    f"{_gib(g.total_bytes)} = {_gib(util * g.total_bytes)} free (plus its CUDA context) to start",
                )
        else:
            util = min(default_util, math.floor(room * 100) / 100)
            if util < 0.05:
                g = min(replica, key=lambda g: g.free_bytes)
                return reject("free_memory", f"GPU {g.index} has only {_gib(g.free_bytes)} free")
        settings = EngineSettings(
            max_model_len=max_len,
            max_num_seqs=max_seqs,
            max_num_batched_tokens=batched,
            gpu_memory_utilization=util,
            kv_cache_dtype=kv_dtype,
            dtype=req.dtype,
            quantization=req.quantization,
            enforce_eager=req.enforce_eager,
            custom_all_reduce=_custom_all_reduce(link, tp) and not req.disable_custom_all_reduce,
            nvlink=link == "nvlink",
        )
        est = estimate(spec, replica, tp=tp, pp=pp, settings=settings, accounting=acc, calibration=cal)
        if worst is None or est.num_blocks < worst[0].num_blocks:
            worst = (est, replica, util)
    assert worst is not None
    est, replica, util = worst
    used = tuple(g for r in replicas for g in r)
    block = est.settings.block_size
    target_blocks = est.blocks_for(max_len, req.concurrency)
    per_gpu_fixed = max(
        m.capacity_bytes - m.kv_budget_bytes + target_blocks * m.kv_bytes_per_token * block for m in est.per_gpu
    )
    capacity = min(m.capacity_bytes for m in est.per_gpu)
    common = {
        "gpus": used,
        "estimate": est,
        "gpu_memory_utilization": util,
        "needed_bytes_per_gpu": per_gpu_fixed,
    }
    fixed = max(m.capacity_bytes - m.kv_budget_bytes for m in est.per_gpu)
    if any(m.kv_budget_bytes <= 0 for m in est.per_gpu) or est.num_blocks < 2:
        m0 = est.per_gpu[0]
        return reject(
            "memory",
            f"does not fit: weights {_gib(m0.weights_bytes)} + activation {_gib(m0.activation_bytes)} + overhead "
            f"{_gib(fixed - m0.weights_bytes - m0.activation_bytes)} per GPU leave no room for a KV cache in "
            f"{util} × {_gib(m0.gpu.total_bytes)} = {_gib(capacity)}" + _lowered(req, util, default_util, replica),
            **common,
        )
    # What sits outside the budget (CUDA context, graphs captured after the KV cache in some releases, the sampler
    # warm-up's working memory) must still fit in what the GPU physically has free.
    over = [m for m in est.per_gpu if m.footprint_bytes > m.gpu.free_bytes]
    if over:
        m = over[0]
        graphs = "" if m.graphs_in_budget else f"CUDA graphs {human_size(m.cuda_graph_bytes)}, "
        return reject(
            "cuda_graphs" if not m.graphs_in_budget else "footprint",
            f"the process would hold {human_size(m.footprint_bytes)} on GPU {m.gpu.index} ({util} budget "
            f"{human_size(m.capacity_bytes)} plus {graphs}CUDA context and working memory outside it in vLLM "
            f"{acc.vllm_version}) but {human_size(m.gpu.free_bytes)} is free; lower --gpu-memory-utilization"
            + (" or use --enforce-eager" if not m.graphs_in_budget else ""),
            **common,
        )
    fit_len = min(est.max_len_for(req.concurrency), _model_limit(spec))
    conc = f" × {req.concurrency} requests" if req.concurrency > 1 else ""
    # Say which GPUs were skipped only when a busier one was left out (not for a plain remainder).
    skipped = f"; {left_out(machine, used)}" if _skips_busy_gpu(machine, used) else ""
    if est.fits(req.concurrency):
        cost = decode_cost(req, machine, est, replica, dp, max_len)
        speed = "" if spec.is_pooling else f", ~{cost.tokens_per_s:,.0f} tok/s"
        reason = (
            f"fits {max_len} tokens{conc}: KV cache {est.kv_cache_tokens:,} tokens per replica "
            f"({est.max_concurrency:.2f}× concurrency){speed}"
        )
        reason += skipped
        return Candidate(
            tp,
            pp,
            dp,
            kv_dtype,
            "fits",
            reason,
            round(cost.tokens_per_s, 1),
            max_model_len_fit=fit_len,
            cost=cost,
            **common,  # type: ignore[arg-type]
        )
    if fit_len >= block:
        shorter = replace(est.settings, max_model_len=fit_len)
        est_short = replace(est, settings=shorter, max_concurrency=est.kv_cache_tokens / fit_len)
        cost = decode_cost(req, machine, est_short, replica, dp, fit_len)
        reason = (
            f"fits only {fit_len} tokens{conc} (target {max_len}): needs {_gib(per_gpu_fixed)} per GPU, "
            f"has {_gib(capacity)}"
        )
        reason += skipped
        return Candidate(
            tp,
            pp,
            dp,
            kv_dtype,
            "shorter",
            reason,
            round(cost.tokens_per_s, 1),
            max_model_len_fit=fit_len,
            cost=cost,
            rule="memory",
            **common,  # type: ignore[arg-type]
        )
    return reject(
        "memory",
        f"does not fit: needs {_gib(per_gpu_fixed)} per GPU for {max_len} tokens{conc}, has {_gib(capacity)}",
        **common,
    )


def _lowered(req: PlanRequest, util: float, default_util: float, replica: Sequence[Gpu]) -> str:
    """Why the budget is smaller than vLLM's default, when free memory lowered it."""
    if req.gpu_memory_utilization is not None or util >= default_util:
        return ""
    low = min(replica, key=lambda g: g.free_bytes)
    return f" (gpu_memory_utilization lowered to {util} because GPU {low.index} has only {_gib(low.free_bytes)} free)"


def plan(req: PlanRequest, *, suggest: bool = True) -> Plan:
    """Search every placement of ``req.spec`` on ``req.machine`` and choose one.

    Args:
        req: model, inventory, target and fixed choices.
        suggest: compute the cheapest changes that would fit when nothing does (re-plans with changes).

    Returns:
        The plan; ``plan.fits`` is False when nothing reaches the target (``suggestions`` says what would).

    Raises:
        BadInput: a fixed choice breaks a rule (message names it and the valid values), or the context is
            beyond the model's maximum.
    """
    _check_request(req)
    spec, machine = req.spec, req.machine
    try:
        acc = accounting_for(req.vllm_version)
    except ValueError as e:
        raise BadInput(str(e)) from None
    max_len = req.max_model_len or family_rules.default_context(spec)
    family_rules.check_context(spec, max_len, allow_untrained=req.allow_untrained_context)
    yarn = yarn_override(spec, max_len) if not spec.dual_chunk_trained_length else None
    overrides = yarn or family_rules.hf_overrides(spec)
    n, gpn, nodes = len(machine.gpus), machine.gpus_per_node, machine.nodes
    candidates: list[Candidate] = []
    for tp in _tp_options(spec, req, gpn):
        for pp in _pp_options(spec, req, n, tp, nodes):
            dps = [req.dp] if req.dp is not None else _dp_options(machine, tp, pp)
            for dp in dps:
                kv_opts = _kv_options(req, machine)
                first = _evaluate(req, machine, tp, pp, dp, kv_opts[0], max_len, acc)
                candidates.append(first)
                # fp8 KV only as a fallback for a shape whose default KV cache misses the target.
                if first.status == "shorter" and len(kv_opts) > 1:
                    candidates.append(_evaluate(req, machine, tp, pp, dp, kv_opts[1], max_len, acc))
    order = {"fits": 0, "shorter": 1, "no": 2}
    ranked = sorted(
        candidates,
        key=lambda c: (
            order[c.status],
            -c.score if c.status != "shorter" else -(c.max_model_len_fit or 0),
            c.tp * c.pp,
        ),
    )
    fitting = [c for c in ranked if c.fits]
    chosen = fitting[0] if fitting else None
    dtype = resolve_dtype(spec, req.dtype)
    base_settings = (chosen.estimate.settings if chosen and chosen.estimate else None) or EngineSettings(
        max_model_len=max_len, dtype=dtype, kv_cache_dtype=req.kv_cache_dtype or "auto"
    )
    notes: list[str] = family_rules.notes(
        spec,
        chosen.estimate if chosen is not None else None,
        allow_untrained=req.allow_untrained_context,
        max_model_len=max_len,
    )
    notes.insert(0, release_note(req.vllm_version, req.vllm_version_source))
    if any(not g.bf16 for g in machine.gpus) and dtype == "bfloat16":
        notes.append(
            "GPUs without bfloat16 (compute capability < 8.0): the profile runs the model in float16 "
            "(--dtype float16; same memory)."
        )
    if yarn:
        notes.append(
            f"{max_len} tokens is beyond the native {spec.max_position_embeddings}: YaRN (factor "
            f"{yarn['rope_parameters']['factor']:g}) via --hf-overrides; static YaRN may slightly affect short "
            "prompts."
        )
    if (
        chosen is not None
        and chosen.estimate is not None
        and req.max_num_seqs is None
        and req.max_num_batched_tokens is not None
        and chosen.estimate.settings.max_num_seqs < default_batching(chosen.gpus[0])[0]
    ):
        n_seqs = chosen.estimate.settings.max_num_seqs
        notes.append(
            f"--max-num-seqs lowered to {n_seqs} (written to the profile): vLLM requires max_num_batched_tokens "
            f"({req.max_num_batched_tokens}) ≥ max_num_seqs, and its default here is "
            f"{default_batching(chosen.gpus[0])[0]}."
        )
    if chosen is not None and (out := left_out(machine, chosen.gpus)):
        notes.append(f"{chosen.label} {out}.")
    why = _explain(req, ranked, chosen, max_len)
    if spec.is_pooling:
        why = family_rules.without_decode_speed(why, chosen.label if chosen is not None else None)
    suggestions: tuple[str, ...] = ()
    if chosen is None and suggest:
        suggestions = _suggest(req, ranked, max_len, plan)
    return Plan(
        request=req,
        max_model_len=max_len,
        settings=base_settings,
        accounting=acc,
        candidates=tuple(ranked),
        chosen=chosen,
        hf_overrides=overrides,
        why=why,
        suggestions=suggestions,
        notes=tuple(notes),
    )


def raise_if_infeasible(p: Plan) -> None:
    """``PlanInfeasible`` (exit 1) with the computed suggestions when nothing fits."""
    if p.fits:
        return
    hint = "Cheapest changes that fit: " + " | ".join(p.suggestions) if p.suggestions else None
    busy = [g for g in p.request.machine.gpus if g.busy]
    used = sum(g.total_bytes - g.free_bytes for g in busy)
    raise PlanInfeasible(
        f"Nothing fits {p.request.spec.id} at {p.max_model_len} tokens"
        + (f" × {p.request.concurrency} requests" if p.request.concurrency > 1 else "")
        + f" on {len(p.request.machine.gpus)}× {p.request.machine.gpus[0].name}"
        + (f": other processes hold {_gib(used)} of GPU {', '.join(str(g.index) for g in busy)}." if busy else "."),
        hint=hint,
    )
