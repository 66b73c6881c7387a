"""A real two-node Ray cluster on loopback (head + worker started by `qwendeploy cluster head/join`, each
declaring 4 GPUs with --num-gpus, which Ray accepts without GPUs): environment propagation, the shortage check
(16 GPUs needed, 8 present), an environment mismatch, and the fake vLLM served under supervision against it.

The cluster lives in one module fixture; its nodes are ended by process group (``ray_cluster.stop_node``), so
nothing is left running and no other Ray on the machine is touched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fakes.serving import FAKE_VLLM, free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None, reason="ray is not importable (pip install -e '.[cluster]')"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
IFNAME = "qdtest0"


def _profile(path: Path, *, tp: int, pp: int, port: int, ray_port: int, ifname: str = IFNAME) -> Path:
    doc = {
        "version": 1,
        "name": "mn",
        "model": {"id": "m", "max_model_len": 4096},
        "placement": {
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": pp,
            "nodes": 2,
            "distributed_executor_backend": "ray",
        },
        "engine": {"gpu_memory_utilization": 0.5},
        "server": {"port": port, "ready_timeout_s": 60, "shutdown_grace_s": 2},
        "restart": {"policy": "never"},
        "cluster": {"ray_port": ray_port, "socket_ifname": ifname, "gpus_per_node": 4},
        "env": {"NCCL_DEBUG": "WARN"},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _qd(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "qwendeploy", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@dataclass
class Cluster:
    address: str
    ray_port: int
    profile: Path
    pgids: list[int]
    temp_dirs: list[str]


HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
"""Two loopback addresses, one per node. Not 127.0.0.1: Ray swaps that for the host's outward address
(resolve_ip_for_localhost), so its daemons would talk over eth0; other 127/8 addresses it keeps as given."""


def _start(role: str, *args: str, temp_dir: str, node_ip: str) -> dict[str, object]:
    common = ["--node-ip", node_ip, "--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024)]
    r = _qd("cluster", role, *args, *common, "--temp-dir", temp_dir, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(json.loads(r.stdout))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from qwendeploy.adapters.ray_cluster import stop_node

    work = tmp_path_factory.mktemp("ray")
    ray_port = free_port()
    profile = _profile(work / "mn.yaml", tp=4, pp=2, port=free_port(), ray_port=ray_port)
    # Short temp dirs: Ray's Unix socket paths must stay under 108 bytes.
    dirs = [tempfile.mkdtemp(prefix="qdh", dir="/tmp"), tempfile.mkdtemp(prefix="qdw", dir="/tmp")]
    pgids: list[int] = []
    try:
        head = _start("head", str(profile), temp_dir=dirs[0], node_ip=HEAD_IP)
        pgids.append(int(head["pgid"]))  # type: ignore[call-overload]
        worker = _start("join", f"{HEAD_IP}:{ray_port}", str(profile), temp_dir=dirs[1], node_ip=WORKER_IP)
        pgids.append(int(worker["pgid"]))  # type: ignore[call-overload]
        yield Cluster(f"{HEAD_IP}:{ray_port}", ray_port, profile, pgids, dirs)
    finally:
        for pgid in reversed(pgids):
            assert stop_node(pgid), f"Ray node in process group {pgid} did not stop"
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_join_starts_every_node_with_the_profiles_environment(cluster: Cluster) -> None:
    r = _qd("cluster", "status", "--address", cluster.address, "--profile", str(cluster.profile), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    alive = [n for n in doc["nodes"] if n["alive"]]
    assert len(alive) == 2 and doc["total_gpus"] == 8
    assert sorted(n["head"] for n in alive) == [False, True]
    for n in alive:
        # What a Ray task on that node sees: the variables exported into its `ray start`.
        assert n["env"]["NCCL_SOCKET_IFNAME"] == IFNAME
        assert n["env"]["GLOO_SOCKET_IFNAME"] == IFNAME
        assert n["env"]["VLLM_HOST_IP"] == (HEAD_IP if n["head"] else WORKER_IP)
        assert n["env"]["NCCL_DEBUG"] == "WARN"
        assert n["labels"]["qwendeploy-env"] == alive[0]["labels"]["qwendeploy-env"]
        assert n["versions"]["ray"]
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert statuses["ray gpus"] == "ok" and statuses["node env"] == "ok"


def test_status_text_lists_nodes_and_gpus(cluster: Cluster) -> None:
    r = _qd("cluster", "status", "--address", cluster.address, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    assert "8 GPU(s) on 2 node(s)" in r.stdout and "head" in r.stdout and IFNAME in r.stdout


def test_serve_refuses_a_profile_needing_more_gpus_than_the_cluster_has(cluster: Cluster, tmp_path: Path) -> None:
    big = _profile(tmp_path / "big.yaml", tp=8, pp=2, port=free_port(), ray_port=cluster.ray_port)
    r = _qd("serve", str(big), "--vllm-bin", str(FAKE_VLLM), env={"RAY_ADDRESS": cluster.address})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "needs 16 GPUs" in r.stderr and "has 8 GPU(s) on 2 node(s) (4 + 4)" in r.stderr


def test_serve_without_a_cluster_is_a_preflight_failure(tmp_path: Path) -> None:
    p = _profile(tmp_path / "p.yaml", tp=4, pp=2, port=free_port(), ray_port=free_port())
    r = _qd("serve", str(p), "--vllm-bin", str(FAKE_VLLM), env={"RAY_ADDRESS": f"127.0.0.1:{free_port()}"}, timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ray cluster" in r.stdout and "No " in r.stderr


def test_fake_vllm_serves_under_supervision_against_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "FAKE_VLLM_RAY": "1",
        "FAKE_VLLM_STATE_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "qwendeploy", "serve", str(cluster.profile), "--vllm-bin", str(FAKE_VLLM)]
    cmd += ["--log-dir", str(tmp_path / "logs"), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.stdout is not None
    events = []
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1]["event"] in ("ready", "gave_up", "exited"):
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    assert events and events[-1]["event"] == "ready", rest
    assert proc.returncode == 0, rest
    checks = {e["name"]: e["status"] for e in events if e["event"] == "preflight"}
    assert checks["ray gpus"] == "ok" and checks["node env"] == "ok"
    start = next(e for e in events if e["event"] == "start")
    assert "--distributed-executor-backend ray" in start["command"]
    (log_file,) = (tmp_path / "logs").glob("mn.*.0.log")  # <name>.<run id>.<start>.log
    log = log_file.read_text()
    # The fake attached to the real cluster through RAY_ADDRESS, as vLLM does.
    assert "Ray cluster: 2 nodes, 8 GPUs; world size 8" in log


def test_a_node_started_without_the_profiles_environment_is_caught(cluster: Cluster) -> None:
    from qwendeploy.adapters import ray_cluster
    from qwendeploy.adapters.profile_files import read_profile
    from qwendeploy.core.cluster import check_cluster

    d = tempfile.mkdtemp(prefix="qdx", dir="/tmp")
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "GLOO_", "VLLM_"))}
    argv = [ray_cluster.ray_executable(), "start", "--address", cluster.address, "--node-ip-address", "127.0.0.4"]
    argv += ["--num-gpus", "0", "--num-cpus", "1"]
    argv += ["--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", d, "--disable-usage-stats"]
    started = ray_cluster.start_node(argv, bare)
    try:
        assert started.ok, started.output
        prof = read_profile(cluster.profile)
        found = ray_cluster.probe(cluster.address, env_keys=["NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_DEBUG"])
        assert len(found.alive) == 3
        bad = [c for c in check_cluster(prof, found) if c.status == "fail"]
        assert any("NCCL_SOCKET_IFNAME=None (want qdtest0)" in c.detail for c in bad), bad
    finally:
        assert ray_cluster.stop_node(started.pgid)
        shutil.rmtree(d, ignore_errors=True)
