"""Read a log as lines in bounded memory, whatever its size or shape (``doctor --log``).

A 500 MB log, a single 1 GB line without a newline, binary garbage or a pipe that never ends a line: the reader
keeps one chunk and the head of one line at a time. Line boundaries are ``str.splitlines``'s (so line numbers match
an editor's), and every line is cut to the characters the diagnosis engine examines.
"""

from __future__ import annotations

import codecs
import io
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from qwendeploy.core.diagnosis.engine import MAX_LINE_CHARS
from qwendeploy.errors import BadInput

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


@dataclass
class LogFile:
    """The log to diagnose, opened but not read: ``lines()`` streams it once (bounded memory for any size)."""

    name: str
    stream: IO[str]
    age_s: float | None = None
    """Seconds since the file was last written (None for stdin)."""

    def lines(self) -> Iterator[str]:
        try:
            yield from stream_lines(self.stream)
        except OSError as e:
            raise BadInput(f"Cannot read the log {self.name}: {e.strerror or e}.") from None
        finally:
            if self.stream is not sys.stdin:
                self.stream.close()


def open_log(log: str) -> LogFile:
    """``doctor --log``: a file, or ``-`` for stdin. Raises BadInput (exit 2) for a missing or unreadable log."""
    hint = "Pass a vLLM log file, or --log - to read stdin."
    if log == "-":
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise BadInput("--log - reads the log from stdin, but stdin is closed.", hint=hint)
        try:
            stdin.fileno()
        except io.UnsupportedOperation:
            pass  # an in-memory stand-in (tests, embedding): readable, no descriptor
        except (OSError, ValueError):
            raise BadInput("--log - reads the log from stdin, but stdin is closed.", hint=hint) from None
        return LogFile("stdin", stdin)
    path = Path(log)
    if path.is_dir():
        raise BadInput(f"{log} is a directory, not a log file.", hint=hint)
    if not path.exists():
        raise BadInput(f"Log file {log} does not exist.", hint=hint)
    # Opened without blocking, so a FIFO nobody writes to does not hang the open; then back to blocking reads, so
    # a pipe with a writer (`--log <(journalctl …)`) is read to its end and one without a writer reads as empty.
    # Devices and sockets never end (/dev/zero, /dev/urandom): refused.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise BadInput(f"Cannot read log file {log}: {e.strerror or e}.") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            raise BadInput(f"{log} is a device or socket, not a log file: it would never end.", hint=hint)
        if stat.S_ISFIFO(st.st_mode):
            os.set_blocking(fd, True)
        stream = os.fdopen(fd, encoding="utf-8", errors="replace", newline="")
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):
            raise BadInput(f"Cannot read log file {log}: {e.strerror or e}.") from None
        raise
    age = time.time() - st.st_mtime if stat.S_ISREG(st.st_mode) else None
    return LogFile(log, stream, max(0.0, age) if age is not None else None)
