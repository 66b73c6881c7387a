"""Reading a file a user names, safely: a regular file only, below a size cap, never blocking.

``open`` on a FIFO blocks until a writer comes; ``read`` of /dev/zero or /dev/urandom (or a symlink to them)
never ends. ``read_bounded`` opens with ``O_NONBLOCK`` (a FIFO opens at once), checks with ``fstat`` on the
open descriptor (no window between a check and the read) that it is a regular file, and reads at most
``max_bytes + 1`` bytes, so a file that grows while it is read is refused too.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from qwendeploy.core import limits
from qwendeploy.errors import BadInput


def open_regular(path: str | Path, what: str) -> tuple[int, int]:
    """Open ``path`` for reading without blocking and make sure it is a regular file: ``(fd, size)``.

    Raises:
        FileNotFoundError: it does not exist.
        BadInput: a directory, FIFO, device or socket (or a symlink to one), or unreadable.
    """
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise BadInput(f"{what} {p} is a directory, not a file.") from None
        raise BadInput(f"{what} {p} cannot be read: {e.strerror or e}.") from None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise BadInput(f"{what} {p} cannot be read: {e.strerror or e}.") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{what} {p} is {_kind(st.st_mode)}; only regular files are read.")
    return fd, st.st_size


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bounded(path: str | Path, *, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``.

    Raises:
        FileNotFoundError: it does not exist (callers word their own message).
        BadInput: not a regular file (a directory, FIFO, device, socket), larger than the cap, or unreadable.
    """
    p = Path(path)
    fd, size = open_regular(p, what)
    try:
        if size > max_bytes:
            raise BadInput(f"{what} {p} is {size:,} bytes; the limit is {max_bytes:,} (see docs/limits.md).")
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - got))  # a regular file: never EAGAIN
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > max_bytes:
            raise BadInput(f"{what} {p} grew beyond {max_bytes:,} bytes while being read (see docs/limits.md).")
        return b"".join(chunks)
    except OSError as e:
        raise BadInput(f"{what} {p} cannot be read: {e.strerror or e}.") from None
    finally:
        os.close(fd)


def read_text_bounded(path: str | Path, *, max_bytes: int, what: str) -> str:
    """``read_bounded`` decoded as UTF-8 (a decoding error is BadInput)."""
    raw = read_bounded(path, max_bytes=max_bytes, what=what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{what} {path} is not UTF-8 text (byte {e.start}).") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (NaN and Infinity are refused)")


def loads_json_bounded(text: str | bytes, what: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity (and numbers that overflow to infinity), nesting deeper than
    ``limits.MAX_DEPTH`` and more than ``limits.MAX_NODES`` values.

    Raises:
        BadInput: naming ``what`` and the offending path.
    """
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise BadInput(f"{what} nests too deeply to parse (the bound is {limits.MAX_DEPTH} levels).") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{what} is not valid JSON: {limits.shown(str(e), 200)}.") from None
    limits.check_tree(data, what)
    return data


def read_json_file(path: str | Path, *, max_bytes: int, what: str) -> Any:
    """A bounded regular file (``read_bounded``) parsed by ``loads_json_bounded``.

    Raises:
        FileNotFoundError: it does not exist.
        BadInput: not a regular file, too large, not JSON, or out of bounds.
    """
    return loads_json_bounded(read_bounded(path, max_bytes=max_bytes, what=what), what)
