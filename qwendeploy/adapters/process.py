"""A server's process tree: start it in its own session, stream its output, stop all of it.

* ``start`` runs argv with an explicit environment in a new session (so its process group id is its pid and
  the terminal's Ctrl-C does not reach it), with ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux so it is told
  when the supervisor dies, and registers the group with a ``Watchdog`` for the cases the signal cannot cover.
* Output (stdout+stderr) is read by a thread: every line is scrubbed of secrets, written to the log file and
  queued for the supervisor.
* vLLM's workers stay in the server's group (multiprocessing does not call setsid), but a crashed server
  leaves them re-parented to init; ``track`` records every descendant while the server runs, so ``stop`` ends
  those too, and also any that moved to another group or session.
* ``stop``: SIGTERM to the group (and tracked strays) → wait up to the grace period → SIGKILL, then wait
  until nothing of it is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from qwendeploy.core.vllm_args import scrub
from qwendeploy.errors import LaunchFailed

PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None = None


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up before fork (the child only calls it)."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _prctl = libc.prctl
        except OSError:
            _prctl = None
    return _prctl


def _preexec(parent_pid: int, prctl: Callable[..., int] | None, sig: int) -> Callable[[], None]:
    def run() -> None:
        # Runs in the child between fork and exec; start_new_session has already called setsid().
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os._exit(1)

    return run


class Watchdog:
    """A helper process that ends registered groups when the supervisor dies (see ``watchdog.py``)."""

    def __init__(self, grace_s: float) -> None:
        script = Path(__file__).with_name("watchdog.py")
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        self._lock = threading.Lock()
        self._send(f"grace {grace_s}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _send(self, line: str) -> None:
        stdin = self._proc.stdin
        if stdin is None:
            return
        with self._lock, contextlib.suppress(OSError, ValueError):
            stdin.write((line + "\n").encode())
            stdin.flush()

    def watch_group(self, pgid: int) -> None:
        self._send(f"group {pgid}")

    def unwatch_group(self, pgid: int) -> None:
        self._send(f"ungroup {pgid}")

    def watch_pid(self, pid: int, create_time: float) -> None:
        self._send(f"pid {pid} {create_time}")

    def watch_container(self, docker_bin: str, name: str) -> None:
        """Remove this container (``DOCKER rm -f NAME``) if the supervisor dies: killing the docker client
        does not stop the container."""
        self._send(f"container {name} {docker_bin}")

    def unwatch_container(self, name: str) -> None:
        self._send(f"uncontainer {name}")

    def release(self) -> None:
        """Clean shutdown: the watchdog exits without killing anything."""
        self._send("release")
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@dataclass
class ServerProcess:
    """A started server: its Popen, process group, log file and the descendants seen so far."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    lines: queue.SimpleQueue[str]
    secrets: tuple[str, ...] = ()
    known: dict[int, float] = field(default_factory=dict)
    """pid → create_time of every descendant seen (guards against pid reuse)."""
    watchdog: Watchdog | None = None
    _pump: threading.Thread | None = None
    _tail: list[str] = field(default_factory=list)
    _tail_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session: the leader's pid is the group and session id

    def poll(self) -> int | None:
        return self.popen.poll()

    def tail(self, n: int = 200) -> list[str]:
        """The last ``n`` output lines (already scrubbed)."""
        with self._tail_lock:
            return list(self._tail[-n:])

    def track(self) -> list[int]:
        """Record the server's current descendants; returns the pids that were new."""
        new: list[int] = []
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return new
        for k in kids:
            try:
                ct = k.create_time()
            except psutil.Error:
                continue
            if self.known.get(k.pid) != ct:
                self.known[k.pid] = ct
                new.append(k.pid)
                if self.watchdog is not None:
                    self.watchdog.watch_pid(k.pid, ct)
        return new

    def family(self) -> set[int]:
        """The server's pid, its live descendants and the descendants recorded earlier (cheap: no scan of
        every process, unlike ``members``)."""
        pids = {self.pid, *self.known}
        with contextlib.suppress(psutil.Error):
            pids.update(k.pid for k in psutil.Process(self.pid).children(recursive=True))
        return pids

    def members(self) -> list[psutil.Process]:
        """Live (non-zombie) processes of the group or session, plus tracked descendants still alive."""
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["status"]):
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                if os.getpgid(p.pid) == self.pgid or os.getsid(p.pid) == self.pgid:
                    found[p.pid] = p
            except OSError:
                continue
        for pid, ct in self.known.items():
            if pid in found:
                continue
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - ct) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    found[pid] = p
            except psutil.Error:
                continue
        return list(found.values())

    def join_output(self, timeout: float = 2.0) -> None:
        """Wait for the output thread to reach end-of-file (all lines written to the log)."""
        if self._pump is not None:
            self._pump.join(timeout)


def _pump(stream: IO[bytes], log: IO[str], sp: ServerProcess) -> None:
    writable = True
    try:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            if "\r" in text:  # progress bars: keep the last redraw
                text = next((seg for seg in reversed(text.split("\r")) if seg.strip()), "")
            text = scrub(text, sp.secrets)
            if writable:
                try:
                    log.write(text + "\n")
                    log.flush()
                except (OSError, ValueError) as e:
                    # Disk full or the like: say so once, and keep draining the pipe (a server blocked on a
                    # full pipe would hang) — the lines still reach the supervisor and the diagnosis tail.
                    writable = False
                    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    sp.lines.put(
                        f"# qwendeploy: ERROR: cannot write the log file {sp.log_path}: {why}; output not saved"
                    )
            with sp._tail_lock:
                sp._tail.append(text)
                if len(sp._tail) > 2000:
                    del sp._tail[:1000]
            sp.lines.put(text)
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            log.close()
        with contextlib.suppress(OSError):
            stream.close()


def start(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    log_path: Path,
    header: Iterable[str] = (),
    secrets: Sequence[str] = (),
    watchdog: Watchdog | None = None,
    pdeath_signal: int = signal.SIGTERM,
) -> ServerProcess:
    """Start ``argv`` in a new session with exactly ``env``; its output goes to ``log_path`` (and the queue).

    ``header`` lines (e.g. the redacted command) are written first, prefixed with ``# qwendeploy:``.

    Raises:
        LaunchFailed: the log file cannot be written, or the executable is missing or cannot be run (the
            CLI's preflight catches the common cases first).
    """
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # "x": a log is never overwritten (each start of each run has its own name; see serve_guard).
        log = open(log_path, "x", encoding="utf-8")  # noqa: SIM115 - closed by the output thread
        for h in header:
            log.write(f"# qwendeploy: {scrub(h, secrets)}\n")
        log.flush()
    except OSError as e:
        raise LaunchFailed(
            f"Cannot write the log file {log_path}: {e.strerror or e}.",
            hint="Pass --log-dir with a writable directory.",
        ) from None
    prctl = _load_prctl()
    try:
        popen = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_preexec(os.getpid(), prctl, pdeath_signal),
        )
    except OSError as e:
        log.write(f"# qwendeploy: could not start {argv[0]}: {e}\n")
        log.close()
        raise LaunchFailed(f"Could not start {argv[0]}: {e.strerror or e}.") from None
    sp = ServerProcess(
        popen=popen, log_path=log_path, started_at=time.monotonic(), lines=queue.SimpleQueue(), secrets=tuple(secrets)
    )
    if watchdog is not None:
        sp.watchdog = watchdog
        watchdog.watch_group(sp.pgid)
    assert popen.stdout is not None
    t = threading.Thread(target=_pump, args=(popen.stdout, log, sp), name=f"log-{popen.pid}", daemon=True)
    sp._pump = t
    t.start()
    return sp


@dataclass(frozen=True)
class StopResult:
    exit_code: int | None
    """The server's exit status (negative: killed by that signal)."""
    killed: bool
    """SIGKILL was needed."""
    leftovers: tuple[int, ...]
    """Processes still alive after SIGKILL (should be empty; they are reported)."""


def _signal(sp: ServerProcess, procs: Iterable[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sp.pgid, sig)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _wait_gone(sp: ServerProcess, timeout: float, poll_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        sp.popen.poll()  # reap the leader so it does not linger as a zombie
        left = sp.members()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll_s)


def stop(sp: ServerProcess, grace_s: float, *, poll_s: float = 0.05) -> StopResult:
    """SIGTERM the whole group (and tracked strays), wait up to ``grace_s``, then SIGKILL what is left.

    Safe to call on a server that already exited (it then only ends the leftovers, e.g. orphaned workers).
    """
    if sp.poll() is None:
        sp.track()
    left = sp.members()
    killed = False
    if left:
        _signal(sp, left, signal.SIGTERM)
        left = _wait_gone(sp, grace_s, poll_s)
        if left:
            killed = True
            _signal(sp, left, signal.SIGKILL)
            left = _wait_gone(sp, 5.0, poll_s)
    try:
        code = sp.popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    if sp.watchdog is not None and not left:
        sp.watchdog.unwatch_group(sp.pgid)
    sp.join_output()
    return StopResult(exit_code=code, killed=killed, leftovers=tuple(p.pid for p in left))


def vllm_processes() -> list[psutil.Process]:
    """Processes on this machine that ``core.checks.processes.vllm_role`` calls vLLM's (zombies left out)."""
    from qwendeploy.core.checks.processes import vllm_role

    found: list[psutil.Process] = []
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if vllm_role(p.info["name"] or "", " ".join(p.info["cmdline"] or [])) is not None:
            found.append(p)
    return found
