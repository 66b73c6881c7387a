"""The fake NVML against what real NVML answered on an H100 and an H200 (tests/fixtures/gpu-runs/).

``nvml_raw.json`` is benchmarks/gpu/nvml_dump.py on the card: every pynvml query with its value or the NVML error
class, recorded without qwendeploy. ``facts.json`` is ``qwendeploy doctor --dump-facts`` on the same H100. The
fake must answer each query as the real card did (values and error classes), and probing it must give exactly
what the real probe gave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.fake_nvml import FakeNvml, report_dict_from_raw_dump

from qwendeploy.adapters import nvml
from qwendeploy.core.units import MiB

FIXTURES = Path(__file__).parent.parent / "fixtures"
MACHINES = FIXTURES / "machines"
H100 = FIXTURES / "gpu-runs" / "h100-nvml"
H200_RAW = FIXTURES / "gpu-runs" / "h200-vllm0.26" / "nvml_raw_h200.json"
# The dump did not ask for the corrected-ECC counters; the H100's probe on the same driver answered 0.
ASSUMED = {0: {"ecc_volatile_corrected": 0, "ecc_aggregate_corrected": 0}}


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


RAW = {"1xh100-real.yaml": _json(H100 / "nvml_raw.json"), "1xh200-real.yaml": _json(H200_RAW)}


def _probe(fake: FakeNvml) -> nvml.NvmlReport:
    return nvml.probe(fake, processes=fake.process_lookup)


def test_h100_fixture_is_the_real_dump_facts() -> None:
    assert yaml.safe_load((MACHINES / "1xh100-real.yaml").read_text()) == _json(H100 / "facts.json")["nvml"]


def test_probe_through_the_fake_gives_the_real_h100_report() -> None:
    real = _json(H100 / "facts.json")["nvml"]
    assert _probe(FakeNvml.load(MACHINES / "1xh100-real.yaml")).to_dict() == real
    assert _probe(FakeNvml.from_report_dict(real)).to_dict() == real


def test_raw_h100_answers_read_independently_give_the_same_report() -> None:
    """The raw dump, mapped field by field without the adapter, probes to what the adapter read on the card."""
    desc = report_dict_from_raw_dump(RAW["1xh100-real.yaml"], ASSUMED)
    assert _probe(FakeNvml(desc)).to_dict() == _json(H100 / "facts.json")["nvml"]


def test_h200_fixture_is_built_from_its_raw_dump() -> None:
    rebuilt = report_dict_from_raw_dump(RAW["1xh200-real.yaml"], ASSUMED)
    assert yaml.safe_load((MACHINES / "1xh200-real.yaml").read_text()) == rebuilt


@pytest.mark.parametrize(
    ("machine", "reserve"),
    [("1xh100-real.yaml", 480 * MiB), ("1xh200-real.yaml", 615 * MiB + 64 * 1024)],  # not always whole MiB
    ids=["h100", "h200"],
)
def test_cuda_total_is_what_torch_measured(machine: str, reserve: int) -> None:
    raw = RAW[machine]
    report = _probe(FakeNvml.load(MACHINES / machine))
    g = report.gpus[0]
    assert g.memory_total == raw["gpus"][0]["memory"]["total"]
    assert g.memory_reserved == reserve and g.memory_used == 0
    gpu = report.to_machine().gpus[0]
    assert gpu.total_bytes == raw["torch"]["total_memory"][0]  # what vLLM budgets from
    assert gpu.free_bytes == gpu.total_bytes == raw["torch"]["mem_get_info"][1]
    assert gpu.nvml_total_bytes == g.memory_total and gpu.compute_capability == (9, 0)
    assert report.to_machine().notes == ()  # the driver told the reserve: no catalog stand-in


@pytest.mark.parametrize("machine", ["1xh100-real.yaml", "1xh200-real.yaml"], ids=["h100", "h200"])
def test_without_memory_v2_the_catalog_stands_in_close_to_the_real_total(machine: str) -> None:
    """An older driver has no v2 memory answer: the catalog's CUDA total for this card replaces it."""
    raw = RAW[machine]
    desc = yaml.safe_load((MACHINES / machine).read_text())
    g = desc["gpus"][0]
    g["memory_reserved"] = None
    g["unavailable"]["memory_reserved"] = "FunctionNotFound"
    report = _probe(FakeNvml.from_report_dict(desc))
    machine_view = report.to_machine()
    assert abs(machine_view.gpus[0].total_bytes - raw["torch"]["total_memory"][0]) <= 1 * MiB
    assert any("memory reserve" in n for n in machine_view.notes)


# ---------------------------------------------------------------- query by query: the fake answers as the card did

_QUERIES: list[tuple[str, str, tuple[Any, ...], Any]] = [
    # raw key, pynvml function, extra args, how to read the fake's answer
    ("name", "nvmlDeviceGetName", (), None),
    ("uuid", "nvmlDeviceGetUUID", (), None),
    ("cc", "nvmlDeviceGetCudaComputeCapability", (), list),
    ("mig_mode", "nvmlDeviceGetMigMode", (), list),
    ("ecc_mode", "nvmlDeviceGetEccMode", (), list),
    ("ecc_volatile_uncorrected", "nvmlDeviceGetTotalEccErrors", (1, 0), None),
    ("ecc_aggregate_uncorrected", "nvmlDeviceGetTotalEccErrors", (1, 1), None),
    ("retired_pages_dbe", "nvmlDeviceGetRetiredPages", (1,), None),
    ("retired_pending", "nvmlDeviceGetRetiredPagesPendingStatus", (), None),
    ("remapped_rows", "nvmlDeviceGetRemappedRows", (), list),
    ("pcie_gen", "nvmlDeviceGetCurrPcieLinkGeneration", (), None),
    ("pcie_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration", (), None),
    ("pcie_width", "nvmlDeviceGetCurrPcieLinkWidth", (), None),
    ("pcie_width_max", "nvmlDeviceGetMaxPcieLinkWidth", (), None),
    ("compute_procs", "nvmlDeviceGetComputeRunningProcesses", (), list),
    ("graphics_procs", "nvmlDeviceGetGraphicsRunningProcesses", (), list),
]


def _ask(fake: FakeNvml, fn: str, *args: Any) -> Any:
    try:
        return getattr(fake, fn)(*args)
    except fake.NVMLError as e:
        return {"error": type(e).__name__, "message": str(e)}


@pytest.mark.parametrize("machine", ["1xh100-real.yaml", "1xh200-real.yaml"], ids=["h100", "h200"])
def test_fake_answers_every_query_as_the_real_card(machine: str) -> None:
    raw = RAW[machine]
    r = raw["gpus"][0]
    fake = FakeNvml.load(MACHINES / machine)
    fake.nvmlInit()
    h = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetCount() == raw["count"]
    assert fake.nvmlSystemGetDriverVersion() == raw["driver"]
    assert fake.nvmlSystemGetNVMLVersion() == raw["nvml_version"]
    assert fake.nvmlSystemGetCudaDriverVersion() == raw["cuda_driver"]
    for key, fn, args, shape in _QUERIES:
        got = _ask(fake, fn, h, *args)
        if shape is not None and not isinstance(got, dict):
            got = shape(got)
        assert got == r[key], f"{fn}: fake {got!r}, real {r[key]!r}"
    pci = fake.nvmlDeviceGetPciInfo(h)
    assert (pci.busId, pci.busIdLegacy) == (r["pci"]["busId"], r["pci"]["busIdLegacy"])  # str, as pynvml returns
    mem = fake.nvmlDeviceGetMemoryInfo(h)  # v1: "used" holds the driver's reserve on an idle card
    assert (mem.total, mem.free, mem.used) == (r["memory"]["total"], r["memory"]["free"], r["memory"]["used"])
    v2 = fake.nvmlDeviceGetMemoryInfo(h, version=fake.nvmlMemory_v2)
    assert v2.reserved == r["memory"]["used"] and v2.used == 0 and v2.free == r["memory"]["free"]
    # NVLink on a lone SXM card in a VM, and the topology of a GPU with itself: the same error class and message
    assert _ask(fake, "nvmlDeviceGetNvLinkState", h, 0) == r["nvlink"][0]["state"]
    assert _ask(fake, "nvmlDeviceGetTopologyCommonAncestor", h, h) == r["topology_self"]
    assert r["p2p"] == {}  # one GPU: no pair was asked about, and the adapter asks about none
    fake.nvmlShutdown()
