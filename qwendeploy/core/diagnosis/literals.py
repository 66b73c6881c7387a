"""The literals a regex cannot match without, read from its structure: the words of the scan's prefilters.

``signature_literals`` reads the top level of each alternative of a rule's regex (groups, classes, escapes and
optional characters end a run) and returns the longest run every match must contain. The engine puts those words
in its block prefilter (google-re2's ``Set``, see gate.py) and skips a regex on a line that has none of its words.

Why not hand the rules' regexes themselves to re2's ``Set`` and drop this walker (issue 15)? Measured on real vLLM
0.26 logs: a Set of the ~100 signature regexes costs ~15 µs per line, the literal gate ~7 µs, and the named groups
the fixes need still come from Python's ``re``; the words, not the regexes, are what makes the Set fast (~3 ns per
character over a block of lines).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_LEADING_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")


def _structure(pattern: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, char, group depth after it) for each character of ``pattern`` outside escapes and classes."""
    depth, in_class, i = 0, False, start
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":  # a literal ] first in a class does not close it
                i += 1
        else:
            depth += (ch == "(") - (ch == ")")
            yield i, ch, depth
        i += 1


def _split_branches(pattern: str) -> list[str]:
    """Top-level alternatives of a regex (``a|b(c|d)`` → ``a``, ``b(c|d)``)."""
    out: list[str] = []
    start = 0
    for i, ch, depth in _structure(pattern):
        if ch == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
    out.append(pattern[start:])
    return out


def _skip_group(b: str, i: int) -> int:
    """The index just after the group that opens at ``b[i]`` (the end of ``b`` if it never closes)."""
    for j, ch, depth in _structure(b, i):
        if ch == ")" and depth == 0:
            return j + 1
    return len(b)


def _required_literal(branch: str) -> str:
    """The longest run of plain characters every match of ``branch`` must contain ("" if none is certain).

    Only the top level of the branch is read: groups, classes, escapes like \\d and optional characters end
    a run. Used to skip the regexes whose literal is not in a line (most lines of a long log).
    """
    runs: list[str] = []
    cur: list[str] = []

    def flush() -> None:
        if cur:
            runs.append("".join(cur))
            cur.clear()

    i = 0
    while i < len(branch):
        ch = branch[i]
        if ch == "\\":
            nxt = branch[i + 1 : i + 2]
            i += 2
            if nxt and not nxt.isalnum():
                cur.append(nxt)
            else:
                flush()
            continue
        if ch == "(":
            flush()
            i = _skip_group(branch, i)
            continue
        if ch == "[":
            flush()
            j = i + 1
            if branch[j : j + 1] == "]":
                j += 1
            while j < len(branch) and branch[j] != "]":
                j += 2 if branch[j] == "\\" else 1
            i = j + 1
            continue
        if ch in "*?{+":
            optional = ch in "*?" or (ch == "{" and branch[i + 1 : i + 2] == "0")
            if optional and cur:
                cur.pop()
            flush()
            if ch == "{":
                i = branch.find("}", i) + 1 or len(branch)
            else:
                i += 1
            if branch[i : i + 1] in ("?", "+"):
                i += 1
            continue
        if ch in ".^$":
            flush()
            i += 1
            continue
        cur.append(ch)
        i += 1
    flush()
    return max(runs, key=len, default="")


def signature_literals(pattern: str) -> tuple[tuple[str, ...] | None, bool]:
    """Literals one of which every match of ``pattern`` contains, and whether they compare case-insensitively.

    ``None`` when some alternative has no certain literal of 3+ characters (the regex then runs on every line
    that passes the gate).
    """
    icase = False
    m = _LEADING_FLAGS.match(pattern)
    if m:
        icase = "i" in m.group(1)
        pattern = pattern[m.end() :]
    lits = []
    for branch in _split_branches(pattern):
        lit = _required_literal(branch)
        if len(lit) < 3:
            return None, icase
        lits.append(lit.lower() if icase else lit)
    return tuple(lits), icase
