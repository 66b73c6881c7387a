"""How models.yaml writes things (parameter counts as cards print them, a repo's short name) and the error a
malformed catalog raises. No pydantic here: importing ``ModelSpec`` does not build the catalog's schema."""

from __future__ import annotations

import re
from typing import Any

_COUNT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBT]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


class ModelCatalogError(ValueError):
    """models.yaml is malformed (a bug in the package, caught by the tests); the message names entry and field."""


def parse_count(value: Any) -> int:
    """``7.61B`` → 7_610_000_000; plain integers pass through. The catalog writes counts as the card prints them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _COUNT_RE.match(str(value))
    if not m:
        raise ValueError(f"not a parameter count: {value!r}")
    return round(float(m.group(1)) * _SCALE[m.group(2).upper()])


def name_part(repo_id: str) -> str:
    """The lower-cased name after the ``/`` (``qwen2.5-7b-instruct``): every entry's first alias."""
    return repo_id.rsplit("/", 1)[-1].lower()


def entry_aliases(repo_id: str, aliases: tuple[str, ...]) -> tuple[str, ...]:
    """The names an entry is found by besides its id: its short name, then its own aliases, lower-cased, once each."""
    return tuple(dict.fromkeys((name_part(repo_id), *(a.lower() for a in aliases))))
