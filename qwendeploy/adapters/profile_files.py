"""Reading and writing profile files: atomic writes, never a silent overwrite."""

from __future__ import annotations

import errno
import os
import stat
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


def check_target(path: str | Path, *, force: bool = False) -> Path:
    """Whether ``path`` may receive a profile: absent, or (with ``force``) a regular file; its directory exists.

    Called before any work so that a bad ``-o`` fails at once; ``write_text_atomic`` checks again when writing.

    Raises:
        ProfileExists: a regular file is there and ``force`` is false.
        BadInput: the path is a directory, a device, a FIFO or another non-regular file, or its directory is
            missing.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BadInput(f"Cannot write {p}: {e.strerror}.") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"Cannot write {p}: it is a directory.", hint=f"Name a file, e.g. {p / 'profile.yaml'}.")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(
                f"Cannot write {p}: it is not a regular file (a device, FIFO or socket); profiles are only "
                "written to regular files."
            )
        if not force:
            raise _exists(p)
    if not p.parent.is_dir():
        raise BadInput(f"Cannot write {p}: directory {p.parent} does not exist.")
    return p


def _exists(p: Path) -> ProfileExists:
    return ProfileExists(f"{p} already exists; not overwriting it.", hint="Pass --force to replace it.")


def _publish_new(tmp: str, p: Path) -> None:
    """Give the finished temporary file the name ``p`` only if nothing has that name (no check-then-replace)."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise _exists(p) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise BadInput(f"Cannot write {p}: {e.strerror}.") from None
        # No hard links on this file system: claim the name exclusively, then move the content over it.
        try:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            raise _exists(p) from None
        os.replace(tmp, p)


def write_text_atomic(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory.

    A reader never sees a half-written file. Without ``force`` the file is published with a hard link, which
    fails if the name exists (no window between a check and the write); with ``force`` an existing regular
    file is replaced by a rename. Directories, devices and other special files are never replaced.

    Raises:
        ProfileExists: the file exists and ``force`` is false.
        BadInput: the directory does not exist or is not writable, or the path is not a regular file.
    """
    p = check_target(path, force=force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise BadInput(f"Cannot write {p}: {e.strerror}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            check_target(p, force=True)  # still absent or a regular file
            os.replace(tmp, p)
        else:
            _publish_new(tmp, p)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return p


def write_profile(path: str | Path, profile: Profile, *, header: str | None = None, force: bool = False) -> Path:
    """Serialise and atomically write a profile (see ``write_text_atomic``)."""
    return write_text_atomic(path, dump_yaml(profile, header=header), force=force)
