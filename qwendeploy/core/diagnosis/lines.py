"""One log line made fit to match: cut to a bounded length, unquoted, on one line, normalised; and quoted back
for evidence, shortened."""

from __future__ import annotations

import re

from qwendeploy.core.diagnosis import evidence as evi

MAX_LINE_CHARS = 4000
"""Characters of a line that are examined (a binary blob or a 1 MB JSON line must not stall matching)."""


def clean_line(raw: object) -> str:
    text = raw if isinstance(raw, str) else str(raw)
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS]
    if text[:1] == ">":  # a log pasted as a quote (GitHub, e-mail): "> line", "> > line"
        text = _QUOTED.sub("", text, count=1)
    text = text.rstrip("\r\n")
    if "\n" in text or "\r" in text:  # one item holding several lines: keep it one line
        text = text.replace("\r", " ").replace("\n", " ")
    return evi.normalise(text)


_QUOTED = re.compile(r"^(?:> ?)+")


def quote(text: str) -> str:
    t = " ".join(text.split())
    return t if len(t) <= 400 else t[:397] + "..."
