"""The ``qwendeploy`` command line: parse, call the core or an adapter, render. Nothing else lives here."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from qwendeploy import __version__

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext  # the class TyperOption's methods take


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qwendeploy {__version__}")
        raise typer.Exit()


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

    def display_type_rich(self: TyperOption, ctx: ClickContext) -> str | None:
        return None if self.is_flag else typed(self, ctx)

    display_type_rich._qwendeploy_switches = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


COMMANDS: dict[str, str] = {
    "plan": "plan",
    "serve": "serve",
    "doctor": "doctor",
    "schema": "schema",
    "models": "models",
    "gpus": "gpus",
    "bench": "bench",
    "cluster": "app",
    "export": "app",
}
"""Command name → the attribute of ``qwendeploy.cli.<name>`` that implements it: a function, or a Typer of its own
(``app``) for a command with subcommands. The order is ``--help``'s."""


def build_app(only: str | None = None) -> typer.Typer:
    """The command line with every command, or with ``only`` that one: a command module is imported only when the
    app that runs holds it, so ``qwendeploy plan`` pays for ``plan``'s imports and Typer builds only its options."""
    cli = typer.Typer(
        name="qwendeploy",
        help="Plan, serve and diagnose Qwen models on NVIDIA GPUs with vLLM.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    cli.callback()(_root)
    for name, attribute in COMMANDS.items():
        if only is not None and name != only:
            continue
        # Each command lives in its own module; importing one must stay cheap (no vllm, torch, pynvml, hub).
        implementation = getattr(importlib.import_module(f"qwendeploy.cli.{name}"), attribute)
        if isinstance(implementation, typer.Typer):
            cli.add_typer(implementation, name=name)
        else:
            cli.command(name=name)(implementation)
    return cli


_switches_without_a_type()


def __getattr__(name: str) -> typer.Typer:
    """``qwendeploy.cli.app``, the whole command line (tests, docs generation), built on first use."""
    if name == "app":
        whole = build_app()
        globals()["app"] = whole
        return whole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The ``qwendeploy`` entry point: a command named first gets an app holding only it; anything else (``--help``,
    ``--version``, an unknown name) gets the whole command line, whose help and errors list every command."""
    from qwendeploy.cli.wiring import install_catalog_cache

    install_catalog_cache(os.environ)
    args = sys.argv[1:]
    build_app(args[0] if args and args[0] in COMMANDS else None)()
