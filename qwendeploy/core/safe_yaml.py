"""YAML in, plain data out — safe loading only, through libyaml when it is there.

``yaml.safe_load`` always uses the pure-Python parser; the catalogs alone took ~0.2 s with it, half of
``plan``'s start-up budget. ``CSafeLoader`` is the same safe loader (no Python tags, no object construction)
implemented in C.
"""

from __future__ import annotations

from typing import Any

import yaml

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str) -> Any:
    """Parse YAML with the safe loader (C if available). Raises ``yaml.YAMLError`` on bad input."""
    return yaml.load(text, Loader=_LOADER)
