"""Command-line token lists: removing flags (with their values) before new ones are appended. Pure."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def drop_flags(argv: Sequence[str], names: Collection[str]) -> list[str]:
    """``argv`` without the flags in ``names`` and their values (``--flag value`` or ``--flag=value``).

    Every flag named is taken to carry a value: these lists are built from value flags only.
    """
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok.split("=", 1)[0] in names:
            skip = "=" not in tok
            continue
        out.append(tok)
    return out
