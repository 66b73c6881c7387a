"""What keeps two serves, a stranger on the port and the next run from hurting a running ``serve``.

* **One serve per profile name and per port**: ``acquire`` takes an exclusive ``flock`` on ``<name>.lock`` and
  on ``port-<port>.lock`` in ``lock_dir``. The kernel drops the lock when the process ends, however it ends
  (SIGKILL included), so a stale lock file never blocks the next run. The file holds the owner's pid, for the
  message.
* **Logs never overwritten**: every run has a run id (UTC start time and pid); its logs are
  ``<name>.<run>.<n>.log`` (n counts the starts of the run), created exclusively. ``prune_logs`` keeps the
  newest ``KEEP_RUNS`` runs of each server name and deletes older ones (only files of that exact pattern).
* **Only our own server is "ready"**: ``port_owner`` says whether the server or another process listens on
  its port; the supervisor declares a server ready, and sends it the API key, only when the listener belongs
  to the server's own process group (or its descendants) and no other process listens there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from qwendeploy.errors import PreflightFailed, WriteFailed

KEEP_RUNS = 20
"""Runs whose logs are kept per server name; older runs' logs are deleted when a new run starts."""


def new_run_id(now: float | None = None, pid: int | None = None) -> str:
    """``20261203T091500123456Z-12345`` (UTC, to the microsecond, then the pid): sorts by start time, and two
    runs never share one."""
    t = time.time() if now is None else now
    micro = min(int((t % 1) * 1_000_000), 999_999)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}{micro:06d}Z-{os.getpid() if pid is None else pid}"


def log_name(server: str, run_id: str, start: int) -> str:
    return f"{server}.{run_id}.{start}.log"


def _log_re(server: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(server)}\.(\d{{8}}T\d{{12}}Z-\d+)\.(\d+)\.log")


def prune_logs(log_dir: Path, servers: Iterable[str], *, keep_runs: int = KEEP_RUNS, current: str = "") -> list[Path]:
    """Delete the logs of all but the newest ``keep_runs`` runs of each server (``current`` is always kept).

    Only regular files named exactly ``<server>.<run id>.<n>.log`` are touched; returns what was deleted.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(log_dir))
    except OSError:
        return removed
    for server in servers:
        pat = _log_re(server)
        runs: dict[str, list[Path]] = {}
        for e in entries:
            m = pat.fullmatch(e.name)
            if m and e.is_file(follow_symlinks=False):
                runs.setdefault(m.group(1), []).append(Path(e.path))
        order = sorted(runs, key=lambda r: (r.split("-")[0], int(r.split("-")[1])))
        old = [r for r in order[: max(0, len(order) - keep_runs)] if r != current]
        for run in old:
            for p in runs[run]:
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def default_lock_dir(env: Mapping[str, str]) -> Path:
    """``$QWENDEPLOY_HOME/run``, else ``$XDG_RUNTIME_DIR/qwendeploy``, else ``<tmp>/qwendeploy-<uid>``."""
    if env.get("QWENDEPLOY_HOME"):
        return Path(env["QWENDEPLOY_HOME"]) / "run"
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "qwendeploy"
    return Path(tempfile.gettempdir()) / f"qwendeploy-{os.getuid()}"


@dataclass
class Locks:
    """Held locks (open descriptors); ``release`` closes them. Closing or exiting releases them too."""

    fds: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _lock_one(path: Path, what: str) -> int:
    import fcntl

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PreflightFailed(f"Lock file {path} is a symbolic link; refusing to use it.") from None
        raise WriteFailed(f"Cannot create the lock file {path}: {e.strerror or e}.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PreflightFailed(f"Lock file {path} is not a regular file.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = ""
            with contextlib.suppress(OSError, ValueError):
                owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise PreflightFailed(
                f"Another qwendeploy serve{who} is already running {what}; two would fight over the port and "
                "the log files.",
                hint="Stop the other serve first, or give this one another profile name and server.port.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def acquire(lock_dir: Path, *, names: Iterable[str], ports: Iterable[int]) -> Locks:
    """Exclusive locks for each server name and port (non-blocking).

    Raises:
        PreflightFailed: another serve holds one of them (exit 2; the message names its pid).
        WriteFailed: the lock directory cannot be created or written (exit 3).
    """
    try:
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(lock_dir)
    except OSError as e:
        raise WriteFailed(f"Cannot create the lock directory {lock_dir}: {e.strerror or e}.") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        # e.g. another user created /tmp/qwendeploy-<uid> first: its files are not ours to trust
        raise PreflightFailed(
            f"The lock directory {lock_dir} is not a directory of this user that only this user can write.",
            hint="Remove it, or set QWENDEPLOY_HOME (or XDG_RUNTIME_DIR) to a private directory.",
        )
    locks = Locks()
    try:
        for name in sorted(set(names)):
            path = lock_dir / f"{name}.lock"
            locks.fds.append(_lock_one(path, f"the profile named {name!r}"))
            locks.paths.append(path)
        for port in sorted(set(ports)):
            path = lock_dir / f"port-{port}.lock"
            locks.fds.append(_lock_one(path, f"a server on port {port}"))
            locks.paths.append(path)
    except BaseException:
        locks.release()
        raise
    return locks


def _proc_listen_inodes(port: int) -> set[int] | None:
    """Inodes of the TCP sockets listening on ``port`` (IPv4 and IPv6), from /proc/net; None off Linux."""
    found: set[int] = set()
    seen_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)  # header
                seen_table = True
                for line in f:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
                        continue
                    if int(parts[1].rsplit(":", 1)[1], 16) == port:
                        found.add(int(parts[9]))
        except (OSError, ValueError, IndexError):
            continue
    return found if seen_table else None


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for n in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


@dataclass(frozen=True)
class PortOwner:
    ours: bool
    """A process of ``pids`` listens on the port."""
    foreign: frozenset[int | None]
    """Other processes listening there (``None``: a socket whose owner this user cannot see)."""


def port_owner(port: int, pids: Iterable[int]) -> PortOwner:
    """Who listens on TCP ``port``: one of ``pids`` (the server's process group and descendants), someone else,
    or both. On Linux from /proc (the listening sockets' inodes against the pids' descriptors: a few
    milliseconds); elsewhere from psutil's connection table."""
    pids = set(pids)
    inodes = _proc_listen_inodes(port)
    if inodes is not None:
        mine: set[int] = set()
        for pid in pids:
            mine |= _socket_inodes(pid) & inodes
        others = inodes - mine
        foreign: set[int | None] = set()
        if others:
            foreign = {None}
            for p in psutil.process_iter():  # name them, for the message
                if p.pid in pids:
                    continue
                if _socket_inodes(p.pid) & others:
                    foreign.add(p.pid)
            if len(foreign) > 1:
                foreign.discard(None)
        return PortOwner(ours=bool(mine), foreign=frozenset(foreign))
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return PortOwner(ours=False, foreign=frozenset())
    listeners = [c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    return PortOwner(
        ours=any(pid in pids for pid in listeners),
        foreign=frozenset(pid for pid in listeners if pid not in pids),
    )
