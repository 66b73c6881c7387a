"""``qwendeploy doctor``: placeholder until its issue lands (owned by the doctor work)."""

from __future__ import annotations

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import QwendeployError


def doctor() -> None:
    """Not available yet."""
    with user_errors():
        raise QwendeployError("qwendeploy doctor is being built.")
