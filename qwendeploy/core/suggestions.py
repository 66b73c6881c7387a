"""When nothing fits: engine changes the planner itself shows would fit, and why nothing did.

Pure. Each suggestion is the planner re-run with one change (``--enforce-eager``, a higher
``--gpu-memory-utilization``, online ``--quantization fp8``); it is offered only when that re-run fits, with the
placement and KV cache it would get. ``why_nothing_fits`` turns the candidates' reasons into the lines a user
needs: the closest candidate and its memory shortfall per GPU, and how many candidates failed for which reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from qwendeploy.core.planner import Candidate, Plan, PlanRequest, longest_shorter, plan
from qwendeploy.core.units import gib_text
from qwendeploy.errors import BadInput

HIGHER_UTILIZATION: tuple[float, ...] = (0.94, 0.95, 0.96, 0.97, 0.98)
"""Budgets tried above vLLM's default, smallest first. Above 0.98 the CUDA context and working memory outside the
budget no longer fit on any card (the planner checks the whole footprint against free memory)."""


def _fits(req: PlanRequest) -> Plan | None:
    try:
        p = plan(req, suggest=False)
    except BadInput:
        return None
    return p if p.chosen is not None else None


def _kv(c: Candidate) -> str:
    return f"{c.estimate.kv_cache_tokens:,}" if c.estimate else "?"


def shortfall_bytes(c: Candidate) -> int | None:
    """How much more memory per GPU the target needs than vLLM's budget gives (None: not a memory miss)."""
    if c.needed_bytes_per_gpu is None or c.estimate is None or c.status == "fits":
        return None
    capacity = min(m.capacity_bytes for m in c.estimate.per_gpu)
    return max(0, c.needed_bytes_per_gpu - capacity)


def engine_suggestions(req: PlanRequest) -> tuple[str, ...]:
    """Engine changes that make ``req`` fit, each checked by re-planning with it; empty when none does."""
    out: list[str] = []
    if not req.enforce_eager:
        p = _fits(replace(req, enforce_eager=True))
        if p is not None and p.chosen is not None:
            out.append(
                f"--enforce-eager: without CUDA graphs the memory they hold is free for the KV cache; fits with "
                f"{p.chosen.label} (KV cache {_kv(p.chosen)} tokens). Decoding is slower without graphs."
            )
    current = req.gpu_memory_utilization
    for util in HIGHER_UTILIZATION:
        if current is not None and util <= current:
            continue
        p = _fits(replace(req, gpu_memory_utilization=util))
        if p is not None and p.chosen is not None:
            out.append(
                f"--gpu-memory-utilization {util}: a larger vLLM budget per GPU (the CUDA context and working "
                f"memory outside it still fit); fits with {p.chosen.label} (KV cache {_kv(p.chosen)} tokens). "
                "Nothing else can use these GPUs then."
            )
            break
    gpus = req.machine.gpus
    if req.spec.quantization is None and req.quantization is None and gpus and all(g.fp8 for g in gpus):
        p = _fits(replace(req, quantization="fp8", variants=()))
        if p is not None and p.chosen is not None:
            out.append(
                f"--quantization fp8: vLLM quantizes the weights to FP8 when loading (Hopper/Ada have FP8 tensor "
                f"cores), about half the weight memory; fits with {p.chosen.label} (KV cache {_kv(p.chosen)} tokens). "
                "Quality is usually close to the 16-bit model; check it on your task."
            )
    if not out:
        combined = _combined(req)
        if combined is not None:
            out.append(combined)
    return tuple(out)


def _combined(req: PlanRequest) -> str | None:
    """No single change fits: the fewest engine changes that fit together (no CUDA graphs, an fp8 KV cache where
    the cards have it, a higher budget), the smallest budget first."""
    eager = [False] if req.enforce_eager else [False, True]
    kv_ok = req.kv_cache_dtype in (None, "auto") and all(g.compute_capability >= (8, 0) for g in req.machine.gpus)
    kvs: list[str | None] = [req.kv_cache_dtype, "fp8"] if kv_ok else [req.kv_cache_dtype]
    utils: list[float | None] = [req.gpu_memory_utilization]
    utils += [u for u in HIGHER_UTILIZATION if req.gpu_memory_utilization is None or u > req.gpu_memory_utilization]
    combos = [(e, k, u) for e in eager for k in kvs for u in utils]
    combos.sort(key=lambda c: (int(c[0]) + int(c[1] != req.kv_cache_dtype) + int(c[2] != utils[0]), c[2] or 0))
    for e, k, u in combos:
        changes = int(e) + int(k != req.kv_cache_dtype) + int(u != utils[0])
        if changes < 2:
            continue
        p = _fits(replace(req, enforce_eager=e, kv_cache_dtype=k, gpu_memory_utilization=u))
        if p is not None and p.chosen is not None:
            flags = " ".join(
                x
                for x in (
                    "--enforce-eager" if e else "",
                    f"--kv-cache-dtype {p.chosen.kv_cache_dtype}"
                    if p.chosen.kv_cache_dtype != (req.kv_cache_dtype or "auto")
                    else "",
                    f"--gpu-memory-utilization {u}" if u != utils[0] else "",
                )
                if x
            )
            return (
                f"{flags} (together; no one of them is enough): fits with {p.chosen.label} "
                f"(KV cache {_kv(p.chosen)} tokens)."
            )
    return None


def with_engine_suggestions(p: Plan) -> Plan:
    """``p`` with ``engine_suggestions`` among its suggestions (after freeing busy GPUs, before shorter contexts or
    more GPUs) and ``why_nothing_fits`` as its ``why``; unchanged when something fits."""
    if p.fits:
        return p
    extra = engine_suggestions(p.request)
    rest = [s for s in p.suggestions if not (extra and s.startswith("No single change found"))]
    head = [s for s in rest if s.startswith("free the GPUs")]
    tail = [s for s in rest if s not in head]
    return replace(p, suggestions=(*head, *extra, *tail), why=why_nothing_fits(p))


def why_nothing_fits(p: Plan) -> tuple[str, ...]:
    """Why no candidate reaches the target: the closest one and its shortfall, then the reasons counted."""
    if p.fits:
        return p.why
    target = f"{p.max_model_len:,} tokens" + (f" × {p.request.concurrency}" if p.request.concurrency > 1 else "")
    lines: list[str] = []
    misses = [(c, s) for c in p.candidates if (s := shortfall_bytes(c)) is not None]
    if misses:
        c, short = min(misses, key=lambda x: x[1])
        assert c.estimate is not None
        capacity = min(m.capacity_bytes for m in c.estimate.per_gpu)
        util = c.gpu_memory_utilization
        lines.append(
            f"Closest: {c.label} needs {gib_text(c.needed_bytes_per_gpu or 0)} per GPU for {target}; vLLM's budget is "
            f"{gib_text(capacity)}"
            + (f" ({util} × {gib_text(c.estimate.per_gpu[0].gpu.total_bytes)})" if util else "")
            + f": {gib_text(short)} short per GPU."
        )
        if c.status == "shorter" and c.max_model_len_fit:
            lines.append(f"It holds {c.max_model_len_fit:,} tokens at most.")
    rules = Counter(c.rule or "memory" for c in p.candidates if c.status != "fits")
    words = {
        "memory": "too little memory",
        "heads": "attention heads not divisible",
        "kv_heads": "KV heads not divisible",
        "mlp": "MLP width not divisible",
        "gpus": "not enough GPUs",
        "free_memory": "not enough free memory",
        "tp_node": "TP across nodes",
    }
    if rules:
        counted = ", ".join(f"{n} {words.get(r, r)}" for r, n in rules.most_common())
        lines.append(f"{sum(rules.values())} candidate(s) miss: {counted}. Each reason is listed with the candidates.")
    lines.append("The suggestions below are changes the planner re-ran and found to fit.")
    return tuple(lines)


def auto_context_note(p: Plan, *, shortened: bool) -> str:
    """What ``--context auto`` chose and why: the native window (vLLM's ``--max-model-len auto`` never enables
    YaRN) and what YaRN would allow on this placement, or the longest context that fits memory."""
    spec = p.request.spec
    native = spec.max_position_embeddings
    if shortened:
        return (
            f"--context auto chose {p.max_model_len:,} tokens: the longest that fits this memory (the model's native "
            f"window is {native:,}), as vLLM's --max-model-len auto does."
        )
    note = (
        f"--context auto chose {p.max_model_len:,} tokens: the model's native window, where vLLM's --max-model-len "
        "auto stops (it never enables YaRN)."
    )
    c = p.chosen
    longest = max(native, spec.max_context_with_yarn)
    if c is not None and c.max_model_len_fit and c.max_model_len_fit > native and longest > native:
        yarn = _longest_with_yarn(p, c)
        if yarn > native:
            note += (
                f" With YaRN the model reaches {longest:,}, and {c.label} holds {yarn:,} (checked by planning that "
                f"length): --context {yarn} asks for it; static YaRN may slightly affect short prompts."
            )
    return note


def _longest_with_yarn(p: Plan, c: Candidate) -> int:
    """The longest context ``c``'s shape holds when planned at that length: the 'longest' column is measured at
    the target, and a longer target needs a little more memory (activations, sampler), so re-plan until it fits."""
    length = c.max_model_len_fit or 0
    fixed = replace(p.request, tp=c.tp, pp=c.pp, dp=c.dp, kv_cache_dtype=c.kv_cache_dtype, variants=())
    for _ in range(4):
        try:
            again = plan(replace(fixed, max_model_len=length), suggest=False)
        except BadInput:
            return 0
        if again.fits:
            return length
        shorter = longest_shorter(again.candidates)
        if not shorter or shorter >= length:
            return 0
        length = shorter
    return 0
