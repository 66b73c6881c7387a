"""Watchdog: ends the supervised servers if the supervisor dies without stopping them (even by SIGKILL).

Runs as a separate process in its own session (``python -I watchdog.py``; stdlib + psutil only, so it starts
fast and does not import qwendeploy). It reads commands from stdin, whose write end only the supervisor
holds; end-of-file without ``release`` means the supervisor is gone, and then every registered process group
gets SIGTERM, a grace period, then SIGKILL, as do the registered pids that left their group.

Protocol, one command per line:
    grace SECONDS          grace period between SIGTERM and SIGKILL
    group PGID             a server's process group to end
    ungroup PGID           the supervisor stopped that group itself
    pid PID CREATE_TIME    a descendant (maybe outside the group) to end; CREATE_TIME guards against pid reuse
    container NAME DOCKER  a docker container to remove (``DOCKER rm -f NAME``): the docker client is in a
                           registered group, but ending the client leaves the container running
    uncontainer NAME       the supervisor removed that container itself
    release                the supervisor shut down cleanly: exit without killing anything
The parent-death signal on the server (``prctl(PR_SET_PDEATHSIG)``) is the first line of defence; this
process covers what it cannot: workers, a server that ignores SIGTERM, and non-Linux systems.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def _alive_pid(pid: int, create_time: float) -> bool:
    try:
        import psutil

        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        import psutil

        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    return True
            except (ProcessLookupError, psutil.Error):
                continue
        return False
    except ImportError:
        return True


def _signal_all(groups: set[int], pids: dict[int, float], sig: int) -> None:
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, sig)
    for pid, ct in pids.items():
        if _alive_pid(pid, ct):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _remove_containers(containers: dict[str, str]) -> None:
    import subprocess

    for name, docker in containers.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [docker, "rm", "-f", name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    grace = 5.0
    groups: set[int] = set()
    pids: dict[int, float] = {}
    containers: dict[str, str] = {}
    for raw in sys.stdin:
        parts = raw.split()
        if not parts:
            continue
        cmd = parts[0]
        try:
            if cmd == "grace":
                value = float(parts[1])
                grace = min(value, 3600.0) if value >= 0 else grace  # never wait forever (NaN fails >= 0)
            elif cmd == "group":
                groups.add(int(parts[1]))
            elif cmd == "ungroup":
                groups.discard(int(parts[1]))
            elif cmd == "pid":
                pids[int(parts[1])] = float(parts[2])
            elif cmd == "container":
                containers[parts[1]] = raw.strip().split(None, 2)[2]
            elif cmd == "uncontainer":
                containers.pop(parts[1], None)
            elif cmd == "release":
                return 0
        except (IndexError, ValueError):
            continue
    # EOF without release: the supervisor died.
    _remove_containers(containers)
    if not groups and not pids:
        return 0
    _signal_all(groups, pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(_group_alive(g) for g in groups) and not any(_alive_pid(p, c) for p, c in pids.items()):
            return 0
        time.sleep(0.1)
    _signal_all(groups, pids, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
