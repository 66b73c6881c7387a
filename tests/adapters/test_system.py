"""Host facts read from a temporary root instead of the real /sys, /proc and /dev/shm."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from qwendeploy.adapters import system


def test_shm_reads_statvfs_of_the_given_path(tmp_path: Path) -> None:
    total, free = system.shm(tmp_path)
    st = os.statvfs(tmp_path)
    assert total == st.f_blocks * st.f_frsize and free is not None and 0 <= free <= total
    assert system.shm(tmp_path / "missing") == (None, None)


def test_container_markers(tmp_path: Path) -> None:
    assert system.container(tmp_path)[0] is None  # nothing readable: unknown, not "no"
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/cgroup").write_text("0::/init.scope\n")
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n")
    assert system.container(tmp_path) == (False, None, None)
    (tmp_path / "proc/1/cgroup").write_text("0::/kubepods/besteffort/pod123/abc\n")
    assert system.container(tmp_path)[:2] == (True, "kubernetes")
    (tmp_path / ".dockerenv").write_text("")
    assert system.container(tmp_path) == (True, "docker", "/.dockerenv exists")


def test_relevant_env_filters() -> None:
    env = {
        "NCCL_P2P_DISABLE": "1",
        "GLOO_SOCKET_IFNAME": "eth0",
        "HOME": "/root",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "VLLM_LOGGING_LEVEL": "DEBUG",
        "HF_TOKEN": "secret",
    }
    got = system.relevant_env(env)
    assert got == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "GLOO_SOCKET_IFNAME": "eth0",
        "NCCL_P2P_DISABLE": "1",
        "VLLM_LOGGING_LEVEL": "DEBUG",
    }


def test_infiniband_devices_and_ports(tmp_path: Path) -> None:
    root = tmp_path / "sys/class/infiniband"
    assert system.infiniband(root) is None
    port = root / "mlx5_0/ports/1"
    port.mkdir(parents=True)
    (port / "state").write_text("4: ACTIVE\n")
    (port / "rate").write_text("400 Gb/sec (4X NDR)\n")
    (port / "link_layer").write_text("InfiniBand\n")
    (root / "mlx5_1/ports/1").mkdir(parents=True)
    (root / "mlx5_1/ports/1/state").write_text("1: DOWN\n")
    devs = system.infiniband(root)
    assert devs is not None and [d.name for d in devs] == ["mlx5_0", "mlx5_1"]
    assert devs[0].ports[0].state == "ACTIVE" and devs[0].ports[0].link_layer == "InfiniBand"
    assert devs[1].ports[0].state == "DOWN"


def test_net_plugin_found_on_ld_library_path(tmp_path: Path) -> None:
    (tmp_path / "libnccl-net-aws-ofi.so").write_text("")
    found = system.nccl_net_plugin({"LD_LIBRARY_PATH": f"{tmp_path}:/nonexistent"}, lib_dirs=[])
    assert found == [str(tmp_path / "libnccl-net-aws-ofi.so")]


def test_memlock_and_versions() -> None:
    soft, hard = system.memlock()
    assert soft is not None and hard is not None and (soft == -1 or soft >= 0)
    v = system.versions(["nvidia-ml-py", "surely-not-installed-dist"])
    assert v["nvidia-ml-py"] and v["surely-not-installed-dist"] is None


def test_torch_cuda_from_version_text() -> None:
    text = "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\nhip = None\n"
    assert system.torch_cuda_version(text) == "13.0"
    assert system.torch_cuda_version("cuda = '12.8'\n") == "12.8"


def test_iommu(tmp_path: Path) -> None:
    (tmp_path / "iommu/dmar0").mkdir(parents=True)
    (tmp_path / "cmdline").write_text("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt quiet\n")
    assert system.iommu(tmp_path / "iommu", tmp_path / "cmdline") == (True, True)
    (tmp_path / "cmdline").write_text("BOOT_IMAGE=/vmlinuz intel_iommu=on\n")
    assert system.iommu(tmp_path / "iommu", tmp_path / "cmdline") == (True, False)


def test_port_free_sees_a_listening_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert system.port_free(port) is False
    assert system.port_free(port) is True


def test_collect_never_raises_on_an_empty_root(tmp_path: Path) -> None:
    facts = system.collect(shm_path=tmp_path / "nope", env={"NCCL_DEBUG": "INFO"}, root=tmp_path, ports=[0])
    assert facts.shm_total_bytes is None and facts.infiniband is None
    assert facts.env == {"NCCL_DEBUG": "INFO"}
    assert facts.to_dict()["versions"]["nvidia-ml-py"]
