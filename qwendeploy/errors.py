"""Errors a user can act on. Each carries a one-paragraph message, an optional hint and an exit code.

The CLI turns them into a message without a traceback (``QWENDEPLOY_DEBUG=1`` re-raises).
Exit codes follow the commands' contracts: 2 is always bad input or a failed preflight.
"""

from __future__ import annotations


class QwendeployError(Exception):
    """Base class: something the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class BadInput(QwendeployError):
    """A flag, argument or file the user gave is wrong (exit 2)."""


class UnknownModel(BadInput):
    """The model reference resolves to nothing we can read."""


class UnknownGpu(BadInput):
    """A simulated inventory names a GPU the catalog does not know."""


class ProfileInvalid(BadInput):
    """A profile file does not validate against the schema."""


class ProfileExists(BadInput):
    """Refusing to overwrite an existing profile without --force."""


class ProbeError(QwendeployError):
    """NVML (or another hardware query) is unavailable or failed."""


class PlanInfeasible(QwendeployError):
    """No placement fits (exit 1)."""

    exit_code = 1


class PreflightFailed(QwendeployError):
    """serve refused to start: a preflight check failed (exit 2)."""


class LaunchFailed(QwendeployError):
    """The server could not be started or kept running (exit 1)."""

    exit_code = 1


EXIT_WRITE_FAILED = 3
"""Exit code of every command when writing a file it was asked to write failed (disk full, read-only file
system, permission denied, I/O error): distinct from 1 (plan: nothing fits; serve: gave up) and 2 (bad input)."""


class WriteFailed(QwendeployError):
    """The operating system refused a write (an OSError while writing an output file): exit 3."""

    exit_code = EXIT_WRITE_FAILED
