"""What serve does after a failed attempt of a server: restart it (after what backoff), or give up — and why.

A failure before the server was ever ready that a restart would only repeat (argparse's exit 2, a diagnosis of a
start-up failure such as OOM while loading or TP not dividing the heads) gives up at once; otherwise the
profile's restart policy decides: ``never`` gives up, and ``max_restarts`` bounds the restarts, each after
``min(backoff_initial_s × 2^n, backoff_max_s)``. The supervisor (adapters/supervisor.py) acts on the verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose, shown_name
from qwendeploy.core.diagnosis.rules import load_catalog
from qwendeploy.core.profile import Profile

DETERMINISTIC_CATEGORIES = load_catalog().deterministic
"""Diagnosis categories that, before the server was ever ready, will happen again on a restart (the rule
catalog's ``restart.deterministic``, data/rules.yaml)."""

TRANSIENT_CATEGORIES = load_catalog().transient
"""Top diagnoses that make an out-of-memory start-up worth a retry (``restart.transient``)."""

_FALLBACK_DETERMINISTIC = re.compile(
    r"unrecognized arguments|CUDA out of memory|OutOfMemoryError|must be divisible by tensor parallel size"
    r"|error: argument |invalid choice|No available memory for the cache blocks"
    r"|larger than the maximum number of tokens that can be stored in KV cache"
)


@dataclass(frozen=True)
class Finding:
    """A diagnosis as the supervisor reports it (the engine's Diagnosis, evidence reduced to its first lines)."""

    category: str
    summary: str
    fix: str = ""
    confidence: float | None = None
    phase: str | None = None
    evidence: tuple[str, ...] = ()
    rule_id: str = ""
    recognised: bool = True
    """False only for the catch-all that quotes an error no rule knows."""

    @property
    def name(self) -> str:
        return shown_name(self.category, self.rule_id, self.recognised)


def diagnose_lines(lines: Sequence[str], profile: Profile | None) -> list[Finding]:
    """Run the doctor's log rules on ``lines`` (empty if the rule engine itself fails: it must never take
    supervision down with it)."""
    try:
        found = diagnose(list(lines), DiagnosisContext(profile=profile))
    except Exception:
        return []
    return [
        Finding(
            category=d.category,
            summary=d.summary,
            fix=d.fix,
            confidence=d.confidence,
            phase=d.phase,
            evidence=tuple(e.text for e in d.evidence[:3]),
            rule_id=d.rule_id,
            recognised=d.recognised,
        )
        for d in found
    ]


@dataclass(frozen=True)
class Policy:
    ready_timeout_s: float = 900.0
    health_interval_s: float = 5.0
    health_failures: int = 3
    grace_s: float = 30.0
    restart: Literal["on-failure", "never", "always"] = "on-failure"
    max_restarts: int = 5
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    reset_after_s: float = 600.0
    """Ready this long → the restart count and backoff start again from zero (restart.reset_after_s)."""
    ready_poll_s: float = 0.05
    """/health probe period while starting (connection refused costs microseconds on loopback)."""
    tick_s: float = 0.05
    """Loop period: bounds how late an exit or a ready server is noticed."""
    track_every_s: float = 1.0
    """How often descendants are recorded (workers that may outlive the server)."""
    probe_timeout_s: float = 1.0

    @classmethod
    def from_profile(cls, profile: Profile) -> Policy:
        s, r = profile.server, profile.restart
        return cls(
            ready_timeout_s=s.ready_timeout_s,
            health_interval_s=s.health_interval_s,
            health_failures=s.health_failures,
            grace_s=s.shutdown_grace_s,
            restart=r.policy,
            max_restarts=r.max_restarts,
            backoff_initial_s=r.backoff_initial_s,
            backoff_max_s=r.backoff_max_s,
            reset_after_s=r.reset_after_s,
        )

    def backoff(self, restarts_done: int) -> float:
        return float(min(self.backoff_initial_s * (2**restarts_done), self.backoff_max_s))


def is_deterministic(code: int | None, tail: Sequence[str], findings: Sequence[Finding]) -> bool:
    """A failure before ready that a restart would only repeat: argparse's exit 2, a known deterministic
    category, the top diagnosis placing a confident failure in a start-up phase, or a fallback pattern.

    Not when the top diagnosis says the memory is held by another (or an orphaned) process: that clears
    once those processes end. (The caller also never calls a failure deterministic once the replica has been
    ready: the same command has started before.)"""
    if code == 2:
        return True
    if findings and findings[0].category in TRANSIENT_CATEGORIES:
        return False
    if any(f.category in DETERMINISTIC_CATEGORIES for f in findings):
        return True
    if findings:
        top = findings[0]
        conf = top.confidence or 0.0  # None: the diagnosis gave none
        if top.phase and top.phase not in ("serving", "ready") and conf >= 0.5 and top.category != "unknown":
            return True
    return any(_FALLBACK_DETERMINISTIC.search(line) for line in tail)


@dataclass(frozen=True)
class Verdict:
    """Restart after ``delay`` seconds, or give up; ``message`` says which and why."""

    give_up: bool
    message: str
    delay: float = 0.0
    deterministic: bool = False
    """Given up because the failure will repeat (not for want of restarts)."""


def after_failure(
    policy: Policy, *, restarts: int, ever_ready: bool, code: int | None, tail: Sequence[str], found: Sequence[Finding]
) -> Verdict:
    """The verdict on a failed attempt: ``restarts`` made since the server was last stable, whether it was ever
    ready (a command that has started before is no deterministic failure), its exit code (None: still running
    when it failed, e.g. a readiness timeout), its last log lines and their diagnosis."""
    if not ever_ready and is_deterministic(code, tail, found):
        return Verdict(
            True,
            "start-up failure that will repeat; not restarting. Fix the cause and run serve again.",
            deterministic=True,
        )
    if policy.restart == "never":
        return Verdict(True, "restart policy is never")
    if restarts >= policy.max_restarts:
        return Verdict(True, f"gave up after {restarts} restart(s) (restart.max_restarts)")
    delay = policy.backoff(restarts)
    return Verdict(False, f"restart {restarts + 1}/{policy.max_restarts} in {delay:g}s", delay=delay)
