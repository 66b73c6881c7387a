"""Judging facts the adapters gather: one check's verdict (:class:`Check`), shared by doctor's machine checks,
serve's preflight and the Ray cluster checks, and one module per idea (``driver``, ``gpus``, ``interconnect``,
``shm``, ``host``, ``processes``, ``profile_fit``, ``multi_node``; ``machine.run_checks`` runs them all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]
"""ok: fine; warn: works but costs something; fail: vLLM would not start or would hang; skip: could not check."""


@dataclass(frozen=True)
class Check:
    """A named verdict with its evidence (``detail``) and, unless ok, the change to make (``fix``)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def size_text(n: int | None) -> str:
    """``human_size`` of a figure a probe may not have: ``?`` when unknown."""
    from qwendeploy.core.units import human_size

    return human_size(n) if n is not None else "?"
