"""NCCL test orchestration with real processes standing in for the torch workers (no GPU, no torch)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from qwendeploy.adapters import nccl_test

WORKER_OK = """
import json, os
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
assert os.environ["NCCL_NVLS_ENABLE"] == "0"
assert os.environ["LOCAL_RANK"] == str(rank) and len(os.environ["CUDA_VISIBLE_DEVICES"].split(",")) == world
if rank == 0:
    print("NCCL INFO some log line")
    for size in map(int, os.environ["QWENDEPLOY_NCCL_SIZES"].split(",")):
        print(json.dumps({"bytes": size, "seconds": size / 100e9}), flush=True)
"""

WORKER_HANG = """
import os, sys, time
print(f"rank {os.environ['RANK']} NCCL INFO Channel 00 : 0[0] -> 1[1] via P2P/IPC", flush=True)
with open(sys.argv[1] + "." + os.environ["RANK"], "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
"""

WORKER_FAIL = """
import os, sys
print("NCCL WARN Error while creating shared memory segment /dev/shm/nccl-abc (size 9637888)", flush=True)
sys.exit(1 if os.environ["RANK"] == "1" else 0)
"""


def script(tmp_path: Path, body: str) -> list[str]:
    p = tmp_path / "worker.py"
    p.write_text(body)
    return [sys.executable, str(p)]


def test_bus_bandwidth_formula() -> None:
    assert nccl_test.bus_bandwidth(100.0, 2) == pytest.approx(100.0)
    assert nccl_test.bus_bandwidth(100.0, 8) == pytest.approx(175.0)


def test_parse_worker_output_ignores_noise() -> None:
    lines = ["NCCL INFO x", '{"bytes": 1048576, "seconds": 0.0001}', "{broken", '{"other": 1}']
    (r,) = nccl_test.parse_worker_output(lines, 4)
    assert r.bytes == 1 << 20 and r.time_ms == pytest.approx(0.1)
    assert r.algbw_gbps == pytest.approx(10.48576) and r.busbw_gbps == pytest.approx(10.48576 * 1.5)


def test_one_gpu_runs_nothing() -> None:
    out = nccl_test.run(["0"])
    assert out.status == "skipped" and "at least 2 GPUs" in out.message


def test_without_torch_says_how_to_get_it() -> None:
    if nccl_test.torch_available():
        pytest.skip("torch is installed here")
    out = nccl_test.run(["0", "1"])
    assert out.status == "skipped" and "pip install torch" in out.message


def test_sweep_with_stand_in_workers(tmp_path: Path) -> None:
    out = nccl_test.run(
        ["0", "1", "2", "3"],
        sizes=[1 << 20, 1 << 30],
        worker_argv=script(tmp_path, WORKER_OK),
        need_torch=False,
        timeout_s=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.status == "ok", out.last_lines
    assert [r.bytes for r in out.results] == [1 << 20, 1 << 30]
    assert out.results[0].algbw_gbps == pytest.approx(100.0)
    assert out.results[0].busbw_gbps == pytest.approx(150.0)
    assert json.loads(json.dumps(out.to_dict()))["results"][1]["bytes"] == 1 << 30


def test_hang_is_killed_at_the_deadline(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    argv = [*script(tmp_path, WORKER_HANG), str(marker)]
    out = nccl_test.run(["0", "1"], worker_argv=argv, need_torch=False, timeout_s=3)
    assert out.status == "hang"
    assert any("via P2P/IPC" in line for line in out.last_lines)
    pids = [int((tmp_path / f"pid.{r}").read_text()) for r in range(2)]
    time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_failed_rank_is_reported(tmp_path: Path) -> None:
    out = nccl_test.run(["0", "1"], worker_argv=script(tmp_path, WORKER_FAIL), need_torch=False, timeout_s=30)
    assert out.status == "failed" and "[0, 1]" in out.message
    assert any("shared memory segment" in line for line in out.last_lines)
