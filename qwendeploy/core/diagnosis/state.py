"""What one pass over a log remembers: the signature hits (first and latest) and the per-line facts, bounded on a
log of any length. ``scan`` fills it, ``line_facts`` adds a line's facts, ``facts`` reads it whole."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from qwendeploy.core.diagnosis import evidence as evi
from qwendeploy.core.diagnosis.values import Evidence

_HITS_KEPT = 16
"""Hits remembered per signature (the first one and the latest ones)."""


FACTS_KEPT = 256
"""Launch lines, CUDA_VISIBLE_DEVICES values, TP values and unplaced hits remembered at most: memory stays bounded
on a log of any length (the first ones carry the launch; later repeats add nothing)."""


@dataclass
class Hit:
    line: int
    text: str
    groups: dict[str, str]
    phase: str | None


@dataclass
class SigHits:
    first: Hit | None = None
    latest: deque[Hit] = field(default_factory=lambda: deque(maxlen=_HITS_KEPT))

    def add(self, hit: Hit) -> None:
        if self.first is None:
            self.first = hit
        self.latest.append(hit)

    def all(self) -> list[Hit]:
        out = list(self.latest)
        if self.first is not None and (not out or out[0].line != self.first.line):
            out.insert(0, self.first)
        return out


@dataclass
class ScanState:
    hits: dict[tuple[str, int], SigHits] = field(default_factory=dict)
    unresolved: list[Hit] = field(default_factory=list)
    tail: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=8))
    errors: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=3))
    error_count: int = 0
    visible: list[tuple[int, str, int, bool]] = field(default_factory=list)  # line, value, count, on launch line
    tp_values: list[tuple[int, str, int]] = field(default_factory=list)
    launch_lines: list[tuple[int, str]] = field(default_factory=list)
    multi: list[Evidence] = field(default_factory=list)
    acs: list[Evidence] = field(default_factory=list)
    several_procs: list[Evidence] = field(default_factory=list)
    nccl: bool = False
    phase: str | None = None
    stopping: bool = False  # a stop was requested (SIGTERM/SIGINT): errors of the teardown are not the failure
    run: int = 0
    """Runs begun so far (a reset marker starts a new one): a pid of an earlier run is an orphan of it."""
    ts_last: float | None = None
    ts_last_text: str = ""
    phase_ts: float | None = None
    """The log's own time when the current phase was reached (or the first time seen after it)."""
    phase_ts_text: str = ""
    phase_ts_pending: bool = False
    """The line that reached the phase had no time: the next time written anywhere is taken."""
    container: list[Evidence] = field(default_factory=list)
    driver: tuple[int, str, str] | None = None
    """Line, major version and text of the first line that names the host driver."""
    procs: evi.Processes = field(default_factory=evi.Processes)
    vllm_seen: bool = False
    """A line names vLLM: the log is a vLLM start-up, not a bare NCCL or driver excerpt."""
