"""Where the CLI gets its hardware adapters — and the one seam tests replace.

Commands never import pynvml themselves; they call :func:`probe_report` / :func:`probe_machine` here.

Test seam (documented, not an environment variable): tests assign

* ``wiring.BACKEND_FACTORY`` — a zero-argument callable returning an NVML backend: the ``pynvml`` module by
  default, a ``tests/fakes/fake_nvml.FakeNvml`` in tests;
* ``wiring.PROCESS_LOOKUP`` — PID → ``ProcessInfo`` (psutil by default; a fake machine carries its own table),

usually with ``monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)``. Product code never sets them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwendeploy.adapters.nvml import NvmlReport, ProcessInfo
    from qwendeploy.core.hardware import Machine

BACKEND_FACTORY: Callable[[], Any] | None = None
"""None: the real ``pynvml`` module (imported lazily inside the NVML adapter)."""

PROCESS_LOOKUP: Callable[[int], ProcessInfo | None] | None = None
"""None: psutil in this PID namespace."""


def nvml_backend() -> Any | None:
    """The NVML backend to use (None lets the adapter import pynvml)."""
    return BACKEND_FACTORY() if BACKEND_FACTORY is not None else None


def probe_report() -> NvmlReport:
    """Everything NVML says about this machine. Raises ProbeError when there is no NVML / driver."""
    from qwendeploy.adapters import nvml

    return nvml.probe(nvml_backend(), processes=PROCESS_LOOKUP)


def probe_machine(selection: str = "auto") -> Machine:
    """The planner's Machine for ``--gpus auto`` or ``--gpus 0,2,3``.

    Raises:
        ProbeError: no NVML / driver (the hint suggests a simulated inventory).
        BadInput: ``selection`` names a GPU that is not here.
    """
    return probe_report().to_machine(selection)
