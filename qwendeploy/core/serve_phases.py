"""The start-up phases ``serve`` names while vLLM starts, from vLLM's log lines."""

from __future__ import annotations

import re

from qwendeploy.core.diagnosis.engine import phase_of_line

PHASES: tuple[str, ...] = (
    "loading weights",
    "profiling memory",
    "KV cache allocated",
    "capturing CUDA graphs",
    "sampler warm-up",
    "ready",
)
"""Start-up phases in order, as the status line names them."""

PHASE_ORDER = {name: i for i, name in enumerate(PHASES)}

_ENGINE_PHASES = {
    "loading": "loading weights",
    "profiling": "profiling memory",
    "cudagraph": "capturing CUDA graphs",
    "sampler": "sampler warm-up",
    "serving": "ready",
}
"""The diagnosis catalog's phase names (``phase_of_line``, markers kept in data/rules.yaml) → ours."""

_KV_ALLOCATED = re.compile(r"GPU KV cache size|# GPU blocks|GPU blocks:|Maximum concurrency for", re.I)
"""The one milestone the diagnosis catalog does not name: the KV cache is sized (end of profiling)."""


def phase_of(line: str) -> str | None:
    """The start-up phase a log line announces. The diagnosis catalog's phase markers are the single source
    (so `serve` and `doctor` agree on real vLLM logs); we add only the KV-cache milestone."""
    if _KV_ALLOCATED.search(line):
        return "KV cache allocated"
    got = phase_of_line(line)
    return _ENGINE_PHASES.get(got) if got else None
