"""GPU catalog, name matching and simulated inventories."""

from __future__ import annotations

import pytest

from qwendeploy.core.gpus import find_gpu, gpu_catalog, match_nvml, parse_inventory
from qwendeploy.core.units import GiB, MiB
from qwendeploy.errors import BadInput, UnknownGpu

REQUIRED = [
    "T4", "V100-16GB", "V100-32GB", "V100-PCIE-16GB", "V100-PCIE-32GB", "A10", "A10G", "L4", "L40", "L40S",
    "A100-40GB", "A100-80GB", "A100-PCIE-40GB", "A100-80GB-PCIe", "H100-PCIe", "H100-80GB", "H100-NVL", "H200",
    "H20", "RTX3090", "RTX4090", "RTX4090D", "RTX5090", "RTX-A6000", "RTX-6000-Ada", "B200",
]  # fmt: skip


@pytest.mark.parametrize("name", REQUIRED)
def test_required_cards_are_known(name: str) -> None:
    gpu = find_gpu(name)
    # CUDA total = NVML total - a driver reserve of 0.3-3%.
    assert 0.96 * gpu.nvml_total_bytes <= gpu.total_bytes < gpu.nvml_total_bytes
    assert gpu.bandwidth_gbps > 0 and gpu.pcie_gen in (3, 4, 5)
    assert gpu.fp8 == (gpu.compute_capability >= (8, 9))
    assert gpu.bf16 == (gpu.compute_capability >= (8, 0))
    assert (gpu.nvlink_gbps is not None) == (gpu.interconnect == "nvlink")


def test_catalog_ids_unique() -> None:
    ids = [g.id for g in gpu_catalog()]
    assert len(ids) == len(set(ids))
    assert len({g.nvml_name for g in gpu_catalog()}) == len(ids)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RTX4090D", "rtx-4090d"),
        ("4090D", "rtx-4090d"),
        ("rtx 4090 d", "rtx-4090d"),
        ("NVIDIA GeForce RTX 4090 D", "rtx-4090d"),
        ("rtx_4090", "rtx-4090"),
        ("H100-80GB", "h100-80gb-sxm"),
        ("h100_80g", "h100-80gb-sxm"),
        ("H100", "h100-80gb-sxm"),
        ("A100-40GB", "a100-40gb-sxm4"),
        ("a100-80gb", "a100-80gb-sxm4"),
        ("L40S", "l40s"),
        ("l40s-48gb", "l40s"),
        ("RTX4090-24GB", "rtx-4090"),
        ("Tesla T4", "t4"),
    ],
)
def test_find_gpu_is_tolerant(name: str, expected: str) -> None:
    assert find_gpu(name).id == expected


def test_ambiguous_name_lists_candidates() -> None:
    with pytest.raises(UnknownGpu) as info:
        find_gpu("A100")
    assert "ambiguous" in info.value.message
    assert "A100-40GB" in info.value.message and "A100-80GB" in info.value.message


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownGpu) as info:
        find_gpu("RTX4080D")
    assert "RTX4090D" in info.value.message
    assert info.value.hint is not None and "L40S" in info.value.hint


def test_wrong_memory_size_is_not_silently_accepted() -> None:
    with pytest.raises(UnknownGpu):
        find_gpu("RTX4090-48GB")


def test_memory_figures_follow_the_reference() -> None:
    h100 = find_gpu("H100-80GB")
    assert h100.nvml_total_bytes == 81559 * MiB
    assert h100.total_bytes == 85_017_493_504  # measured: 81559 - 480 MiB reserved
    d = find_gpu("4090D")
    assert d.nvml_total_bytes == 24564 * MiB
    assert round(d.total_bytes / GiB, 2) == 23.64
    assert not d.p2p and d.interconnect == "pcie"


def test_match_nvml() -> None:
    gpu = match_nvml("NVIDIA H100 80GB HBM3", 81559 * MiB)
    assert gpu is not None and gpu.id == "h100-80gb-sxm"
    tesla = match_nvml("Tesla T4")
    assert tesla is not None and tesla.id == "t4"
    assert match_nvml("NVIDIA GeForce GTX 1080") is None


@pytest.mark.parametrize(
    ("text", "count", "card", "interconnect", "p2p"),
    [
        ("4xRTX4090D", 4, "rtx-4090d", "pcie", False),
        ("4x RTX 4090D", 4, "rtx-4090d", "pcie", False),
        ("8xH100-80GB", 8, "h100-80gb-sxm", "nvlink", True),
        ("1xL4", 1, "l4", "pcie", True),
        ("2xA100-40GB", 2, "a100-40gb-sxm4", "nvlink", True),
        ("4xL40S", 4, "l40s", "pcie", True),
        ("2X4090", 2, "rtx-4090", "pcie", False),
    ],
)
def test_parse_inventory(text: str, count: int, card: str, interconnect: str, p2p: bool) -> None:
    machine = parse_inventory(text)
    assert machine.simulated and machine.source == text.strip() and machine.nodes == 1
    assert len(machine.gpus) == count
    assert [g.index for g in machine.gpus] == list(range(count))
    assert all(g.catalog_id == card and g.free_bytes == g.total_bytes for g in machine.gpus)
    assert machine.interconnect == interconnect
    assert len(machine.links) == count * (count - 1) // 2
    assert all(link.kind == interconnect and link.p2p is p2p for link in machine.links)


def test_nvlink_links_carry_a_link_count() -> None:
    machine = parse_inventory("8xH100-80GB")
    link = machine.link(0, 7)
    assert link is not None and link.nvlinks == 18


def test_multi_node_inventory() -> None:
    machine = parse_inventory("8xH100-80GB", nodes=2)
    assert len(machine.gpus) == 16 and machine.nodes == 2 and machine.gpus_per_node == 8
    assert [g.node for g in machine.gpus] == [0] * 8 + [1] * 8
    assert machine.link(7, 8) is None  # no link across nodes
    assert machine.link(8, 15) is not None
    assert len(machine.links) == 2 * 28
    assert parse_inventory("8xH100-80GB", nodes=2).fingerprint() != parse_inventory("8xH100-80GB").fingerprint()


@pytest.mark.parametrize("text", ["", "4x", "4xRTX4090D,2xL4", "0xL4", "100xL4", "  "])
def test_bad_inventory_is_bad_input_with_an_example(text: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_inventory(text)
    assert "4xRTX4090D" in (info.value.message + (info.value.hint or ""))


def test_unknown_card_in_inventory() -> None:
    with pytest.raises(UnknownGpu, match="Unknown GPU 'H10'"):
        parse_inventory("4xH10")


def test_nodes_must_be_positive() -> None:
    with pytest.raises(BadInput, match="--nodes"):
        parse_inventory("1xL4", nodes=0)


def test_catalog_errors_name_the_entry_and_field() -> None:
    import pytest as _pytest

    from qwendeploy.core.gpus import parse_gpu_catalog

    text = resources_text()
    with _pytest.raises(ValueError, match=r"gpus\.0\.p2p"):
        parse_gpu_catalog(text.replace("    p2p: true", "    p2p: maybe", 1))
    with _pytest.raises(ValueError, match=r"ambiguous names unknown ids \['a100-99gb'\]"):
        parse_gpu_catalog(text.replace("A100: [a100-40gb-sxm4,", "A100: [a100-99gb,", 1))
    with _pytest.raises(ValueError, match=r"gpus\.0\.colour"):
        parse_gpu_catalog(text.replace("  - id: t4\n", "  - id: t4\n    colour: green\n", 1))


def resources_text() -> str:
    from importlib import resources

    return resources.files("qwendeploy").joinpath("data/gpus.yaml").read_text(encoding="utf-8")


def test_the_catalog_schema_is_built_on_first_read_not_at_import() -> None:
    """Importing core.gpus builds no pydantic model of gpus.yaml (nor imports YAML); the first lookup does."""
    import subprocess
    import sys

    code = (
        "import sys; import qwendeploy.core.gpus as g\n"
        "names = ('qwendeploy.core.gpu_entries', 'yaml')\n"
        "before = [n in sys.modules for n in names]\n"
        "g.find_gpu('L40S')\n"
        "print(*before, *[n in sys.modules for n in names])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.split() == ["False", "False", "True", "True"]
