"""Rendering a ``Plan``: the ``--json`` contract and the rich report (inventory, memory bars, candidates, verdict)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qwendeploy.core.hardware import Machine
from qwendeploy.core.memory import DEFAULT_BLOCK_SIZE, GpuMemory, MemoryEstimate
from qwendeploy.core.planner import Candidate, Plan
from qwendeploy.core.suggestions import shortfall_bytes
from qwendeploy.core.units import GiB, human_size

if TYPE_CHECKING:  # rich only for the terminal report: `plan --json` does not import it
    from rich.console import Console

BAR_WIDTH = 48


def _g(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _shown(p: Plan) -> Candidate | None:
    """The candidate the report describes: the chosen one, else the best that could start at a shorter length."""
    if p.chosen is not None:
        return p.chosen
    return next((c for c in p.candidates if c.estimate is not None and c.status == "shorter"), None)


def per_gpu_json(est: MemoryEstimate | None) -> list[dict[str, Any]]:
    if est is None:
        return []
    return [
        {
            "index": m.gpu.index,
            "name": m.gpu.name,
            "pp_rank": m.pp_rank,
            "layers": m.layers,
            "weights_bytes": m.weights_bytes,
            "activation_bytes": m.activation_bytes,
            "overhead_bytes": m.overhead_bytes,
            "non_torch_bytes": m.non_torch_bytes,
            "cuda_graph_bytes": m.cuda_graph_bytes,
            "cuda_context_bytes": m.cuda_context_bytes,
            "kv_cache_bytes": m.kv_cache_bytes,
            "kv_bytes_per_token": m.kv_bytes_per_token,
            "total_bytes": m.total_bytes,
            "capacity_bytes": m.capacity_bytes,
            "gpu_total_bytes": m.gpu.total_bytes,
            "kv_budget_bytes": m.kv_budget_bytes,
            "working_bytes": m.working_bytes,
            "graphs_in_budget": m.graphs_in_budget,
            "in_budget_bytes": m.in_budget_bytes,
            "outside_budget_bytes": m.outside_budget_bytes,
            "footprint_bytes": m.footprint_bytes,
        }
        for m in est.per_gpu
    ]


def _explanations(est: MemoryEstimate) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stages_seen: set[int] = set()
    for m in est.per_gpu:
        if m.pp_rank in stages_seen:
            continue
        stages_seen.add(m.pp_rank)
        for e in m.explanations:
            out.append(
                {
                    "gpu": m.gpu.index,
                    "pp_rank": m.pp_rank,
                    "name": e.name,
                    "formula": e.formula,
                    "inputs": dict(e.inputs),
                    "value": e.value,
                    "unit": e.unit,
                }
            )
    for e in est.explanations:
        out.append({"name": e.name, "formula": e.formula, "inputs": dict(e.inputs), "value": e.value, "unit": e.unit})
    return out


def plan_json(p: Plan, *, explain: bool = False) -> dict[str, Any]:
    """The stable ``--json`` contract (keys documented in docs/planning.md)."""
    req = p.request
    c = _shown(p)
    est = c.estimate if c else None
    data: dict[str, Any] = {
        "model": {
            "id": req.spec.id,
            "source": req.spec.source,
            "dtype": est.dtype if est else req.spec.torch_dtype,
            "quantization": (req.spec.quantization.method if req.spec.quantization else req.quantization),
        },
        "fits": p.fits,
        "placement": {
            "tensor_parallel_size": c.tp if c else None,
            "pipeline_parallel_size": c.pp if c else None,
            "data_parallel_size": c.dp if c else None,
            "gpus": [g.index for g in c.gpus] if c else [],
            "nodes": len({g.node for g in c.gpus}) if c and c.gpus else 0,
        },
        "max_model_len": p.max_model_len,
        "max_model_len_fit": c.max_model_len_fit if c else 0,
        "concurrency": req.concurrency,
        "objective": req.objective,
        "vllm_version": p.accounting.vllm_version,
        "engine": {
            "gpu_memory_utilization": c.gpu_memory_utilization if c else None,
            "kv_cache_dtype": c.kv_cache_dtype if c else req.kv_cache_dtype or "auto",
            "max_num_seqs": est.settings.max_num_seqs if est else None,
            "max_num_batched_tokens": est.settings.max_num_batched_tokens if est else None,
            "enforce_eager": req.enforce_eager,
            "block_size": est.settings.block_size if est else DEFAULT_BLOCK_SIZE,
        },
        "hf_overrides": p.hf_overrides,
        "per_gpu": per_gpu_json(est),
        "kv_cache_tokens": est.kv_cache_tokens if est else 0,
        "max_concurrency": round(est.kv_cache_tokens / p.max_model_len, 2) if est else 0.0,
        "why": list(p.why),
        "suggestions": list(p.suggestions),
        "notes": list(p.notes),
        "candidates": [
            {
                "tp": x.tp,
                "pp": x.pp,
                "dp": x.dp,
                "kv_cache_dtype": x.kv_cache_dtype,
                "fits": x.fits,
                "status": x.status,
                "reason": x.reason,
                "score": x.score,
                "max_model_len_fit": x.max_model_len_fit,
                "needed_bytes_per_gpu": x.needed_bytes_per_gpu,
                "shortfall_bytes_per_gpu": shortfall_bytes(x),
                "kv_cache_tokens": x.estimate.kv_cache_tokens if x.estimate else None,
            }
            for x in p.candidates
        ],
        "inventory": {
            "source": req.machine.source,
            "simulated": req.machine.simulated,
            "nodes": req.machine.nodes,
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "total_bytes": g.total_bytes,
                    "free_bytes": g.free_bytes,
                    "node": g.node,
                }
                for g in req.machine.gpus
            ],
        },
    }
    if explain and est is not None:
        data["explain"] = _explanations(est)
    from qwendeploy.cli.launch_text import launch_json

    data["launch"] = launch_json(p)
    return data


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)


# ----------------------------------------------------------------------------------------------------------
# rich
# ----------------------------------------------------------------------------------------------------------


def _bar(m: GpuMemory) -> str:
    """The GPU's memory to scale: inside the budget (up to ``|``), then what the process holds outside it."""
    total = m.gpu.total_bytes
    graphs_in = m.cuda_graph_bytes if m.graphs_in_budget else 0
    inside = [
        ("W", m.weights_bytes, "blue"),
        ("A", m.activation_bytes, "magenta"),
        ("N", m.non_torch_bytes, "yellow"),
        ("G", graphs_in, "cyan"),
        ("K", m.kv_cache_bytes, "green"),
    ]
    extra = max(0, m.working_bytes - m.activation_bytes)
    outside = [
        ("g", m.cuda_graph_bytes - graphs_in, "cyan"),
        ("c", m.cuda_context_bytes, "red"),
        ("s", extra, "magenta"),
    ]

    def cells(n: int) -> int:
        return max(0, round(n / total * BAR_WIDTH))

    out, used = "", 0
    for ch, n, color in inside:
        k = min(cells(n), BAR_WIDTH - used)
        if k:
            out += f"[{color}]{ch * k}[/]"
            used += k
    cap = cells(m.capacity_bytes)
    if cap > used:
        out += "·" * (cap - used)
        used = cap
    out += "|"
    for ch, n, color in outside:
        k = min(cells(n), BAR_WIDTH - used)
        if k:
            out += f"[{color}]{ch * k}[/]"
            used += k
    return f"[{out}{' ' * max(0, BAR_WIDTH - used)}]"


def _gpu_lines(m: GpuMemory, version: str, label: str) -> list[str]:
    """Per GPU: the bar, what vLLM counts inside its budget, what it holds outside, and what nvidia-smi will show."""
    util = m.capacity_bytes / m.gpu.total_bytes
    graphs_in = m.graphs_in_budget and m.cuda_graph_bytes > 0
    inside = f"W {_n(m.weights_bytes)} + A {_n(m.activation_bytes)} + N {_n(m.non_torch_bytes)}"
    if graphs_in:
        inside += f" + G {_n(m.cuda_graph_bytes)}"
    inside += f" + K {_n(m.kv_cache_bytes)}"
    out = []
    if m.cuda_graph_bytes and not m.graphs_in_budget:
        out.append(f"g {_n(m.cuda_graph_bytes)} graphs (vLLM {version})")
    out.append(f"c {_n(m.cuda_context_bytes)} context")
    out.append(_working_words(m, _n, short=True))
    return [
        f"{label} {_bar(m)}",
        f"  budget {util:.2f}×{_n(m.gpu.total_bytes)} = {_n(m.capacity_bytes)}: {inside}",
        f"  outside the budget: {', '.join(out)}",
        f"  nvidia-smi while serving ≈ {_g(m.footprint_bytes)} of {_g(m.gpu.total_bytes)}",
    ]


def _working_words(m: GpuMemory, fmt: Callable[[float], str], *, short: bool) -> str:
    """The working memory held while serving, as the bar draws it: only what exceeds the activation peak is on
    top of the budget (``s``); less than the peak is said as such, never as a negative term."""
    beyond = m.working_bytes - m.activation_bytes
    if beyond >= 0:
        if short:
            return f"s {fmt(beyond)} working beyond A"
        return f"working memory {fmt(m.working_bytes)} ({fmt(beyond)} beyond the activation)"
    return f"working memory {fmt(m.working_bytes)} (within the {fmt(m.activation_bytes)} activation" + (
        ": no s)" if short else ")"
    )


def _grouped_gpu_lines(est: MemoryEstimate, version: str) -> list[str]:
    """``_gpu_lines`` per GPU, GPUs with the same breakdown shown once (``GPU 0-3``)."""
    groups: list[tuple[list[int], GpuMemory]] = []
    for m in est.per_gpu:
        key = _gpu_lines(m, version, "")
        if groups and _gpu_lines(groups[-1][1], version, "") == key:
            groups[-1][0].append(m.gpu.index)
        else:
            groups.append(([m.gpu.index], m))
    out: list[str] = []
    for idx, m in groups:
        label = f"GPU {idx[0]}" if len(idx) == 1 else f"GPU {idx[0]}-{idx[-1]}"
        out += _gpu_lines(m, version, label)
    return out


def _n(n: float) -> str:
    return f"{n / GiB:.2f}"


def _inventory(console: Console, machine: Machine) -> None:
    from rich.table import Table

    t = Table(title=f"Inventory ({machine.source or 'detected'})", title_justify="left", show_edge=False)
    for col in ("GPU", "name", "node", "total (CUDA)", "free", "bandwidth"):
        t.add_column(col)
    for g in machine.gpus:
        bw = f"{g.memory_bandwidth_gbps:.0f} GB/s" if g.memory_bandwidth_gbps else "?"
        t.add_row(str(g.index), g.name, str(g.node), _g(g.total_bytes), _g(g.free_bytes), bw)
    console.print(t)
    link = "NVLink" if machine.interconnect == "nvlink" else "PCIe"
    console.print(f"Interconnect: {link}" + "".join(f"; {n}" for n in machine.notes))


def _candidates(console: Console, p: Plan) -> None:
    from rich.table import Table

    # Reasons go under the table, one line each: in a column they were cut into slivers at 80 columns.
    t = Table(title="Candidates (ranked)", title_justify="left", show_edge=False)
    for col in ("#", "placement", "status", "longest", "KV tokens", "needs/GPU", "tok/s"):
        t.add_column(col, overflow="fold")
    for i, c in enumerate(p.candidates, 1):
        status = {"fits": "[green]fits[/]", "shorter": "[yellow]shorter[/]", "no": "[red]no[/]"}[c.status]
        t.add_row(
            str(i),
            c.label,
            status,
            f"{c.max_model_len_fit:,}" if c.max_model_len_fit else "-",
            f"{c.estimate.kv_cache_tokens:,}" if c.estimate and c.status != "no" else "-",
            _g(c.needed_bytes_per_gpu) if c.needed_bytes_per_gpu else "-",
            f"{c.score:,.0f}" if c.score else "-",
        )
    console.print(t)
    misses = [(i, c) for i, c in enumerate(p.candidates, 1) if not c.fits]
    if misses:
        console.print("Why the others miss the target:", highlight=False)
        for i, c in misses:
            console.print(f"  {i}. {c.label}: {c.reason}", markup=False, highlight=False)


def _shown_value(value: Any, unit: str) -> str:
    if unit == "bytes":
        return f"{int(value):,} B ({human_size(value)})"
    return f"{value:,} {unit}"


def _input_value(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,g}"
    return str(v)


def _explain_blocks(console: Console, est: MemoryEstimate) -> None:
    """Each term as a block: ``term = formula``, its inputs, ``= value`` (readable at 80 columns)."""
    console.print("[bold]How each term is computed (--explain)[/]")
    for row in _explanations(est):
        where = f"GPU {row['gpu']}" if "gpu" in row else "replica"
        console.print()
        console.print(f"[bold]{row['name']}[/] ({where}) = {row['formula']}", highlight=False)
        inputs = ", ".join(f"{k}={_input_value(v)}" for k, v in row["inputs"].items())
        console.print(f"  inputs: {inputs}", highlight=False)
        console.print(f"  = {_shown_value(row['value'], row['unit'])}", highlight=False)


def one_line(p: Plan) -> str:
    """The breakdown on one plain line, to paste into an issue."""
    c = _shown(p)
    req = p.request
    head = f"qwendeploy plan: {req.spec.id} on {len(req.machine.gpus)}x {req.machine.gpus[0].name}"
    if c is None or c.estimate is None:
        return head + f" | nothing fits {p.max_model_len} tokens"
    est = c.estimate
    m = max(est.per_gpu, key=lambda x: x.footprint_bytes)
    graphs = f"graphs {_g(m.cuda_graph_bytes)}"
    inside = (
        f"weights {_g(m.weights_bytes)}, activation {_g(m.activation_bytes)}, non-torch {_g(m.non_torch_bytes)}, "
        + (f"{graphs}, " if m.graphs_in_budget else "")
        + f"KV {_g(m.kv_cache_bytes)}"
    )
    outside = ("" if m.graphs_in_budget else f"{graphs}, ") + f"CUDA context {_g(m.cuda_context_bytes)}"
    return (
        f"{head} | tp={c.tp} pp={c.pp} dp={c.dp} max_model_len={p.max_model_len} kv={c.kv_cache_dtype} "
        f"util={c.gpu_memory_utilization} vllm={p.accounting.vllm_version} | per GPU: budget "
        f"{_g(m.capacity_bytes)} holds {inside}; outside it {outside}, {_working_words(m, _g, short=False)}; "
        f"nvidia-smi ~{_g(m.footprint_bytes)} of {_g(m.gpu.total_bytes)} | "
        f"KV {est.kv_cache_tokens} tokens, {est.kv_cache_tokens / p.max_model_len:.2f}x at {p.max_model_len}"
    )


def render(console: Console, p: Plan, *, explain: bool = False) -> None:
    req = p.request
    spec = req.spec
    console.print(
        f"[bold]{spec.id}[/] — {spec.num_hidden_layers} layers, {spec.num_attention_heads} heads / "
        f"{spec.num_key_value_heads} KV heads, target {p.max_model_len:,} tokens"
        + (" (chosen by --context auto: see the note)" if any(n.startswith("--context auto") for n in p.notes) else "")
        + (f" × {req.concurrency} requests" if req.concurrency > 1 else "")
        + f", objective {req.objective}, vLLM {p.accounting.vllm_version} accounting"
    )
    _inventory(console, req.machine)
    console.print()
    c = _shown(p)
    if c is not None and c.estimate is not None:
        est = c.estimate
        title = "Chosen" if p.fits else "Best partial fit"
        console.print(f"[bold]{title}: {c.label}[/]")
        console.print(
            "  Memory per GPU in GiB; in the bar, up to | is the vLLM budget (gpu_memory_utilization × total): "
            "W weights, A activation peak, N non-torch, G CUDA graphs (if the release subtracts them), K KV cache, "
            "· unused. After |, outside it: g CUDA graphs (if captured after the KV cache), c CUDA context, s "
            "working memory while serving beyond A.",
            highlight=False,
        )
        for line in _grouped_gpu_lines(est, p.accounting.vllm_version):
            console.print(f"  {line}", highlight=False)
        console.print()
    _candidates(console, p)
    console.print()
    if p.fits and c is not None and c.estimate is not None:
        est = c.estimate
        console.print("[bold green]Verdict: fits.[/]")
        for line in p.why:
            console.print(f"  {line}")
        console.print(
            f'  vLLM should log "GPU KV cache size: {est.kv_cache_tokens:,} tokens" and "Maximum concurrency for '
            f'{p.max_model_len:,} tokens per request: {est.kv_cache_tokens / p.max_model_len:.2f}x".'
        )
    else:
        console.print("[bold red]Verdict: nothing fits.[/]")
        for line in p.why:
            console.print(f"  {line}")
        for s in p.suggestions:
            console.print(f"  • {s}")
    for note in p.notes:
        console.print(f"  [dim]Note:[/] {note}")
    if explain and c is not None and c.estimate is not None:
        console.print()
        _explain_blocks(console, c.estimate)
    console.print()
    _launch(console, p)
    console.print(short_line(p), markup=False, highlight=False, soft_wrap=True)


def _launch(console: Console, p: Plan) -> None:
    """The first server's command, wrapped with \\ continuation lines, and how clients reach the replicas."""
    from qwendeploy.cli.launch_text import launch_specs, reach_words, wrapped_command

    specs = launch_specs(p)
    if not specs:
        return
    s = specs[0]
    what = "The vLLM command" if len(specs) == 1 else f"Server 1 of {len(specs)} as a vLLM command (the others differ"
    what += "" if len(specs) == 1 else " in GPUs and port)"
    console.print(f"{what}:", highlight=False)
    console.print(wrapped_command(s.argv, s.env_set), markup=False, highlight=False, soft_wrap=True)
    reach = reach_words(specs, p.chosen.dp if p.chosen else 1)
    if reach:
        console.print(f"Clients: {reach}", markup=False, highlight=False)


def short_line(p: Plan) -> str:
    """The plan in one short line (the profile header keeps the long ``one_line``)."""
    c = _shown(p)
    req = p.request
    head = f"qwendeploy plan: {req.spec.id} on {len(req.machine.gpus)}x {req.machine.gpus[0].name}"
    if c is None or c.estimate is None or not p.fits:
        return head + f": nothing fits {p.max_model_len:,} tokens"
    est = c.estimate
    m = max(est.per_gpu, key=lambda x: x.footprint_bytes)
    return (
        f"{head}: {c.label}, {p.max_model_len:,} tokens, KV {est.kv_cache_tokens:,} tokens "
        f"({est.kv_cache_tokens / p.max_model_len:.2f}x), ~{_g(m.footprint_bytes)}/GPU"
    )
