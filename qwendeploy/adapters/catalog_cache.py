"""Built catalogs kept as pickles under the user's cache directory (``$XDG_CACHE_HOME/qwendeploy``, else
``~/.cache/qwendeploy``): the file cache behind :mod:`qwendeploy.core.catalog_cache`.

A file is named by the SHA-256 of everything the value depends on: the catalog's text, the source files of
qwendeploy's core and errors modules (the code that builds it, whatever the version number says; by size and
modification time, as ``.pyc`` files are checked), the Python that runs it and the YAML and pydantic installs that
parse and check it. A file under any other name is never read, so an edited
catalog, an upgraded package or a changed parser simply misses and builds afresh. Every failure (no home, a
read-only or full disk, a damaged or foreign file) falls back silently to building the catalog; nothing here
ever stops a command.

Trust: a pickle runs code when loaded, so the directory is created private (0700), and a file is read only when it
and its directory belong to the user and no one else can write them — the same trust as the user's own
``site-packages`` or shell start-up files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import qwendeploy

FORMAT = b"qwendeploy catalog cache 1"
"""Bump when the way values are stored changes."""
KEEP = 8
"""Files kept per catalog, newest first: several installs or checkouts sharing one cache directory (each keyed by
its own code) do not push each other's files out."""


def cache_dir(env: Mapping[str, str]) -> Path | None:
    """``$XDG_CACHE_HOME/qwendeploy`` (an absolute path, as the XDG spec requires), else ``~/.cache/qwendeploy``;
    None without a home directory."""
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "qwendeploy"
    home = env.get("HOME", "")
    return Path(home) / ".cache" / "qwendeploy" if home and os.path.isabs(home) else None


def code_fingerprint() -> bytes:
    """What a built catalog depends on besides its text: qwendeploy's core (every module a catalog is built with
    lives there) and errors module, Python's version, and the YAML and pydantic installs — each source file by its
    path, size and modification time, as Python itself decides whether a ``.pyc`` is current (reading and hashing
    the ~90 sources instead took ~6 ms of every run)."""
    digest = hashlib.sha256(FORMAT)
    digest.update(sys.version.encode())
    digest.update(qwendeploy.__version__.encode())
    package = os.path.dirname(qwendeploy.__file__)
    files = [os.path.join(package, "errors.py")]
    for directory, _, names in os.walk(os.path.join(package, "core")):
        files += [os.path.join(directory, n) for n in names if n.endswith(".py")]
    for name in ("yaml", "pydantic", "pydantic_core"):
        spec = importlib.util.find_spec(name)
        files += [spec.origin] if spec is not None and spec.origin else [name]
    for path in sorted(files):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        except OSError:
            digest.update(f"{path}\0missing\0".encode())
    return digest.digest()


class FileCatalogCache:
    """``core.catalog_cache.CatalogCache`` on files: ``<dir>/<name>-<sha256>.pickle``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fingerprint: bytes | None = None

    def _path(self, name: str, text: str) -> Path:
        if self._fingerprint is None:
            self._fingerprint = code_fingerprint()
        key = hashlib.sha256(self._fingerprint + name.encode() + b"\0" + text.encode()).hexdigest()
        return self.directory / f"{name}-{key}.pickle"

    def get(self, name: str, text: str) -> object | None:
        try:
            path = self._path(name, text)
            if not (_private(path.parent) and _private(path)):
                return None  # someone else could have written it: never unpickle it
            value: object = pickle.loads(path.read_bytes())  # the user's own private file, named by its key
        except Exception:  # a missing, unreadable or damaged file is a miss, whatever unpickling raised
            return None
        return value

    def put(self, name: str, text: str, value: object) -> None:
        import tempfile

        with contextlib.suppress(Exception):  # unwritable, full, a race with another process: build next time
            path = self._path(name, text)
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, path)  # readers see the whole file or none
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._prune(name)

    def _prune(self, name: str) -> None:
        """Keep the ``KEEP`` newest files of catalog ``name`` (older catalogs or code are unlikely to come back)."""
        files = []
        for path in self.directory.glob(f"{name}-*.pickle"):
            with contextlib.suppress(OSError):
                files.append((path.stat().st_mtime_ns, path))
        for _, old in sorted(files, reverse=True)[KEEP:]:
            with contextlib.suppress(OSError):
                old.unlink()


def _private(path: Path) -> bool:
    """Owned by this user and writable by no one else (a cache directory set to a shared place such as /tmp must
    not let another user plant a pickle)."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def from_environment(env: Mapping[str, str]) -> FileCatalogCache | None:
    """The user's catalog cache, or None without a usable cache directory (then every run builds)."""
    directory = cache_dir(env)
    return FileCatalogCache(directory) if directory is not None else None
