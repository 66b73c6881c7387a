"""``doctor --nccl-test``: spawn one process per GPU running an NCCL all-reduce sweep, with a deadline.

The workers run :mod:`qwendeploy.adapters.nccl_worker` (``python -m``), the only place qwendeploy imports torch.
This module never imports torch: it checks ``importlib.util.find_spec("torch")``, starts the processes with an
explicit environment (rank, world size, a loopback TCP store, ``NCCL_NVLS_ENABLE=0`` unless set), reads rank 0's
JSON lines and kills the whole group when the deadline passes (a hang is the result, not an error).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwendeploy.adapters.system import torch_available as torch_available  # the one probe, shared with doctor

DEFAULT_SIZES = tuple(1 << p for p in range(20, 31, 2))
"""1 MiB, 4 MiB, 16 MiB, 64 MiB, 256 MiB, 1 GiB."""
WORKER_MODULE = "qwendeploy.adapters.nccl_worker"
TORCH_HINT = (
    "The NCCL test needs PyTorch with CUDA in this environment: pip install torch "
    "(or install vLLM, which brings it: pip install 'qwendeploy[vllm]')."
)


@dataclass
class NcclResult:
    bytes: int
    time_ms: float
    algbw_gbps: float
    busbw_gbps: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "time_ms": self.time_ms,
            "algbw_gbps": self.algbw_gbps,
            "busbw_gbps": self.busbw_gbps,
        }


@dataclass
class NcclTestOutcome:
    status: str
    """ok, hang (deadline passed), failed (a rank exited non-zero), skipped (fewer than 2 GPUs, no torch)."""
    world_size: int
    gpus: list[str] = field(default_factory=list)
    results: list[NcclResult] = field(default_factory=list)
    message: str = ""
    last_lines: list[str] = field(default_factory=list)
    """Output of the workers (rank-prefixed), the evidence when it hangs or fails."""
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "world_size": self.world_size,
            "gpus": self.gpus,
            "results": [r.to_dict() for r in self.results],
            "message": self.message,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def bus_bandwidth(algbw: float, world_size: int) -> float:
    """nccl-tests' all-reduce bus bandwidth: algbw × 2(n−1)/n."""
    return algbw * 2 * (world_size - 1) / world_size if world_size > 0 else 0.0


def parse_worker_output(lines: Sequence[str], world_size: int) -> list[NcclResult]:
    """Rank 0 prints one JSON object per size: {"bytes", "seconds"}; everything else is ignored."""
    results = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(d, dict) or "bytes" not in d or "seconds" not in d:
            continue
        size, secs = int(d["bytes"]), float(d["seconds"])
        algbw = size / secs / 1e9 if secs > 0 else 0.0
        results.append(
            NcclResult(bytes=size, time_ms=secs * 1e3, algbw_gbps=algbw, busbw_gbps=bus_bandwidth(algbw, world_size))
        )
    return results


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# long: one subprocess lifecycle (spawn every rank, watch the deadline, reap, read rank 0) reads best in one piece;
# the pure parts (parse_worker_output, bus_bandwidth) are already out.
def run(
    gpus: Sequence[str],
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    worker_argv: Sequence[str] | None = None,
    need_torch: bool = True,
) -> NcclTestOutcome:
    """All-reduce over ``gpus`` (indices or UUIDs), one process per GPU.

    Args:
        gpus: the GPUs; rank i drives the i-th of them.
        sizes: message sizes in bytes.
        timeout_s: deadline for the whole sweep; past it every worker is killed and the outcome is ``hang``.
        env: base environment (default: os.environ).
        worker_argv: the command for one rank (default: ``python -m qwendeploy.adapters.nccl_worker``); tests
            pass a stand-in script.
        need_torch: check that torch can be imported before starting (tests with a stand-in pass False).
    """
    n = len(gpus)
    if n < 2:
        return NcclTestOutcome(
            "skipped", n, list(gpus), message="An all-reduce needs at least 2 GPUs; nothing was run."
        )
    if need_torch and not torch_available():
        return NcclTestOutcome("skipped", n, list(gpus), message=TORCH_HINT)
    argv = list(worker_argv or [sys.executable, "-m", WORKER_MODULE])
    base = dict(os.environ if env is None else env)
    port = free_port()
    size_arg = ",".join(str(s) for s in sizes)
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="qwendeploy-nccl-") as tmp:
        try:
            for rank in range(n):
                child_env = dict(base)
                child_env.update(
                    {
                        # every rank sees every GPU of the test and picks its own, as vLLM's workers do
                        # (NCCL's P2P/IPC paths between processes expect the peers to be visible)
                        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
                        "RANK": str(rank),
                        "LOCAL_RANK": str(rank),
                        "WORLD_SIZE": str(n),
                        "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port),
                        "QWENDEPLOY_NCCL_SIZES": size_arg,
                        "QWENDEPLOY_NCCL_TIMEOUT_S": str(int(timeout_s)),
                    }
                )
                child_env.setdefault("NCCL_NVLS_ENABLE", "0")
                log = open(Path(tmp) / f"rank{rank}.log", "w+b")  # noqa: SIM115 - closed in finally
                logs.append(log)
                procs.append(
                    subprocess.Popen(argv, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )
            deadline = started + timeout_s
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.05)
            hung = any(p.poll() is None for p in procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(p.pid, signal.SIGKILL)
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read().decode(errors="replace").splitlines())
            log.close()
    elapsed = time.monotonic() - started
    tail = [f"[rank {r}] {line}" for r, lines in enumerate(outputs) for line in lines[-20:]]
    results = parse_worker_output(outputs[0] if outputs else [], n)
    if hung:
        return NcclTestOutcome(
            "hang",
            n,
            list(gpus),
            results,
            message=f"The all-reduce did not finish within {timeout_s:.0f} s; the workers were killed.",
            last_lines=tail,
            elapsed_s=elapsed,
        )
    codes = [p.returncode for p in procs]
    if any(c != 0 for c in codes):
        return NcclTestOutcome(
            "failed",
            n,
            list(gpus),
            results,
            message=f"NCCL test workers exited with {codes}.",
            last_lines=tail,
            elapsed_s=elapsed,
        )
    return NcclTestOutcome("ok", n, list(gpus), results, message="", last_lines=tail, elapsed_s=elapsed)
