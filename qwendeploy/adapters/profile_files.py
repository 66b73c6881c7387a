"""Reading and writing profile files: atomic writes, never a silent overwrite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qwendeploy.core.profile import Profile, dump_yaml, load_yaml
from qwendeploy.errors import BadInput, ProfileExists


def read_profile(path: str | Path) -> Profile:
    """Load and validate a profile file.

    Raises:
        BadInput: the file is missing or unreadable.
        ProfileInvalid: it does not validate (the message names the field path).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"Profile {p} does not exist.", hint="Write one with `qwendeploy plan MODEL -o PATH`.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"Profile {p} cannot be read: {e}") from None
    return load_yaml(text, source=str(p))


def write_text_atomic(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename.

    A reader never sees a half-written file, and an existing file is replaced only with ``force``.

    Raises:
        ProfileExists: the file exists and ``force`` is false.
        BadInput: the directory does not exist or is not writable.
    """
    p = Path(path)
    if p.exists() and not force:
        raise ProfileExists(f"{p} already exists; not overwriting it.", hint="Pass --force to replace it.")
    if not p.parent.exists():
        raise BadInput(f"Cannot write {p}: directory {p.parent} does not exist.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise BadInput(f"Cannot write {p}: {e.strerror}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if not force and p.exists():
            raise ProfileExists(f"{p} appeared while writing; not overwriting it.", hint="Pass --force to replace it.")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_profile(path: str | Path, profile: Profile, *, header: str | None = None, force: bool = False) -> Path:
    """Serialise and atomically write a profile (see ``write_text_atomic``)."""
    return write_text_atomic(path, dump_yaml(profile, header=header), force=force)
