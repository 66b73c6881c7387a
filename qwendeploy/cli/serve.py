"""``qwendeploy serve``: placeholder until its issue lands (owned by the serve work)."""

from __future__ import annotations

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import QwendeployError


def serve() -> None:
    """Not available yet."""
    with user_errors():
        raise QwendeployError("qwendeploy serve is being built.")
