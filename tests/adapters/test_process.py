from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwendeploy.adapters import process
from tests.fakes.serving import FAKE_VLLM, alive, free_port, wait_for

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, mode: str, **kw: object) -> process.ServerProcess:
    env = dict(os.environ, FAKE_VLLM_MODE=mode, FAKE_VLLM_STATE_DIR=str(tmp_path))
    argv = [str(FAKE_VLLM), "serve", "m", "--port", str(free_port())]
    return process.start(argv, env, log_path=tmp_path / "logs" / "x.0.log", **kw)  # type: ignore[arg-type]


def _pids(tmp_path: Path, sp: process.ServerProcess) -> dict[str, int]:
    f = tmp_path / f"{sp.pid}.json"
    assert wait_for(f.exists)
    return dict(json.loads(f.read_text()))


def test_stop_ends_server_and_worker(tmp_path: Path) -> None:
    sp = _start(tmp_path, "healthy", header=["command: x"])
    pids = _pids(tmp_path, sp)
    assert os.getpgid(pids["worker"]) == sp.pgid != os.getpgid(0)
    res = process.stop(sp, grace_s=5)
    assert res.exit_code == 0 and not res.killed and res.leftovers == ()
    assert alive(pids.values()) == []
    text = (tmp_path / "logs" / "x.0.log").read_text()
    assert text.startswith("# qwendeploy: command: x\n") and "vLLM API server version" in text


def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path) -> None:
    sp = _start(tmp_path, "ignore_sigterm")
    pids = _pids(tmp_path, sp)
    res = process.stop(sp, grace_s=0.3)
    assert res.killed and res.exit_code == -signal.SIGKILL
    assert alive(pids.values()) == []


def test_crash_leaves_worker_which_stop_ends(tmp_path: Path) -> None:
    sp = _start(tmp_path, "crash_after:0.1")
    pids = _pids(tmp_path, sp)
    sp.track()
    assert wait_for(lambda: sp.poll() is not None)
    assert alive([pids["worker"]]) == [pids["worker"]]  # the crashed server's worker lives on
    res = process.stop(sp, grace_s=2)
    assert res.exit_code == 1
    assert alive(pids.values()) == []


def test_secrets_are_scrubbed_from_the_log(tmp_path: Path) -> None:
    env = dict(os.environ, FAKE_VLLM_STATE_DIR=str(tmp_path))
    argv = [str(FAKE_VLLM), "serve", "m", "--port", str(free_port()), "--api-key", "sk-secret-123"]
    sp = process.start(argv, env, log_path=tmp_path / "l.log", secrets=["sk-secret-123"], header=["sk-secret-123"])
    assert wait_for(lambda: any("non-default args" in line for line in sp.tail()))
    process.stop(sp, grace_s=5)
    text = (tmp_path / "l.log").read_text()
    assert "non-default args" in text and "sk-secret-123" not in text


def test_missing_executable_is_launch_failed(tmp_path: Path) -> None:
    from qwendeploy.errors import LaunchFailed

    with pytest.raises(LaunchFailed):
        process.start([str(tmp_path / "nope")], {}, log_path=tmp_path / "l.log")


@pytest.mark.parametrize(
    "mode, use_watchdog",
    [("healthy", False), ("healthy", True), ("ignore_sigterm", True)],
    ids=["pdeathsig-only", "pdeathsig+watchdog", "sigterm-ignored-watchdog-kills"],
)
def test_parent_killed_server_does_not_live_on(tmp_path: Path, mode: str, use_watchdog: bool) -> None:
    """The supervisor dies by SIGKILL: the parent-death signal (Linux) and the watchdog end the whole group."""
    if not use_watchdog and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from qwendeploy.adapters import process
        wd = process.Watchdog(0.3) if {use_watchdog!r} else None
        env = dict(os.environ, FAKE_VLLM_MODE={mode!r}, FAKE_VLLM_STATE_DIR={str(tmp_path)!r})
        sp = process.start([{str(FAKE_VLLM)!r}, "serve", "m", "--port", "{free_port()}"], env,
                           log_path=Path({str(tmp_path / "p.log")!r}), watchdog=wd)
        print(sp.pid, wd.pid if wd else 0, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert parent.stdout is not None
    server_pid, wd_pid = map(int, parent.stdout.readline().split())
    # generous bounds: on a loaded 2-core CI machine the fake's start can take seconds; wait_for returns early
    assert wait_for((tmp_path / f"{server_pid}.json").exists, timeout=15), "the fake vLLM never forked its worker"
    pids = json.loads((tmp_path / f"{server_pid}.json").read_text())
    parent.kill()
    parent.wait()
    assert wait_for(lambda: alive([server_pid, *pids.values()]) == [], timeout=15)
    assert wait_for(lambda: alive([wd_pid] if wd_pid else []) == [], timeout=15)


def test_watchdog_removes_a_docker_container_when_the_supervisor_dies(tmp_path: Path) -> None:
    """Killing the docker client leaves the container running: the watchdog runs `docker rm -f NAME`."""
    calls = tmp_path / "docker-calls"
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    docker.chmod(0o755)
    script = textwrap.dedent(
        f"""
        import time
        from qwendeploy.adapters import process
        wd = process.Watchdog(0.3)
        wd.watch_container({str(docker)!r}, "qwendeploy-a")
        wd.watch_container({str(docker)!r}, "qwendeploy-b")
        wd.unwatch_container("qwendeploy-b")
        print(wd.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert parent.stdout is not None
    wd_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert wait_for(lambda: alive([wd_pid]) == [], timeout=10)
    assert calls.read_text().splitlines() == ["rm -f qwendeploy-a"]


def test_unwritable_log_file_is_launch_failed(tmp_path: Path) -> None:
    from qwendeploy.errors import LaunchFailed

    (tmp_path / "file").write_text("")
    with pytest.raises(LaunchFailed, match="Cannot write the log file"):
        process.start([str(FAKE_VLLM)], {}, log_path=tmp_path / "file" / "logs" / "x.0.log")
