"""``qwendeploy models``: the built-in catalog — family, size, context, quantized variants, which cards hold it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qwendeploy.cli.errors import user_errors


def _b(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n else "?"


def _ctx(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else f"{n:,}"


def _cards(fits_on: tuple[str, ...], common: tuple[str, ...]) -> str:
    """``L4+`` when a card and every larger one listed hold it; else the cards; ``-`` when none does."""
    if not fits_on:
        return "-"
    first = common.index(fits_on[0])
    if fits_on == common[first:] and len(fits_on) > 1:
        return f"{fits_on[0]}+"
    return ", ".join(fits_on)


def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print every catalog entry as JSON.")] = False,
    all_entries: Annotated[
        bool, typer.Option("--all", help="List quantized checkpoints as rows too (JSON always has them).")
    ] = False,
) -> None:
    """List the models qwendeploy knows without the Hub, and which single card holds each at its native context."""
    with user_errors():
        from qwendeploy.core.listing import COMMON_CARDS, model_rows

        rows = model_rows()
        if json_out:
            doc = {"common_cards": list(COMMON_CARDS), "models": [r.to_dict() for r in rows]}
            typer.echo(json.dumps(doc, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(show_edge=False, title_justify="left", title="Models in the catalog")
        t.add_column("model", no_wrap=True)
        for col in ("family", "params", "context", "quantized", "fits 1 card"):
            t.add_column(col, overflow="fold")
        for r in rows:
            if r.base_model and not all_entries:
                continue
            size = _b(r.params) + (f" / {_b(r.active_params)} active" if r.active_params < r.params else "")
            ctx = _ctx(r.native_context) + (
                f" → {_ctx(r.longest_context)}" if r.longest_context > r.native_context else ""
            )
            quant = r.quantization or ", ".join(v[len(r.id) + 1 :] for v in r.variants) or "-"
            t.add_row(r.id.removeprefix("Qwen/"), r.family, size, ctx, quant, _cards(r.fits_on, COMMON_CARDS))
        console = Console(highlight=False)
        console.print(t)
        console.print(
            "context: native → longest with the published YaRN recipe. fits 1 card: which one card of "
            f"{', '.join(COMMON_CARDS)} holds it at its native context with one request (L4+: that card and the "
            "larger ones; qwendeploy plan MODEL --gpus 1xCARD says more)."
            + ("" if all_entries else " --all lists the quantized checkpoints as rows."),
            markup=False,
        )
