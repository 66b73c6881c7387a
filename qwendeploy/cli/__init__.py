"""The ``qwendeploy`` command line: parse, call the core or an adapter, render. Nothing else lives here."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from qwendeploy import __version__

app = typer.Typer(
    name="qwendeploy",
    help="Plan, serve and diagnose Qwen models on NVIDIA GPUs with vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qwendeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Plan, serve and diagnose Qwen models on NVIDIA GPUs with vLLM."""


def _switches_without_a_type() -> None:
    """Show switches as switches in ``--help``: Typer 0.2x labels every option with its Python type, so a flag
    read ``--json <bool>`` as if it took a value (``--json true`` is an error). A flag takes none: no label."""
    from typer.core import TyperOption

    typed = TyperOption.display_type_rich
    if getattr(typed, "_qwendeploy_switches", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else typed(self, ctx)

    display_type_rich._qwendeploy_switches = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _register() -> None:
    # Each command lives in its own module; importing them must stay cheap (no vllm, torch, pynvml, hub).
    from qwendeploy.cli import bench, cluster, doctor, export, gpus, models, plan, schema, serve

    app.command(name="plan")(plan.plan)
    app.command(name="serve")(serve.serve)
    app.command(name="doctor")(doctor.doctor)
    app.command(name="schema")(schema.schema)
    app.command(name="models")(models.models)
    app.command(name="gpus")(gpus.gpus)
    app.command(name="bench")(bench.bench)
    app.add_typer(cluster.app, name="cluster")
    app.add_typer(export.app, name="export")


_switches_without_a_type()
_register()


def main() -> None:
    app()
