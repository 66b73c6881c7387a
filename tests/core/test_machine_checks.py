"""Machine checks judged from facts: fake-NVML machines plus hand-built host facts (no real /sys, no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes.fake_nvml import FakeNvml

from qwendeploy.adapters import nvml
from qwendeploy.core.checks import Check
from qwendeploy.core.checks.driver import required_driver
from qwendeploy.core.checks.interconnect import topology_matrix
from qwendeploy.core.checks.machine import run_checks
from qwendeploy.core.checks.shm import shm_needed
from qwendeploy.core.machine_facts import IbDevice, IbPort, MachineFacts, SystemFacts
from qwendeploy.core.profile import (
    ClusterSection,
    EstimateSection,
    GpuEstimate,
    ModelSection,
    PlacementSection,
    Profile,
)
from qwendeploy.core.units import GiB, MiB

MACHINES = Path(__file__).parent.parent / "fixtures" / "machines"


def host(**kw: object) -> SystemFacts:
    base: dict[str, object] = {
        "shm_total_bytes": 16 * GiB,
        "shm_free_bytes": 16 * GiB,
        "in_container": False,
        "memlock_soft": -1,
        "memlock_hard": -1,
        "infiniband": None,
    }
    base.update(kw)
    return SystemFacts(**base)  # type: ignore[arg-type]


def facts(machine: str | None, **kw: object) -> MachineFacts:
    if machine is None:
        return MachineFacts(nvml=None, nvml_error="No NVIDIA GPU can be queried here.", system=host(**kw))
    fake = FakeNvml.load(MACHINES / machine)
    return MachineFacts(nvml=nvml.probe(fake, processes=fake.process_lookup), system=host(**kw))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_no_gpu_says_so_and_skips_gpu_checks() -> None:
    checks = by_name(run_checks(facts(None)))
    assert checks["nvml"].status == "warn" and "No NVIDIA GPU" in checks["nvml"].detail
    assert checks["driver"].status == "skip"
    assert all(c.status != "fail" for c in checks.values())


def test_healthy_h100_is_all_ok_or_skip() -> None:
    checks = run_checks(facts("1xh100.yaml"))
    assert {c.status for c in checks} <= {"ok", "skip"}, [c for c in checks if c.status not in ("ok", "skip")]
    mem = by_name(checks)["gpu[0].memory"]
    assert "CUDA sees 79.18 GiB" in mem.detail


def test_orphans_fail_with_kill_command() -> None:
    c = by_name(run_checks(facts("2xa100-orphan.yaml")))["gpu_processes"]
    assert c.status == "fail"
    assert "VLLM::EngineCore" in c.detail and "kill 4242 4243" in c.fix


def test_other_process_warns_naming_it() -> None:
    checks = by_name(run_checks(facts("1xa10g-other-process.yaml")))
    assert checks["gpu_processes"].status == "warn"
    assert "python train.py" in checks["gpu_processes"].detail
    assert "kill 777" in checks["gpu_processes"].fix and "90001" not in checks["gpu_processes"].fix
    assert checks["gpu[0].memory"].status == "warn"
    assert checks["pcie"].status == "warn" and "x8 of x16" in checks["pcie"].detail


def test_ecc_errors_fail_and_geforce_skips() -> None:
    assert by_name(run_checks(facts("1xa100-ecc.yaml")))["ecc"].status == "fail"
    assert by_name(run_checks(facts("4xrtx4090d-pcie.yaml")))["ecc"].status == "skip"


def test_mig_warns() -> None:
    assert by_name(run_checks(facts("1xa100-mig.yaml")))["mig"].status == "warn"


def test_p2p_unsupported_on_consumer_cards() -> None:
    checks = by_name(run_checks(facts("4xrtx4090d-pcie.yaml")))
    assert checks["p2p"].status == "warn" and "GeForce" in checks["p2p"].detail
    assert "--disable-custom-all-reduce" in checks["p2p"].fix
    assert checks["topology"].status == "warn"  # SYS pairs


def test_iommu_without_passthrough_warns_on_pcie_p2p() -> None:
    f = facts("4xrtx4090d-pcie.yaml", iommu_enabled=True, iommu_passthrough=False)
    assert "iommu=pt" in by_name(run_checks(f))["p2p"].fix


def test_nvlink_machine_topology_matrix() -> None:
    f = facts("8xh100-nvlink.yaml")
    assert f.nvml is not None
    m = topology_matrix(f.nvml)
    assert m[0][0] == "X" and m[0][7] == "NV18" and len(m) == 8
    checks = by_name(run_checks(f))
    assert checks["p2p"].status == "ok" and checks["nvlink"].status == "ok" and checks["topology"].status == "ok"


def test_nccl_p2p_disable_on_nvlink_warns_but_not_on_pcie() -> None:
    env = {"NCCL_P2P_DISABLE": "1"}
    assert by_name(run_checks(facts("8xh100-nvlink.yaml", env=env)))["nccl_env"].status == "warn"
    assert by_name(run_checks(facts("4xrtx4090d-pcie.yaml", env=env)))["nccl_env"].status == "ok"


def test_loopback_interface_fails_only_multinode() -> None:
    env = {"NCCL_SOCKET_IFNAME": "lo"}
    assert by_name(run_checks(facts("1xh100.yaml", env=env)))["nccl_env"].status == "ok"
    assert by_name(run_checks(facts("1xh100.yaml", env=env), multi_node=True))["nccl_env"].status == "fail"


def test_nccl_debug_tip_and_meanings() -> None:
    c = by_name(run_checks(facts("1xh100.yaml", env={"NCCL_NVLS_ENABLE": "0"})))["nccl_env"]
    assert "NVLink SHARP" in c.detail and "NCCL_DEBUG=INFO" in c.detail


@pytest.mark.parametrize(
    ("shm", "machine", "status"),
    [
        (64 * MiB, "4xrtx4090d-pcie.yaml", "fail"),  # Docker's default with several GPUs
        (64 * MiB, "1xh100.yaml", "warn"),  # one GPU: no NCCL SHM transport
        (512 * MiB, "4xrtx4090d-pcie.yaml", "warn"),
        (16 * GiB, "4xrtx4090d-pcie.yaml", "ok"),
    ],
)
def test_shm_rule(shm: int, machine: str, status: str) -> None:
    assert by_name(run_checks(facts(machine, shm_total_bytes=shm)))["shm"].status == status


def test_shm_needed_rule() -> None:
    assert shm_needed(1) == 0 and shm_needed(2) == 320 * MiB and shm_needed(8) == 1280 * MiB


@pytest.mark.parametrize(
    ("cvd", "status"),
    [
        ("0", "ok"),
        ("", "fail"),
        ("-1", "fail"),
        ("0,7", "fail"),
        ("0,0", "fail"),
        ("GPU-5b1e9c0a", "ok"),
        ("GPU-deadbeef", "fail"),
    ],
)
def test_cuda_visible_devices(cvd: str, status: str) -> None:
    c = by_name(run_checks(facts("1xh100.yaml", env={"CUDA_VISIBLE_DEVICES": cvd})))["cuda_visible_devices"]
    assert c.status == status, c.detail


def test_device_order_matters_only_for_mixed_gpus() -> None:
    f = facts("4xrtx4090d-pcie.yaml", env={"CUDA_VISIBLE_DEVICES": "1,2"})
    assert f.nvml is not None
    assert by_name(run_checks(f))["cuda_visible_devices"].status == "ok"
    f.nvml.gpus[3].name = "NVIDIA GeForce RTX 3090"
    c = by_name(run_checks(f))["cuda_visible_devices"]
    assert c.status == "warn" and c.fix == "export CUDA_DEVICE_ORDER=PCI_BUS_ID"


def test_driver_vs_torch_cuda() -> None:
    assert required_driver("12.8") == "570.26" and required_driver("12.7") == "560.28.03"
    old = facts("2xa100-orphan.yaml", torch_cuda="13.0")  # driver supports CUDA 12.2
    c = by_name(run_checks(old))["driver"]
    assert c.status == "fail" and "580.65.06" in c.fix
    minor = by_name(run_checks(facts("2xa100-orphan.yaml", torch_cuda="12.8")))["driver"]
    assert minor.status == "warn"
    assert by_name(run_checks(facts("1xh100.yaml", torch_cuda="13.0")))["driver"].status == "ok"


def test_infiniband_and_memlock() -> None:
    ib = [IbDevice("mlx5_0", [IbPort(1, "ACTIVE", "400 Gb/sec", "InfiniBand")])]
    checks = by_name(run_checks(facts("8xh100-nvlink.yaml", infiniband=ib, memlock_soft=64 * 1024)))
    assert checks["infiniband"].status == "ok" and "mlx5_0" in checks["infiniband"].detail
    assert checks["memlock"].status == "warn" and "memlock=-1" in checks["memlock"].fix
    down = [IbDevice("mlx5_0", [IbPort(1, "DOWN")])]
    multi = by_name(run_checks(facts("8xh100-nvlink.yaml", infiniband=down), multi_node=True))
    assert multi["infiniband"].status == "fail"
    ib_off = by_name(run_checks(facts("8xh100-nvlink.yaml", infiniband=ib, env={"NCCL_IB_DISABLE": "1"})))
    assert ib_off["nccl_env"].status == "warn"


def profile(
    tp: int = 1,
    *,
    gpus: list[str] | None = None,
    util: float = 0.92,
    model: str = "Qwen/Qwen2.5-7B-Instruct",
    est: int = 0,
) -> Profile:
    return Profile(
        model=ModelSection(id=model),
        placement=PlacementSection(tensor_parallel_size=tp, gpus=gpus or []),
        engine={"gpu_memory_utilization": util},  # type: ignore[arg-type]
        estimate=EstimateSection(per_gpu=[GpuEstimate(total_bytes=est)]),
    )


def test_profile_checks_pass_on_a_fitting_machine() -> None:
    f = facts("8xh100-nvlink.yaml")
    f.system.ports_free = {8000: True}
    checks = by_name(run_checks(f, profile(4, est=70 * GiB)))
    for name in ("profile.gpus", "profile.memory", "profile.tp_heads", "profile.shm", "profile.port"):
        assert checks[name].status == "ok", checks[name]


def test_profile_memory_held_by_orphans_fails() -> None:
    c = by_name(run_checks(facts("2xa100-orphan.yaml"), profile(2)))["profile.memory"]
    assert c.status == "fail" and "gpu_memory_utilization 0.92" in c.detail


def test_profile_bad_tp_missing_gpus_busy_port_small_shm() -> None:
    f = facts("8xh100-nvlink.yaml", shm_total_bytes=64 * MiB)
    f.system.ports_free = {8000: False}
    checks = by_name(run_checks(f, profile(8, gpus=["0", "9"])))
    assert checks["profile.tp_heads"].status == "fail" and "28" in checks["profile.tp_heads"].detail
    assert checks["profile.gpus"].status == "fail" and "GPU 9 is not here" in checks["profile.gpus"].detail
    assert checks["profile.port"].status == "fail"
    assert checks["profile.shm"].status == "fail"


def test_profile_unknown_model_skips_heads() -> None:
    c = by_name(run_checks(facts("1xh100.yaml"), profile(model="/models/my-finetune")))["profile.tp_heads"]
    assert c.status == "skip"


def test_machine_facts_round_trip() -> None:
    f = facts("2xa100-orphan.yaml", infiniband=[IbDevice("mlx5_0", [IbPort(1, "ACTIVE")])], ports_free={8000: True})
    again = MachineFacts.from_dict(f.to_dict())
    assert again == f
    assert [c.to_dict() for c in run_checks(again)] == [c.to_dict() for c in run_checks(f)]


def test_profile_shm_counts_only_this_nodes_ranks_of_a_multi_node_profile() -> None:
    """TP=8 × PP=2 over 2 nodes: 8 ranks use this node's /dev/shm (1.25 GiB), not 16 (2.5 GiB)."""
    two_nodes = Profile(
        model=ModelSection(id="Qwen/Qwen2.5-72B-Instruct"),
        placement=PlacementSection(
            tensor_parallel_size=8, pipeline_parallel_size=2, nodes=2, distributed_executor_backend="ray"
        ),
        cluster=ClusterSection(socket_ifname="eth0", gpus_per_node=8),
    )
    checks = by_name(run_checks(facts("8xh100-nvlink.yaml", shm_total_bytes=2 * GiB), two_nodes))
    assert checks["profile.shm"].status == "ok" and checks["shm"].status == "ok"
    assert "8 rank(s) on this node" in checks["profile.shm"].detail
    small = by_name(run_checks(facts("8xh100-nvlink.yaml", shm_total_bytes=1 * GiB), two_nodes))["profile.shm"]
    assert small.status == "fail" and "8 rank(s) on this node" in small.detail
    one_node = by_name(run_checks(facts("8xh100-nvlink.yaml", shm_total_bytes=2 * GiB), profile(8)))["profile.shm"]
    assert one_node.status == "ok" and "enough for 8 rank(s) (TP×PP=8)" in one_node.detail


def test_profile_tp_check_applies_every_planner_rule_not_just_heads() -> None:
    # TP 7 divides Qwen2.5-7B's 28 attention heads but not its 4 KV heads: vLLM fails to build the model.
    c = by_name(run_checks(facts("8xh100-nvlink.yaml"), profile(7)))["profile.tp_heads"]
    assert c.status == "fail" and "KV heads" in c.detail and "1, 2, 4" in c.fix
