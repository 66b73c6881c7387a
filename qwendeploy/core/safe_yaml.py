"""YAML in, plain data out — safe loading only, through libyaml when it is there.

``yaml.safe_load`` always uses the pure-Python parser; the catalogs alone took ~0.2 s with it, half of
``plan``'s start-up budget. ``CSafeLoader`` is the same safe loader (no Python tags, no object construction)
implemented in C.

``load_bounded`` is for files a user hands us (profiles): libyaml keeps an alias as one shared object, so a
"billion laughs" document loads in microseconds; ``limits.check_tree`` then counts every use of an alias and
refuses the document before anything (validation, ``repr``, JSON) expands it.
"""

from __future__ import annotations

from typing import Any

from qwendeploy.core import limits
from qwendeploy.errors import BadInput


def load(text: str) -> Any:
    """Parse YAML with the safe loader (C if available). Raises ``yaml.YAMLError`` on bad input."""
    import yaml  # on first use: a plan whose catalogs come from the cache parses no YAML (~15 ms of imports)

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_bounded(text: str, what: str) -> Any:
    """Parse untrusted YAML: the safe loader, then ``limits.check_tree`` (depth, values with aliases expanded,
    finite numbers, no NUL).

    Raises:
        BadInput: not YAML (the parser's message, which quotes a line, not the document), or out of bounds.
    """
    if "\x00" in text:
        raise BadInput(f"{what} holds a NUL character; it is not a text file.")
    import yaml

    try:
        data = load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"{what} is not valid YAML: {limits.shown(str(e), 400)}") from None
    except (RecursionError, MemoryError):
        raise BadInput(f"{what} nests too deeply to parse (the bound is {limits.MAX_DEPTH} levels).") from None
    limits.check_tree(data, what)
    return data
