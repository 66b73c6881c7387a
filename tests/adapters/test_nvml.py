"""The NVML adapter against the fake NVML backend, in every machine state the fixtures describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.fake_nvml import FakeNvml

from qwendeploy.adapters import nvml
from qwendeploy.core.units import MiB
from qwendeploy.errors import BadInput, ProbeError

MACHINES = Path(__file__).parent.parent / "fixtures" / "machines"
ALL = sorted(p.name for p in MACHINES.glob("*.yaml") if p.name != "no-driver.yaml")


def probe(name: str) -> nvml.NvmlReport:
    fake = FakeNvml.load(MACHINES / name)
    return nvml.probe(fake, processes=fake.process_lookup)


def test_lent_h100_cuda_total_is_nvml_total_minus_reserved() -> None:
    report = probe("1xh100.yaml")
    assert report.driver_version == "580.159.04"
    assert report.cuda_driver_version == "13.0"
    g = report.gpus[0]
    assert g.memory_total == 81559 * MiB and g.memory_reserved == 480 * MiB
    machine = report.to_machine()
    gpu = machine.gpus[0]
    assert gpu.total_bytes == 85017493504  # torch.cuda.mem_get_info()[1] measured on that card
    assert gpu.nvml_total_bytes == 81559 * MiB
    assert gpu.free_bytes == gpu.total_bytes
    assert gpu.compute_capability == (9, 0)
    assert machine.source == "nvml" and not machine.simulated
    # a single card: NVLink queries answered NotSupported and became "no links", not an error
    assert g.nvlinks == [] and g.unavailable["nvlink"] == "NotSupported"


def test_without_reserve_report_falls_back_to_catalog_or_size_rule() -> None:
    report = probe("1xvgpu-notsupported.yaml")
    g = report.gpus[0]
    assert g.memory_reserved is None and g.unavailable["memory_reserved"] == "FunctionNotFound"
    # 40 GiB board unknown to the catalog: 650 MiB fallback reserve
    assert report.to_machine().gpus[0].total_bytes == (40960 - 650) * MiB


@pytest.mark.parametrize("name", ALL)
def test_every_machine_probes_and_round_trips(name: str) -> None:
    report = probe(name)
    d = json.loads(json.dumps(report.to_dict()))
    assert nvml.NvmlReport.from_dict(d) == report
    fake = FakeNvml.from_report_dict(d)
    again = nvml.probe(fake, processes=fake.process_lookup)
    assert again.to_dict() == report.to_dict()
    assert len(report.to_machine().gpus) == len(report.gpus)


def test_notsupported_everywhere_never_crashes() -> None:
    report = probe("1xvgpu-notsupported.yaml")
    assert report.driver_version is None and report.cuda_driver_version is None
    g = report.gpus[0]
    assert g.name == "GRID A100D-40C"
    assert g.uuid is None and g.compute_capability is None and g.ecc_enabled is None and g.pcie_width_current is None
    assert g.processes == [] and g.unavailable["processes_compute"] == "NoPermission"
    pair = report.pairs[0]
    assert pair.topology is None and pair.p2p is None and pair.label == "?"
    machine = report.to_machine()
    assert machine.gpus[0].compute_capability == (0, 0)


def test_every_query_raising_is_survived() -> None:
    desc = {
        "driver_version": "550.1",
        "cuda_driver_version": "12.4",
        "gpu_count": 2,
        "gpu_template": {"name": "NVIDIA L40S", "memory_total_mib": 46068, "memory_reserved_mib": 613},
        "pair_defaults": {"topology": "PHB"},
    }
    fake = FakeNvml(desc)
    fake.fail = {
        name: "Unknown"
        for name in dir(fake)
        if name.startswith("nvmlDevice") and name not in ("nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex")
    }
    report = nvml.probe(fake, processes=fake.process_lookup)
    assert [g.name for g in report.gpus] == ["GPU 0", "GPU 1"]
    assert report.gpus[0].unavailable["memory"] == "Unknown"


def test_p2p_index_tuple_would_fail_but_probe_uses_ints() -> None:
    fake = FakeNvml.load(MACHINES / "4xrtx4090d-pcie.yaml")
    with pytest.raises(TypeError):
        fake.nvmlInit()
        h = fake.nvmlDeviceGetHandleByIndex(0)
        fake.nvmlDeviceGetP2PStatus(h, h, (0,))  # pynvml.NVML_P2P_CAPS_INDEX_READ is (0,)
    report = probe("4xrtx4090d-pcie.yaml")
    assert all(p.p2p_read == "CHIPSET_NOT_SUPPORTED" and p.p2p is False for p in report.pairs)


def test_nvswitch_machine_is_nvlink_everywhere() -> None:
    report = probe("8xh100-nvlink.yaml")
    assert all(p.nvlinks == 18 and p.label == "NV18" for p in report.pairs)
    machine = report.to_machine()
    assert machine.interconnect == "nvlink"
    assert all(link.kind == "nvlink" and link.p2p for link in machine.links)
    assert machine.gpus[0].catalog_id == "h100-80gb-sxm"


def test_direct_nvlink_pair_counts_links() -> None:
    report = probe("2xa100-orphan.yaml")
    assert report.pair(0, 1) is not None and report.pair(1, 0).label == "NV12"  # type: ignore[union-attr]


def test_pcie_machine_links_and_subset() -> None:
    report = probe("4xrtx4090d-pcie.yaml")
    machine = report.to_machine("0,1")
    assert [g.index for g in machine.gpus] == [0, 1]
    assert machine.interconnect == "pcie"
    assert machine.links[0].kind == "pcie" and machine.links[0].p2p is False
    sys_link = report.to_machine("0,2").links[0]
    assert sys_link.kind == "sys"


@pytest.mark.parametrize("selection", ["0,9", "a,b", "0,0"])
def test_bad_selection_is_bad_input(selection: str) -> None:
    with pytest.raises(BadInput):
        probe("4xrtx4090d-pcie.yaml").to_machine(selection)


def test_orphaned_vllm_processes_are_recognised() -> None:
    report = probe("2xa100-orphan.yaml")
    procs = [p for g in report.gpus for p in g.processes]
    assert [(p.pid, p.vllm_role, p.orphan) for p in procs] == [(4242, "engine_core", True), (4243, "worker", True)]
    machine = report.to_machine()
    assert machine.gpus[0].free_bytes < 10 * 1024 * MiB
    assert machine.gpus[0].processes[0].name == "VLLM::EngineCore"


def test_other_process_and_other_container() -> None:
    report = probe("1xa10g-other-process.yaml")
    p777, p_other = report.gpus[0].processes
    assert p777.visible and p777.vllm_role is None and not p777.orphan and "train.py" in p777.cmdline
    assert not p_other.visible and p_other.name == ""  # PID of another PID namespace


def test_mig_and_ecc_fields() -> None:
    mig = probe("1xa100-mig.yaml")
    assert mig.gpus[0].mig_mode is True and len(mig.gpus[0].mig_devices) == 2
    assert any("MIG" in n for n in mig.to_machine().notes)
    ecc = probe("1xa100-ecc.yaml").gpus[0]
    assert ecc.ecc_volatile_uncorrected == 2 and ecc.remapped_rows_pending and ecc.remapped_rows_failure is True
    assert ecc.retired_pages_dbe is None and ecc.unavailable["retired_pages"] == "NotSupported"


def test_page_retirement_on_a_volta_card() -> None:
    """Before Ampere, NVML retires pages (a V100 answers the retired-pages queries, and has no row remapper)."""
    desc = {
        "driver_version": "535.183.01",
        "cuda_driver_version": "12.2",
        "gpus": [
            {
                "index": 0,
                "name": "Tesla V100-SXM2-32GB",
                "memory_total_mib": 32768,
                "memory_reserved_mib": 400,
                "compute_capability": [7, 0],
                "ecc_enabled": True,
                "ecc_volatile_uncorrected": 0,
                "retired_pages_sbe": 2,
                "retired_pages_dbe": 1,
                "retired_pages_pending": True,
                "unavailable": {"remapped_rows": "NotSupported", "mig_mode": "NotSupported"},
            }
        ],
    }
    fake = FakeNvml(desc)
    g = nvml.probe(fake, processes=fake.process_lookup).gpus[0]
    assert (g.retired_pages_sbe, g.retired_pages_dbe, g.retired_pages_pending) == (2, 1, True)
    assert g.remapped_rows_correctable is None and g.unavailable["remapped_rows"] == "NotSupported"
    assert g.compute_capability == (7, 0) and g.mig_mode is None


def test_unversioned_process_query_on_an_older_driver_falls_back_to_v2() -> None:
    fake = FakeNvml.load(MACHINES / "1xa10g-other-process.yaml")
    fake.fail = {"nvmlDeviceGetComputeRunningProcesses": "LibraryMismatch"}
    g = nvml.probe(fake, processes=fake.process_lookup).gpus[0]
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in fake.calls
    assert [p.pid for p in g.processes] == [p.pid for p in probe("1xa10g-other-process.yaml").gpus[0].processes]
    assert "processes_compute" not in g.unavailable
    fake.fail["nvmlDeviceGetComputeRunningProcesses_v2"] = "FunctionNotFound"
    g = nvml.probe(fake, processes=fake.process_lookup).gpus[0]
    assert g.unavailable["processes_compute"] == "FunctionNotFound"


@pytest.mark.parametrize(
    ("error", "text"),
    [("LibraryNotFound", "libnvidia-ml"), ("DriverNotLoaded", "driver is not loaded"), ("NoPermission", "refused")],
)
def test_no_driver_is_probe_error_with_hint(error: str, text: str) -> None:
    fake = FakeNvml({"fail_init": error, "gpus": []})
    with pytest.raises(ProbeError) as info:
        nvml.probe(fake)
    assert text in info.value.message
    assert "--gpus 4xRTX4090D" in (info.value.hint or "")


def test_no_gpu_machine_refuses_to_plan() -> None:
    with pytest.raises(ProbeError):
        nvml.probe_machine("auto", FakeNvml({"driver_version": "550.1", "gpus": []}))


def test_real_pynvml_here_has_no_library() -> None:
    """This machine has no NVIDIA driver: the real backend must end in ProbeError, not a crash."""
    pytest.importorskip("pynvml")
    try:
        report = nvml.probe()
    except ProbeError as e:
        assert e.hint
    else:  # on a GPU machine the probe simply works
        assert report.gpus


def test_vllm_role_names() -> None:
    assert nvml.vllm_role("VLLM::EngineCor", "VLLM::EngineCore") == "engine_core"
    assert nvml.vllm_role("python3", "VLLM::Worker_TP0") == "worker"
    assert nvml.vllm_role("ray::RayWorkerWrapper", "") == "ray_worker"
    assert nvml.vllm_role("vllm", "/usr/bin/python3 /usr/bin/vllm serve Qwen/Qwen2.5-7B") == "api_server"
    assert nvml.vllm_role("python", "python train.py") is None


def test_engine_under_vllm_pid1_is_not_an_orphan() -> None:
    """`docker run ... vllm serve` makes the API server PID 1: its EngineCore has ppid 1 and is not orphaned."""
    info = nvml.ProcessInfo(
        name="VLLM::EngineCor",
        cmdline="VLLM::EngineCore",
        ppid=1,
        parent_name="vllm",
        parent_cmdline="/usr/bin/python3 /usr/local/bin/vllm serve Qwen/Qwen2.5-7B",
        holds_gpu=True,
    )
    p = nvml.describe_process(10, 1 << 30, "compute", lambda pid: info)
    assert p.vllm_role == "engine_core" and not p.orphan


def test_psutil_lookup_sees_this_process() -> None:
    import os

    info = nvml.psutil_lookup(os.getpid())
    assert info is not None and info.ppid == os.getppid()
    assert info.holds_gpu is False  # no /dev/nvidia* open here
    assert nvml.psutil_lookup(2**22 + 12345) is None


def test_psutil_lookup_collapses_a_padded_process_title() -> None:
    """vLLM's setproctitle leaves "VLLM::EngineCore" padded with spaces to the old argv's length (real H100 doctor
    output: 'PID 1635 VLLM::EngineCore          ...'); a real process with such an argv reads as one short line."""
    import dataclasses
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "VLLM::EngineCore" + " " * 60, "", "x\ny"]
    )
    try:
        info = None
        for _ in range(50):  # until the exec'd interpreter shows its own argv
            info = nvml.psutil_lookup(child.pid)
            if info is not None and "VLLM::EngineCore" in info.cmdline:
                break
            time.sleep(0.05)
        assert info is not None
        assert info.cmdline.endswith("VLLM::EngineCore x y")
        assert "  " not in info.cmdline and "\n" not in info.cmdline
        # as NVML would list it on a GPU (no /dev/nvidia* here): still recognised as vLLM's engine core
        held = dataclasses.replace(info, holds_gpu=True)
        p = nvml.describe_process(child.pid, 1 << 30, "compute", lambda pid: held)
        assert p.vllm_role == "engine_core" and p.cmdline == info.cmdline
    finally:
        child.kill()
        child.wait()
