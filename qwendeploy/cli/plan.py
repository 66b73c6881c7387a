"""``qwendeploy plan``: placeholder until its issue lands (owned by the plan work)."""

from __future__ import annotations

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import QwendeployError


def plan() -> None:
    """Not available yet."""
    with user_errors():
        raise QwendeployError("qwendeploy plan is being built.")
