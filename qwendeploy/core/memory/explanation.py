"""One term of the estimate with its formula and inputs, so ``plan --explain`` can print how it was computed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Explanation:
    """One term of the estimate: what it is, how it is computed, from which inputs, and its value."""

    name: str
    formula: str
    inputs: Mapping[str, object]
    value: float
    unit: str = "bytes"
