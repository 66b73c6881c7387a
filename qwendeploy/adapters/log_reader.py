"""Read a log as lines in bounded memory, whatever its size or shape (``doctor --log``).

A 500 MB log, a single 1 GB line without a newline, binary garbage or a pipe that never ends a line: the reader
keeps one chunk and the head of one line at a time. Line boundaries are ``str.splitlines``'s (so line numbers match
an editor's), and every line is cut to the characters the diagnosis engine examines.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import IO

from qwendeploy.core.diagnosis.engine import MAX_LINE_CHARS

CHUNK_CHARS = 1 << 20
"""Characters read at a time."""

_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""What ``str.splitlines`` ends a line at."""


def stream_lines(stream: IO[str] | IO[bytes], max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of ``stream`` without their line ends, each cut to ``max_chars`` characters.

    Memory is one chunk plus ``max_chars``; bytes are decoded as UTF-8 with replacement characters.
    """
    pending = ""  # the head of a line the last chunk did not end (at most max_chars)
    skip_lf = False  # a "\r" ended the last chunk: a "\n" opening the next one belongs to it
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character split between chunks stays whole
    done = False
    while not done:
        block = stream.read(CHUNK_CHARS)
        done = not block
        # At the end the decoder flushes a character cut off by the end of the input as U+FFFD.
        text = decoder.decode(block, final=done) if isinstance(block, bytes) else block or ""
        if skip_lf and text[:1] == "\n":
            text = text[1:]
        if not text:
            continue
        skip_lf = text[-1] == "\r"
        ended = text[-1] in _BREAKS
        parts = text.splitlines()
        if pending:
            parts[0] = pending + parts[0] if parts else pending
            pending = ""
        if not ended:  # the last part goes on in the next chunk
            pending = parts.pop()[:max_chars]
        if parts and max(map(len, parts)) > max_chars:
            parts = [p[:max_chars] for p in parts]
        yield from parts
    if pending:
        yield pending
