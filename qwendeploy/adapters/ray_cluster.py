"""The Ray cluster, through the ``ray`` CLI and a short-lived Python subprocess — never ``import ray`` here.

* ``start_node``: ``ray start`` (head or join) with the profile's environment; Ray's daemons outlive it, in
  their own session whose process group id is the ``ray start`` pid (``StartedNode.pgid``).
* ``stop_node``: ends exactly that process group (SIGTERM, then SIGKILL) — for tests and scripted tear-down;
  people use ``ray stop``.
* ``probe``: connects as a Ray driver in a subprocess, lists the nodes (``ray.nodes()``) and runs one task
  pinned to each alive node that reports the environment its workers see and the vLLM/torch/ray versions
  installed there. Returns ``core.cluster.RayCluster``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from qwendeploy.core.cluster import VERSION_PACKAGES, RayCluster, RayNode
from qwendeploy.errors import BadInput, ProbeError

INSTALL_HINT = "pip install 'qwendeploy[cluster]' (installs ray) on every node."

_PROBE = r"""
import json, sys
address, keys, packages, timeout = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as e:
    print(json.dumps({"error": f"ray is not importable: {e}"})); sys.exit(0)
try:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"})); sys.exit(0)

@ray.remote(num_cpus=0)
def facts(keys, packages):
    import importlib.metadata as md, os, socket
    versions = {}
    for p in packages:
        try:
            versions[p] = md.version(p)
        except Exception:
            versions[p] = None
    return {"env": {k: os.environ.get(k) for k in keys}, "versions": versions, "hostname": socket.gethostname()}

nodes = ray.nodes()
refs = {}
for n in nodes:
    if n.get("Alive"):
        strategy = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        refs[n["NodeID"]] = facts.options(scheduling_strategy=strategy).remote(keys, packages)
seen = {}
for node_id, ref in refs.items():
    try:
        seen[node_id] = ray.get(ref, timeout=timeout)
    except Exception as e:
        seen[node_id] = {"error": f"{type(e).__name__}: {e}"}
out = []
for n in nodes:
    res = n.get("Resources") or {}
    f = seen.get(n["NodeID"], {})
    out.append({
        "node_id": n["NodeID"], "address": n.get("NodeManagerAddress", ""), "alive": bool(n.get("Alive")),
        "gpus": res.get("GPU", 0.0), "cpus": res.get("CPU", 0.0),
        "is_head": "node:__internal_head__" in res, "labels": n.get("Labels") or {},
        "env": f.get("env") or {}, "versions": f.get("versions") or {}, "hostname": f.get("hostname"),
    })
print(json.dumps({"nodes": out}))
ray.shutdown()
"""


def ray_executable(env: Mapping[str, str] | None = None) -> str:
    """The ``ray`` CLI: beside this Python first (same environment), then on PATH.

    Raises:
        BadInput: Ray is not installed.
    """
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ray", path=(env or os.environ).get("PATH"))
    if found:
        return found
    raise BadInput("Ray is not installed: no `ray` executable.", hint=INSTALL_HINT)


def default_address(env: Mapping[str, str], ray_port: int) -> str:
    """``$RAY_ADDRESS``, else the head on this host (``127.0.0.1:ray_port``)."""
    return env.get("RAY_ADDRESS") or f"127.0.0.1:{ray_port}"


@dataclass(frozen=True)
class StartedNode:
    argv: tuple[str, ...]
    returncode: int
    output: str
    pgid: int
    """Process group (and session) of the node's daemons."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def start_node(argv: Sequence[str], env: Mapping[str, str], *, timeout: float = 120.0) -> StartedNode:
    """Run ``ray start`` (not ``--block``) in a new session with ``env``; wait for it to return.

    Raises:
        ProbeError: it did not return within ``timeout`` (its process group is ended).
    """
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_node(proc.pid)
        proc.communicate()
        raise ProbeError(f"`ray start` did not finish within {timeout:.0f} s.") from None
    return StartedNode(tuple(argv), proc.returncode, out, proc.pid)


def _group_members(pgid: int) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.info["pid"])
        except (OSError, psutil.Error):
            continue
    return out


def stop_node(pgid: int, *, grace_s: float = 5.0) -> bool:
    """End the process group ``pgid`` of one node started by ``start_node``: SIGTERM, then SIGKILL.

    Returns True when nothing of it is left.
    """
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not _group_members(pgid):
                return True
            time.sleep(0.1)
    return not _group_members(pgid)


def probe(
    address: str,
    *,
    env_keys: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    task_timeout: float = 30.0,
) -> RayCluster:
    """Nodes, GPUs, per-node environment (``env_keys``) and versions of the Ray cluster at ``address``.

    Raises:
        ProbeError: Ray is not importable, or no cluster answers at ``address``.
    """
    _reachable(address)
    child_env = {k: v for k, v in (env or os.environ).items() if k != "RAY_ADDRESS"}
    argv = [
        sys.executable,
        "-c",
        _PROBE,
        address,
        json.dumps(list(env_keys)),
        json.dumps(list(VERSION_PACKAGES)),
        str(task_timeout),
    ]
    try:
        r = subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ProbeError(
            f"No answer from the Ray cluster at {address} within {timeout:.0f} s.",
            hint="Is the head running? `qwendeploy cluster head PROFILE` starts it.",
        ) from None
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise ProbeError(f"Could not read the Ray cluster at {address}: {' | '.join(tail) or 'no output'}.")
    doc = json.loads(lines[-1])
    if "error" in doc:
        hint = (
            INSTALL_HINT
            if "not importable" in doc["error"]
            else ("Start the head with `qwendeploy cluster head PROFILE`, or set RAY_ADDRESS to the head's HOST:PORT.")
        )
        raise ProbeError(f"No Ray cluster at {address}: {doc['error']}", hint=hint)
    nodes = tuple(
        RayNode(
            node_id=n["node_id"],
            address=n["address"],
            alive=n["alive"],
            gpus=float(n["gpus"]),
            cpus=float(n["cpus"]),
            is_head=n["is_head"],
            labels=dict(n["labels"]),
            env=dict(n["env"]),
            versions=dict(n["versions"]),
            hostname=n.get("hostname"),
        )
        for n in doc["nodes"]
    )
    return RayCluster(address=address, nodes=nodes)


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast when nothing listens at the head's port (``ray.init`` would retry for a minute or more)."""
    import socket

    from qwendeploy.core.cluster import split_address

    host, port = split_address(address, 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        raise ProbeError(
            f"No Ray cluster at {address}: {e.strerror or e}.",
            hint="Start the head with `qwendeploy cluster head PROFILE`, or set RAY_ADDRESS to the head's HOST:PORT.",
        ) from None


def interface_address(ifname: str) -> str | None:
    """This host's IPv4 address on ``ifname`` (None: no such interface or no IPv4 address)."""
    import socket

    import psutil

    for addr in psutil.net_if_addrs().get(ifname, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None
