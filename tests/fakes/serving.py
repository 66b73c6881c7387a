"""Helpers for tests that run the fake vLLM as a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

FAKE_VLLM = Path(__file__).with_name("fake_vllm.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that are running (zombies count as gone: they hold no memory)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            continue
    return out


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def read_until(proc: subprocess.Popen[str], needle: str) -> str:
    """What ``proc`` printed up to and including the first line holding ``needle`` (fails if it never does)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError("never saw " + needle + ":\n" + "".join(seen))


def server_pids(state_dir: Path) -> list[int]:
    """Every pid the fake vLLM recorded in its state directory (FAKE_VLLM_STATE_DIR)."""
    return [pid for f in state_dir.glob("*.json") for pid in json.loads(f.read_text()).values()]
