"""The CLI edge: turn a QwendeployError into a one-paragraph message and an exit code, no traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from qwendeploy.errors import EXIT_WRITE_FAILED, QwendeployError


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command body; a QwendeployError becomes ``Error: …`` on stderr and its exit code.

    ``QWENDEPLOY_DEBUG=1`` re-raises for the full traceback.
    """
    try:
        yield
    except QwendeployError as e:
        if os.environ.get("QWENDEPLOY_DEBUG"):
            raise
        from rich.console import Console
        from rich.markup import escape

        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"[bold red]Error:[/] {escape(e.message)}", markup=True)
        if e.hint:
            err.print(f"[dim]Hint:[/] {escape(e.hint)}")  # hints hold text like pip install 'x[extra]'
        raise typer.Exit(code=e.exit_code) from None
    except OSError as e:  # an I/O failure no layer turned into a message (e.g. stdout on a full disk)
        if os.environ.get("QWENDEPLOY_DEBUG"):
            raise
        where = f" ({e.filename})" if e.filename else ""
        with contextlib.suppress(OSError):
            print(f"Error: input/output failed{where}: {e.strerror or e}.", file=sys.stderr)
        raise typer.Exit(code=EXIT_WRITE_FAILED) from None
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        raise typer.Exit(code=130) from None
