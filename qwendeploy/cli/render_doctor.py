"""Rich rendering of a doctor report: checks table, GPUs, topology matrix, NCCL bandwidth, diagnoses."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qwendeploy.core.checks import Check
from qwendeploy.core.checks.interconnect import topology_matrix
from qwendeploy.core.machine_facts import MachineFacts
from qwendeploy.core.units import human_size

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def render(
    console: Console,
    facts: MachineFacts | None,
    checks: list[Check],
    diagnoses: list[dict[str, Any]],
    nccl: dict[str, Any] | None = None,
    startup: dict[str, Any] | None = None,
) -> None:
    nv = facts.nvml if facts is not None else None
    if facts is not None and nv is not None and nv.gpus:
        _gpus(console, facts)
        if len(nv.gpus) > 1:
            _topology(console, facts)
    if checks:
        _checks(console, checks)
    if nccl is not None and nccl.get("results"):
        _nccl(console, nccl)
    if startup is not None:
        _startup(console, startup)
    if diagnoses:
        _diagnoses(console, diagnoses)
    _summary(console, checks, diagnoses)


def _startup(console: Console, startup: dict[str, Any]) -> None:
    """Predicted (the profile's estimate) beside what vLLM logged at start-up; over 2% is flagged."""
    rows = startup.get("comparison") or []
    if not rows:
        console.print(
            "Start-up vs plan: the log has none of vLLM's start-up figures the profile's estimate can be compared "
            "with (Model loading took, Available KV cache memory, GPU KV cache size, Maximum concurrency).\n"
        )
        return
    release = startup.get("vllm_version_planned")
    t = Table(title="Start-up vs plan" + (f" (planned for vLLM {release})" if release else ""), title_justify="left")
    for col in ("figure", "predicted", "vLLM reported", "difference", "log line"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for r in rows:
        fmt = "{:,.0f}" if r["unit"] == "tokens" else "{:,.2f}"
        diff = f"{r['diff_pct']:+.1f}%"
        t.add_row(
            r["name"],
            f"{fmt.format(r['predicted'])} {r['unit']}",
            f"{fmt.format(r['reported'])} {r['unit']}",
            f"[bold red]{diff} > 2%[/]" if r["flagged"] else diff,
            str(r["line"] or ""),
        )
    console.print(t)
    if startup.get("flagged"):
        console.print(
            "[bold]The estimate and vLLM part by more than 2%[/]: re-plan with the vLLM release that ran "
            "(`qwendeploy plan … --vllm-version X`), or trust vLLM's figures for this machine.\n"
        )


def _gpus(console: Console, facts: MachineFacts) -> None:
    nv = facts.nvml
    assert nv is not None
    t = Table(
        title=f"GPUs (driver {nv.driver_version or '?'}, CUDA {nv.cuda_driver_version or '?'})", title_justify="left"
    )
    for col in ("#", "name", "cc", "NVML total", "CUDA total", "used", "free", "PCIe", "processes"):
        t.add_column(col, justify="right" if col in ("#", "NVML total", "CUDA total", "used", "free") else "left")
    for g in nv.gpus:
        cuda_total = g.memory_total - g.memory_reserved if g.memory_total and g.memory_reserved is not None else None
        procs = ", ".join(
            f"{p.pid}{' (orphan)' if p.orphan else ''}{'' if p.visible else ' (other ns)'}" for p in g.processes
        )
        t.add_row(
            str(g.index),
            g.name,
            ".".join(map(str, g.compute_capability)) if g.compute_capability else "?",
            _size(g.memory_total),
            _size(cuda_total),
            _size(g.memory_used),
            _size(g.memory_free),
            f"gen{g.pcie_gen_current or '?'} x{g.pcie_width_current or '?'}" if g.pcie_width_current else "?",
            procs or "-",
        )
    console.print(t)


def _topology(console: Console, facts: MachineFacts) -> None:
    nv = facts.nvml
    assert nv is not None
    t = Table(title="Topology (like nvidia-smi topo -m)", title_justify="left")
    t.add_column("")
    for g in nv.gpus:
        t.add_column(f"GPU{g.index}", justify="center")
    matrix = topology_matrix(nv)
    for g, row in zip(nv.gpus, matrix, strict=True):
        cells = []
        for other, cell in zip(nv.gpus, row, strict=True):
            p = nv.pair(g.index, other.index) if g.index != other.index else None
            if p is not None and p.p2p is False:
                cell = f"{cell} [no P2P]"
            cells.append(cell)
        t.add_row(f"GPU{g.index}", *cells)
    console.print(t)
    console.print(
        "[dim]X self · NV# NVLink (# links) · PIX one PCIe switch · PXB several switches · PHB host bridge · "
        "NODE across host bridges in a NUMA node · SYS across CPU sockets[/]"
    )


def _checks(console: Console, checks: list[Check]) -> None:
    # A borderless grid: one row a check, the fix in a row under it, long text wrapping inside its own column
    # (a 4-column table with borders cut every detail into slivers at 80 columns).
    console.print("[bold]Checks[/]")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for c in checks:
        grid.add_row(Text(c.status, style=_STYLE[c.status]), escape(c.name), Text(c.detail))
        if c.fix and c.status != "ok":
            grid.add_row("", "", Text.assemble(("fix: ", "dim"), c.fix))
    console.print(grid)


def _nccl(console: Console, nccl: dict[str, Any]) -> None:
    t = Table(title=f"NCCL all-reduce over {nccl.get('world_size')} GPU(s)", title_justify="left")
    for col in ("size", "time (ms)", "algbw (GB/s)", "busbw (GB/s)"):
        t.add_column(col, justify="right")
    for r in nccl["results"]:
        t.add_row(human_size(r["bytes"]), f"{r['time_ms']:.3f}", f"{r['algbw_gbps']:.2f}", f"{r['busbw_gbps']:.2f}")
    console.print(t)


def _diagnoses(console: Console, diagnoses: list[dict[str, Any]]) -> None:
    for i, d in enumerate(diagnoses, 1):
        conf = d.get("confidence")
        conf_text = f" (confidence {conf:.2f})" if isinstance(conf, (int, float)) else ""
        console.print(f"\n[bold]{i}. {d.get('category')}[/]{conf_text}: {escape(str(d.get('summary', '')))}")
        for ev in d.get("evidence", [])[:8]:
            console.print(
                f"   [dim]line {ev.get('line')}:[/] {escape(str(ev.get('text', '')).rstrip())}", highlight=False
            )
        if d.get("fix"):
            console.print(f"   [bold green]Fix:[/] {escape(str(d['fix']))}")


def _summary(console: Console, checks: list[Check], diagnoses: list[dict[str, Any]]) -> None:
    fails = [c.name for c in checks if c.status == "fail"]
    warns = [c.name for c in checks if c.status == "warn"]
    parts = []
    if fails:
        parts.append(f"[bold red]{len(fails)} failed[/] ({', '.join(fails)})")
    if warns:
        parts.append(f"[yellow]{len(warns)} warning(s)[/] ({', '.join(warns)})")
    found = [d for d in diagnoses if d.get("recognised")]
    if found:
        from qwendeploy.core.diagnosis.engine import shown_name  # only with a log: the engine loads its rules

        top = found[0]
        name = shown_name(str(top.get("category")), str(top.get("rule_id") or ""), True)
        parts.append(f"[bold]{len(found)} diagnosis(es)[/], most likely: {name}")
    console.print("\n" + ("; ".join(parts) if parts else "[green]All checks passed.[/]"))


def _size(n: int | None) -> str:
    return human_size(n) if n is not None else "?"
