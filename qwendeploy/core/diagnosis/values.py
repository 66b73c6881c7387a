"""What a diagnosis is: the public values ``diagnose`` takes and returns (Evidence, Diagnosis, DiagnosisContext)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwendeploy.core.diagnosis.evidence import MachineProcess
from qwendeploy.core.profile import Profile


@dataclass(frozen=True)
class Evidence:
    """A quoted log line. ``line`` is 1-based in the input; 0 means it came from the environment, not the log."""

    line: int
    text: str


def shown_name(category: str, rule_id: str, recognised: bool) -> str:
    """What to call a diagnosis: its category, or, for a named cause filed under ``unknown`` (a killed engine core,
    an OOM while serving), its rule."""
    return rule_id if category == "unknown" and recognised and rule_id else category


@dataclass(frozen=True)
class Diagnosis:
    """One likely cause of the failure, with the lines that show it and the change to make."""

    category: str
    summary: str
    evidence: tuple[Evidence, ...]
    fix: str
    confidence: float
    """0..1; a noisy-OR of the weights of what matched (see rules.yaml)."""
    rule_id: str
    phase: str | None
    """Start-up phase the failure happened in (or the rule's phase when the log does not say)."""
    checks: tuple[str, ...]
    """Machine checks of ``qwendeploy doctor`` that would confirm it."""
    recognised: bool = True
    """A rule named the cause (False only for the catch-all that quotes an unrecognised error). Rules of category
    ``unknown`` with a named cause (a killed engine core, an OOM while serving) are recognised."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "summary": self.summary,
            "evidence": [{"line": e.line, "text": e.text} for e in self.evidence],
            "fix": self.fix,
            "confidence": self.confidence,
            "rule_id": self.rule_id,
            "phase": self.phase,
            "recognised": self.recognised,
        }


@dataclass(frozen=True)
class DiagnosisContext:
    """What is known besides the log."""

    profile: Profile | None = None
    """When given, fixes also name the ``qwendeploy plan`` command that produces a profile that fits."""
    tensor_parallel_size: int | None = None
    env: Mapping[str, str] | None = None
    """Environment the server ran with (for nccl_env_misconfig)."""
    driver_version: str | None = None
    """The host's NVIDIA driver ("580.65.06") from doctor's NVML check: tells a driver that is too old from a
    container's CUDA compat library loaded in front of a new one (error 803)."""
    gpu_processes: Sequence[MachineProcess] = ()
    """GPU processes doctor found on this machine: whose memory the processes an OOM names are."""
    log_age_s: float | None = None
    """Seconds since the log was last written (doctor: now minus the file's mtime), for how long it has been silent."""
    nccl_test: tuple[str, str, tuple[str, ...]] | None = None
    """Doctor's NCCL test hung: (its message, the machine findings that did not pass, its last output lines)."""
