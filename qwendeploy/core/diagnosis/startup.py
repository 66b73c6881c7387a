"""What vLLM reported about its own memory at start-up, and how that compares with the plan's prediction.

vLLM (0.26, one line each, per rank with TP > 1; the first rank's is kept):

* ``Model loading took 14.29 GiB and 4.61 seconds`` — the weight shard;
* ``Available KV cache memory: 110.18 GiB`` — the KV-cache pool per GPU;
* ``GPU KV cache size: 2,063,088 tokens`` — tokens per replica;
* ``Maximum concurrency for 32,768 tokens per request: 62.96x``;
* ``… Actual usage is 14.29 GiB for weight, 1.13 GiB for peak activation, 0.22 GiB for non-torch memory, and
  0.89 GiB for CUDAGraph memory.``

Pure: lines in (one at a time, so ``serve`` can feed its live log), values out. ``compare`` sets them beside what
``qwendeploy plan`` stored in the profile's ``estimate`` section and flags a difference over 2 %.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from qwendeploy.core.profile import EstimateSection

GIB = 2**30
TOLERANCE = 0.02
"""Relative difference above which a reported value is flagged against the prediction."""

_LOADING = re.compile(r"Model loading took (?P<v>[\d.]+) ?GiB")
_KV_MEM = re.compile(r"Available KV cache memory: (?P<v>-?[\d.]+) ?GiB")
_KV_TOKENS = re.compile(r"GPU KV cache size: (?P<v>[\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for (?P<len>[\d,]+) tokens per request: (?P<v>[\d.]+)x")
_ACTUAL = re.compile(
    r"Actual usage is (?P<w>[\d.]+) ?GiB for weight, (?P<a>[\d.]+) ?GiB for peak activation, "
    r"(?P<n>[\d.]+) ?GiB for non-torch memory(?:, and (?P<g>[\d.]+) ?GiB for CUDAGraph memory)?"
)
_WORDS = ("Model loading took", "Available KV cache memory", "GPU KV cache size", "Maximum concurrency", "Actual usage")


@dataclass
class StartupReport:
    """The start-up figures vLLM logged (None: not logged, or not yet)."""

    weights_gib: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    concurrency_len: int | None = None
    activation_gib: float | None = None
    non_torch_gib: float | None = None
    cudagraph_gib: float | None = None
    lines: dict[str, int] = field(default_factory=dict)
    """The line each figure came from (1-based)."""

    def feed(self, line_no: int, text: str) -> bool:
        """Read one log line; True when it carried a figure not seen before."""
        if not any(w in text for w in _WORDS):
            return False
        new = False
        m = _LOADING.search(text)
        if m and self.weights_gib is None:
            self.weights_gib, new = float(m.group("v")), True
            self.lines["weights"] = line_no
        m = _KV_MEM.search(text)
        if m and self.kv_cache_gib is None:
            self.kv_cache_gib, new = float(m.group("v")), True
            self.lines["kv_cache_memory"] = line_no
        m = _KV_TOKENS.search(text)
        if m and self.kv_cache_tokens is None:
            self.kv_cache_tokens, new = int(m.group("v").replace(",", "")), True
            self.lines["kv_cache_tokens"] = line_no
        m = _CONCURRENCY.search(text)
        if m and self.max_concurrency is None:
            self.max_concurrency, new = float(m.group("v")), True
            self.concurrency_len = int(m.group("len").replace(",", ""))
            self.lines["max_concurrency"] = line_no
        m = _ACTUAL.search(text)
        if m and self.activation_gib is None:
            self.activation_gib, self.non_torch_gib = float(m.group("a")), float(m.group("n"))
            self.cudagraph_gib = float(m.group("g")) if m.group("g") else None
            if self.weights_gib is None:
                self.weights_gib = float(m.group("w"))
                self.lines["weights"] = line_no
            self.lines["activation"] = line_no
            new = True
        return new

    @property
    def empty(self) -> bool:
        return not self.lines

    @property
    def kv_complete(self) -> bool:
        """The KV cache is sized: tokens and concurrency are in (vLLM logs "Maximum concurrency" last of the
        KV lines, once profiling ends)."""
        return self.kv_cache_tokens is not None and self.max_concurrency is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_gib": self.weights_gib,
            "kv_cache_gib": self.kv_cache_gib,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": self.max_concurrency,
            "concurrency_len": self.concurrency_len,
            "activation_gib": self.activation_gib,
            "non_torch_gib": self.non_torch_gib,
            "cudagraph_gib": self.cudagraph_gib,
            "lines": dict(self.lines),
        }


def read_startup(lines: list[str] | tuple[str, ...]) -> StartupReport:
    """The figures of a whole log (the first of each)."""
    report = StartupReport()
    for i, text in enumerate(lines, 1):
        report.feed(i, text)
    return report


@dataclass(frozen=True)
class Comparison:
    """One figure: what the plan predicted beside what vLLM reported."""

    name: str
    unit: str
    predicted: float
    reported: float
    line: int

    @property
    def diff(self) -> float:
        """(reported − predicted) / predicted."""
        return (self.reported - self.predicted) / self.predicted if self.predicted else 0.0

    @property
    def flagged(self) -> bool:
        return abs(self.diff) > TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "predicted": self.predicted,
            "reported": self.reported,
            "diff_pct": round(self.diff * 100, 2),
            "flagged": self.flagged,
            "line": self.line,
        }

    def text(self) -> str:
        fmt = "{:,.0f}" if self.unit == "tokens" else "{:,.2f}"
        mark = "  ← differs by more than 2%" if self.flagged else ""
        return (
            f"{self.name}: predicted {fmt.format(self.predicted)} {self.unit}, vLLM reported "
            f"{fmt.format(self.reported)} {self.unit} ({self.diff * 100:+.1f}%){mark}"
        )


def compare(report: StartupReport, estimate: EstimateSection) -> list[Comparison]:
    """The figures both sides know, in start-up order. A prediction of 0 (a profile without an estimate) is
    skipped, never compared."""
    out: list[Comparison] = []
    gpu = estimate.per_gpu[0] if estimate.per_gpu else None

    def add(name: str, unit: str, predicted: float | None, reported: float | None, key: str) -> None:
        if predicted and reported is not None:
            out.append(Comparison(name, unit, float(predicted), float(reported), report.lines.get(key, 0)))

    if gpu is not None:
        add("weights per GPU", "GiB", gpu.weights_bytes / GIB, report.weights_gib, "weights")
        add("peak activation", "GiB", gpu.activation_bytes / GIB, report.activation_gib, "activation")
        add("KV memory per GPU", "GiB", gpu.kv_cache_bytes / GIB, report.kv_cache_gib, "kv_cache_memory")
    add("KV cache", "tokens", estimate.kv_cache_tokens, report.kv_cache_tokens, "kv_cache_tokens")
    add("max concurrency", "requests", estimate.max_concurrency, report.max_concurrency, "max_concurrency")
    return out


def summary(rows: list[Comparison]) -> str:
    """One line for serve's events: each figure predicted → reported, and whether any part by more than 2%."""
    if not rows:
        return "vLLM's start-up figures: nothing the profile's estimate predicts to compare with"
    flagged = [r.name for r in rows if r.flagged]
    head = (
        f"estimate and vLLM differ by more than 2% ({', '.join(flagged)})"
        if flagged
        else "vLLM's start-up matches the estimate within 2%"
    )
    parts = []
    for r in rows:
        fmt = "{:,.0f}" if r.unit == "tokens" else "{:,.2f}"
        parts.append(f"{r.name} {fmt.format(r.predicted)} → {fmt.format(r.reported)} {r.unit} ({r.diff * 100:+.1f}%)")
    return head + ": " + "; ".join(parts)
