"""``qwendeploy gpus``: the GPU catalog the planner simulates, and what NVML sees on this machine."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import ProbeError


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def gpus(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the catalog and this machine's GPUs as JSON.")
    ] = False,
) -> None:
    """List the cards usable as --gpus NxCARD, and the GPUs NVML sees here (none without a driver: not an error)."""
    with user_errors():
        from qwendeploy.cli import wiring
        from qwendeploy.core.listing import gpu_rows, machine_json

        rows = gpu_rows()
        local: dict[str, Any]
        try:
            local = machine_json(wiring.probe_machine("auto"))
        except ProbeError as e:
            local = {"gpus": [], "unavailable": e.message}
        if json_out:
            typer.echo(json.dumps({"catalog": [r.to_dict() for r in rows], "local": local}, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        console = Console(highlight=False)
        t = Table(show_edge=False, title_justify="left", title="GPU catalog (use as --gpus NxNAME)")
        for col in ("name", "--gpus", "GiB (CUDA)", "GB/s", "CC", "FP8", "link"):
            t.add_column(col, overflow="fold")
        for r in rows:
            g = r.card
            link = "NVLink" if g.interconnect == "nvlink" else "PCIe" + ("" if g.p2p else ", no P2P")
            cc = f"{g.compute_capability[0]}.{g.compute_capability[1]}"
            t.add_row(
                g.name,
                g.aliases[0] if g.aliases else g.id,
                _gib(g.total_bytes),
                f"{g.bandwidth_gbps:,.0f}",
                cc,
                "yes" if g.fp8 else "-",
                link,
            )
        console.print(t)
        console.print()
        if not local["gpus"]:
            console.print(
                f"This machine: no GPU seen by NVML ({local.get('unavailable', 'none found')}).", markup=False
            )
            return
        t = Table(
            show_edge=False,
            title_justify="left",
            title=f"This machine (NVML, driver {local.get('driver_version') or '?'})",
        )
        for col in ("GPU", "name", "catalog", "GiB total", "GiB free"):
            t.add_column(col)
        for g in local["gpus"]:
            t.add_row(
                str(g["index"]),
                g["name"],
                g["catalog_id"] or "not in the catalog",
                _gib(g["total_bytes"]),
                _gib(g["free_bytes"]),
            )
        console.print(t)
