"""When nothing fits: what would (fp8 KV cache, a quantized variant, one request, freed or more GPUs), each tried
by planning again with ``replan`` (the search, passed in: it calls this module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from qwendeploy.core.hardware import Machine
from qwendeploy.core.planner.explain import _holders, _tokens
from qwendeploy.core.planner.values import Candidate, Plan, PlanRequest, longest_shorter
from qwendeploy.core.units import gib_text
from qwendeploy.errors import BadInput

Replan = Callable[..., Plan]
"""The search (``search.plan``), called as ``replan(request, suggest=False)``."""


def _suggest(req: PlanRequest, ranked: list[Candidate], max_len: int, replan: Replan) -> tuple[str, ...]:
    out: list[str] = []
    freed = _free_the_gpus(req, replan)
    if freed:
        out.append(freed)
    if req.kv_cache_dtype in (None, "auto") and all(g.compute_capability >= (8, 0) for g in req.machine.gpus):
        p = replan(replace(req, kv_cache_dtype="fp8"), suggest=False)
        if p.chosen is not None:
            out.append(f"--kv-cache-dtype fp8: fits with {p.chosen.label} (KV cache {_tokens(p.chosen)} tokens).")
    for variant in req.variants:
        try:
            p = replan(replace(req, spec=variant, quantization=None, variants=()), suggest=False)
        except BadInput:
            continue
        if p.chosen is not None:
            out.append(f"use {variant.id}: fits with {p.chosen.label} (KV cache {_tokens(p.chosen)} tokens).")
            break
    best_short = longest_shorter(ranked)
    if best_short:
        holder = next(c for c in ranked if c.status == "shorter" and c.max_model_len_fit == best_short)
        out.append(f"--max-model-len {best_short}: the longest context that fits ({holder.label}).")
    if req.concurrency > 1:
        p = replan(replace(req, concurrency=1), suggest=False)
        if p.chosen is not None:
            out.append(f"--concurrency 1: one {max_len}-token request fits with {p.chosen.label}.")
    more = None if freed else _more_gpus(req, replan)  # freeing the GPUs you have is cheaper than buying more
    if more:
        out.append(more)
    if not out:
        out.append("No single change found that fits; try a smaller model.")
    return tuple(out)


def _free_the_gpus(req: PlanRequest, replan: Replan) -> str | None:
    """When other processes hold the GPUs: does the same request fit on the same GPUs, empty?"""
    busy = [g for g in req.machine.gpus if g.busy]
    if not busy:
        return None
    empty = replace(req.machine, gpus=tuple(g.emptied() for g in req.machine.gpus))
    try:
        p = replan(replace(req, machine=empty), suggest=False)
    except BadInput:
        return None
    if p.chosen is None:
        return None
    held = "; ".join(
        f"GPU {g.index} has {gib_text(g.free_bytes)} free" + (f" ({_holders(g)} hold the rest)" if g.processes else "")
        for g in busy
    )
    vllm = any("vllm" in proc.name.lower() for g in busy for proc in g.processes)
    return (
        f"free the GPUs: {held}. Stop those processes"
        + (" (a vLLM server is among them: an earlier `qwendeploy serve` still running?)" if vllm else "")
        + f" and plan again: on the same GPUs, empty, it fits with {p.chosen.label} "
        f"(KV cache {_tokens(p.chosen)} tokens)."
    )


def _more_gpus(req: PlanRequest, replan: Replan) -> str | None:
    m = req.machine
    template = m.gpus[0]
    gpn = m.gpus_per_node
    options: list[tuple[int, int]] = []
    for per_node in (2, 4, 8):
        if per_node > gpn:
            options.append((per_node, m.nodes))
    for nodes in (2, 4, 8):
        if nodes > m.nodes:
            options.append((max(gpn, 8), nodes))
    for per_node, nodes in options:
        gpus = tuple(
            replace(template.emptied(), index=node * per_node + i, node=node)
            for node in range(nodes)
            for i in range(per_node)
        )
        bigger = Machine(
            gpus=gpus, interconnect=m.interconnect, simulated=True, nodes=nodes, source=f"{per_node}x{template.name}"
        )
        try:
            p = replan(replace(req, machine=bigger, tp=None, pp=None, dp=None), suggest=False)
        except BadInput:
            continue
        if p.chosen is not None:
            where = f"{per_node}× {template.name}" + (f" on each of {nodes} nodes" if nodes > 1 else "")
            return f"more GPUs: {where} fits with {p.chosen.label}."
    return None
