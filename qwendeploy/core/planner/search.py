"""The search: every (TP, PP, DP) judged (``evaluate``), ranked by the cost model, one chosen, with the plan's notes."""

from __future__ import annotations

from typing import Any

from qwendeploy.core import family_rules
from qwendeploy.core.memory import (
    Accounting,
    EngineSettings,
    accounting_for,
    resolve_dtype,
)
from qwendeploy.core.planner.assignment import (
    _dp_options,
    left_out,
)
from qwendeploy.core.planner.evaluate import _evaluate
from qwendeploy.core.planner.explain import _explain
from qwendeploy.core.planner.rules import (
    _check_request,
    _kv_options,
    _pp_options,
    _tp_options,
    default_batching,
    yarn_override,
)
from qwendeploy.core.planner.suggest import _suggest
from qwendeploy.core.planner.values import Candidate, Plan, PlanRequest, Status
from qwendeploy.core.releases import release_note
from qwendeploy.core.units import gib_text
from qwendeploy.errors import BadInput, PlanInfeasible


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
    spec = req.spec
    try:
        acc = accounting_for(req.vllm_version)
    except ValueError as e:
        raise BadInput(str(e)) from None
    max_len = req.max_model_len or family_rules.default_context(spec)
    family_rules.check_context(spec, max_len, allow_untrained=req.allow_untrained_context)
    yarn = yarn_override(spec, max_len) if not spec.dual_chunk_trained_length else None
    ranked = _rank(_search(req, max_len, acc))
    fitting = [c for c in ranked if c.fits]
    chosen = fitting[0] if fitting else None
    dtype = resolve_dtype(spec, req.dtype)
    base_settings = (chosen.estimate.settings if chosen and chosen.estimate else None) or EngineSettings(
        max_model_len=max_len, dtype=dtype, kv_cache_dtype=req.kv_cache_dtype or "auto"
    )
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
        hf_overrides=yarn or family_rules.hf_overrides(spec),
        why=why,
        suggestions=suggestions,
        notes=_notes(req, chosen, max_len, dtype, yarn),
    )


def _search(req: PlanRequest, max_len: int, acc: Accounting) -> list[Candidate]:
    """Every (TP, PP, DP) the request allows, each judged with the default KV dtype and, where that only fits a
    shorter context, again with fp8 KV."""
    spec, machine = req.spec, req.machine
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
    return candidates


_STATUS_ORDER: dict[Status, int] = {"fits": 0, "shorter": 1, "no": 2}


def _rank(candidates: list[Candidate]) -> list[Candidate]:
    """Fitting candidates by score (best first), then shorter ones by the context they reach, then rejected ones;
    fewer GPUs per replica first among equals."""
    return sorted(
        candidates,
        key=lambda c: (
            _STATUS_ORDER[c.status],
            -c.score if c.status != "shorter" else -(c.max_model_len_fit or 0),
            c.tp * c.pp,
        ),
    )


def _notes(
    req: PlanRequest, chosen: Candidate | None, max_len: int, dtype: str, yarn: dict[str, Any] | None
) -> tuple[str, ...]:
    """The plan's notes: the release followed, the family's, then what the planner changed or left out."""
    spec, machine = req.spec, req.machine
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
    if chosen is not None and (lowered := _lowered_seqs_note(req, chosen)):
        notes.append(lowered)
    if chosen is not None and (out := left_out(machine, chosen.gpus)):
        notes.append(f"{chosen.label} {out}.")
    return tuple(notes)


def _lowered_seqs_note(req: PlanRequest, chosen: Candidate) -> str:
    """Say so when a fixed --max-num-batched-tokens lowered vLLM's default --max-num-seqs."""
    if chosen.estimate is None or req.max_num_seqs is not None or req.max_num_batched_tokens is None:
        return ""
    default = default_batching(chosen.gpus[0]).max_num_seqs
    n_seqs = chosen.estimate.settings.max_num_seqs
    if n_seqs >= default:
        return ""
    return (
        f"--max-num-seqs lowered to {n_seqs} (written to the profile): vLLM requires max_num_batched_tokens "
        f"({req.max_num_batched_tokens}) ≥ max_num_seqs, and its default here is {default}."
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
        + (f": other processes hold {gib_text(used)} of GPU {', '.join(str(g.index) for g in busy)}." if busy else "."),
        hint=hint,
    )
