"""Byte units. GiB = 2**30 bytes, as vLLM and PyTorch print them."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def gib(n_bytes: float) -> float:
    """Bytes → GiB (2**30)."""
    return n_bytes / GiB


def gib_text(n_bytes: float) -> str:
    """``12.3 GiB``: one decimal, for the planner's messages."""
    return f"{n_bytes / GiB:.1f} GiB"


def human_size(n_bytes: float) -> str:
    """``12.34 GiB`` style, the way vLLM's logs print memory."""
    if abs(n_bytes) >= GiB:
        return f"{n_bytes / GiB:.2f} GiB"
    if abs(n_bytes) >= MiB:
        return f"{n_bytes / MiB:.1f} MiB"
    if abs(n_bytes) >= KiB:
        return f"{n_bytes / KiB:.1f} KiB"
    return f"{int(n_bytes)} B"
