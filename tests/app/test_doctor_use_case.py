"""app.doctor driven through its ports with plain fakes: no CLI, no NVML, no Ray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwendeploy.adapters.profile_files import read_profile
from qwendeploy.app.doctor import DoctorPorts, run_doctor
from qwendeploy.core.cluster import HostNetFacts, RayCluster
from qwendeploy.core.machine_facts import MachineFacts
from qwendeploy.errors import ProbeError

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


@dataclass
class Outcome:
    status: str
    world_size: int
    message: str = ""
    elapsed_s: float = 0.0
    results: list[Any] = field(default_factory=list)
    last_lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message}


class NoCluster:
    def host_network(self) -> HostNetFacts:
        return HostNetFacts(interfaces=("lo", "eth0"))

    def ray_cluster(self, ray_port: int, env_keys: Sequence[str]) -> RayCluster:
        raise ProbeError(f"no Ray head at 127.0.0.1:{ray_port}", hint="start one")


def ports(outcome: Outcome) -> DoctorPorts:
    def machine(shm_path: Path, served: Sequence[int]) -> MachineFacts:
        return MachineFacts(nvml=None, nvml_error="No NVIDIA GPU can be queried here.")

    def nccl(gpus: Sequence[str], timeout_s: float) -> Outcome:
        return outcome

    return DoctorPorts(machine=machine, cluster=NoCluster(), nccl=nccl)


def test_multi_node_profile_reports_the_missing_cluster_as_a_warning() -> None:
    prof = read_profile(PROFILES / "qwen2.5-72b-8xh100-128k.yaml")
    two_nodes = prof.model_copy(update={"placement": prof.placement.model_copy(update={"nodes": 2})})
    p = ports(Outcome("ok", 2))
    result = run_doctor(
        p, facts=p.machine(Path("/dev/shm"), []), profile=two_nodes, source=None, nccl_test=False, nccl_timeout=1
    )
    ray = {c.name: c for c in result.checks}["multinode.ray_cluster"]
    assert ray.status == "warn" and "no Ray head at 127.0.0.1:" in ray.detail and ray.fix == "start one"


def test_a_hung_nccl_test_fails_the_check_and_exits_1() -> None:
    p = ports(Outcome("hang", 2, message="All-reduce did not finish in 5 s.", last_lines=["rank0: init"]))
    result = run_doctor(
        p, facts=p.machine(Path("/dev/shm"), []), profile=None, source=None, nccl_test=True, nccl_timeout=5
    )
    check = {c.name: c for c in result.checks}["nccl_test"]
    assert check.status == "fail" and check.detail.startswith("All-reduce did not finish in 5 s.")
    assert result.nccl == {"status": "hang", "message": "All-reduce did not finish in 5 s."}
    assert result.exit_code == 1
