"""Reading and writing profile files: atomic writes, never a silent overwrite."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from qwendeploy.adapters.safe_read import read_text_bounded
from qwendeploy.core.limits import MAX_PROFILE_BYTES
from qwendeploy.core.profile import Profile, dump_yaml, load_yaml
from qwendeploy.errors import BadInput, ProfileExists, WriteFailed


def read_profile(path: str | Path) -> Profile:
    """Load and validate a profile file.

    The file must be a regular file of at most ``MAX_PROFILE_BYTES`` (a FIFO, a device or a symlink to one is
    refused without blocking), with bounded YAML (see ``safe_yaml.load_bounded``).

    Raises:
        BadInput: the file is missing, unreadable, not a regular file or too large.
        ProfileInvalid: it does not validate (the message names the field path).
    """
    p = Path(path)
    try:
        text = read_text_bounded(p, max_bytes=MAX_PROFILE_BYTES, what="Profile")
    except FileNotFoundError:
        raise BadInput(f"Profile {p} does not exist.", hint="Write one with `qwendeploy plan MODEL -o PATH`.") from None
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
            raise _write_failed(p, e) from None
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
        BadInput: the directory does not exist, or the path is not a regular file.
        WriteFailed: the operating system refused the write (disk full, permissions, read-only): exit 3.
    """
    p = check_target(path, force=force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise _write_failed(p, e) from None
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
    except OSError as e:  # disk full, quota, read-only remount, I/O error: nothing was published
        raise _write_failed(p, e) from None
    finally:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
    return p


def _write_failed(p: Path, e: OSError) -> WriteFailed:
    return WriteFailed(
        f"Cannot write {p}: {e.strerror or e} (nothing was written; any earlier file there is unchanged).",
        hint="Free space or pick a writable location (exit code 3 means a write failed).",
    )


def write_profile(path: str | Path, profile: Profile, *, header: str | None = None, force: bool = False) -> Path:
    """Serialise and atomically write a profile (see ``write_text_atomic``)."""
    return write_text_atomic(path, dump_yaml(profile, header=header), force=force)
