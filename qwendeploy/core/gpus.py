"""The GPU catalog (``qwendeploy/data/gpus.yaml``), name matching, and simulated inventories (``4xRTX4090D``)."""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

from qwendeploy.core import catalog_cache, safe_yaml
from qwendeploy.core.hardware import Gpu, Link, Machine
from qwendeploy.core.units import MiB
from qwendeploy.errors import BadInput, UnknownGpu

if TYPE_CHECKING:
    from qwendeploy.core.gpu_entries import GpuCatalogFile, GpuEntry


@dataclass(frozen=True)
class GpuType:
    """One NVIDIA card model."""

    id: str
    """Catalog id (``rtx-4090d``, ``h100-80gb-sxm``)."""
    name: str
    """Display name."""
    nvml_name: str
    """Exactly what NVML / nvidia-smi print."""
    aliases: tuple[str, ...]
    memory_type: str
    nvml_total_bytes: int
    """nvidia-smi ``memory.total`` on a current driver, ECC at the board's default."""
    total_bytes: int
    """CUDA runtime total (NVML total − driver reserve): what vLLM multiplies by --gpu-memory-utilization."""
    bandwidth_gbps: float
    """Peak memory bandwidth, GB/s."""
    tensor_tflops: float | None
    """Dense 16-bit tensor-core peak, TFLOPS (FP32 accumulate), from the datasheet."""
    compute_capability: tuple[int, int]
    bf16: bool
    fp8: bool
    """FP8 tensor cores (compute capability ≥ 8.9)."""
    interconnect: Literal["nvlink", "pcie"]
    """How two cards of this kind in one node are usually connected."""
    nvlink_gbps: float | None
    """Total NVLink bandwidth per GPU (both directions), GB/s; None for PCIe cards."""
    pcie_gen: int
    p2p: bool
    """Whether CUDA peer-to-peer works between two such cards (GeForce: no)."""
    nvlink_links: int = 0
    confidence: str = ""
    """``total=high`` etc.: how well the memory total is backed by public logs."""


def _norm(name: str) -> str:
    s = name.strip().lower()
    # "NVIDIA GeForce RTX 4090 D" and "rtx-4090d" are the same card; "80GB" and "80G" the same size.
    s = re.sub(r"^nvidia[\s_-]*", "", s)
    s = re.sub(r"^(geforce|tesla|quadro)[\s_-]*", "", s)
    s = re.sub(r"[\s_\-]+", "", s)
    return re.sub(r"(\d)gb", r"\1g", s)


def parse_gpu_catalog(text: str) -> GpuCatalogFile:
    """Validate catalog YAML text.

    Raises:
        ValueError: not a valid catalog; the message names the entry and field (pydantic's own wording).
    """
    from pydantic import ValidationError

    from qwendeploy.core.gpu_entries import GpuCatalogFile

    try:
        return GpuCatalogFile.model_validate(safe_yaml.load(text))
    except ValidationError as e:
        raise ValueError(f"gpus.yaml is not a valid GPU catalog: {e}") from None


@dataclass(frozen=True)
class GpuCatalog:
    """The catalog as the lookups use it: plain values (what :mod:`qwendeploy.core.catalog_cache` remembers)."""

    gpus: tuple[GpuType, ...]
    """Every card, in file order."""
    ambiguous: tuple[tuple[str, tuple[str, ...]], ...]
    """A name that could mean several cards → their ids."""


def build_gpu_catalog(text: str) -> GpuCatalog:
    """gpus.yaml text → the validated catalog as plain values.

    Raises:
        ValueError: not a valid catalog (see :func:`parse_gpu_catalog`).
    """
    doc = parse_gpu_catalog(text)
    return GpuCatalog(gpus=tuple(_card(e) for e in doc.gpus), ambiguous=tuple(doc.ambiguous.items()))


def _card(entry: GpuEntry) -> GpuType:
    """A validated entry as the value the lookups use."""
    cc_major, cc_minor = (int(x) for x in entry.compute_capability.split("."))
    return GpuType(
        id=entry.id,
        name=entry.name,
        nvml_name=entry.nvml_name,
        aliases=entry.aliases,
        memory_type=entry.memory_type,
        nvml_total_bytes=entry.nvml_total_mib * MiB,
        total_bytes=entry.total_bytes,
        bandwidth_gbps=entry.bandwidth_gbps,
        tensor_tflops=entry.tensor_tflops,
        compute_capability=(cc_major, cc_minor),
        bf16=entry.bf16,
        fp8=entry.fp8,
        interconnect=entry.interconnect,
        nvlink_gbps=entry.nvlink_gbps,
        pcie_gen=entry.pcie_gen,
        p2p=entry.p2p,
        nvlink_links=entry.nvlink_links,
        confidence=", ".join(f"{k}={v}" for k, v in entry.confidence.items()),
    )


@functools.cache
def _catalog() -> GpuCatalog:
    text = resources.files("qwendeploy").joinpath("data/gpus.yaml").read_text(encoding="utf-8")
    return catalog_cache.load("gpus", text, build_gpu_catalog, GpuCatalog)


def gpu_catalog() -> tuple[GpuType, ...]:
    """Every card in the catalog, in file order (loaded once)."""
    return _catalog().gpus


@functools.cache
def _names() -> tuple[dict[str, GpuType], dict[str, tuple[str, ...]]]:
    index: dict[str, GpuType] = {}
    for g in gpu_catalog():
        for n in (g.id, g.name, g.nvml_name, *g.aliases):
            index.setdefault(_norm(n), g)
    ambiguous = {_norm(k): v for k, v in _catalog().ambiguous}  # ids checked by GpuCatalogFile
    return index, ambiguous


def _display_names() -> list[str]:
    return [g.aliases[0] if g.aliases else g.id for g in gpu_catalog()]


def find_gpu(name: str) -> GpuType:
    """The catalog card called ``name``, tolerant of case, spaces, '-', '_' and a leading ``NVIDIA``.

    Args:
        name: ``RTX4090D``, ``4090D``, ``H100-80GB``, ``A100-40GB``, ``L40S``, ``NVIDIA H100 80GB HBM3`` …

    Returns:
        The card.

    Raises:
        UnknownGpu: the name is unknown (close matches listed) or could mean cards of different memory sizes.
    """
    index, ambiguous = _names()
    key = _norm(name)
    if key in ambiguous:
        by_id = {g.id: g for g in gpu_catalog()}
        options = ", ".join(by_id[i].aliases[0] if by_id[i].aliases else i for i in ambiguous[key])
        raise UnknownGpu(
            f"GPU name {name!r} is ambiguous: it could be {options}.",
            hint="Name the memory size and form factor, e.g. 8xA100-80GB or 4xA100-40GB.",
        )
    if key in index:
        return index[key]
    # "RTX4090-24GB": drop a trailing memory size if the rest names a card of that size.
    for digits in (2, 3):
        sized = re.fullmatch(rf"(.+?)(\d{{{digits}}})g", key)
        if sized and sized.group(1) in index:
            gpu, size = index[sized.group(1)], int(sized.group(2))
            if abs(gpu.nvml_total_bytes / (1 << 30) - size) <= 0.1 * size:
                return gpu
    close = difflib.get_close_matches(key, list(index), n=8, cutoff=0.6)
    names: list[str] = []
    for c in close:
        g = index[c]
        label = g.aliases[0] if g.aliases else g.id
        if label not in names:
            names.append(label)
    tip = f" Did you mean {', '.join(names[:4])}?" if names else ""
    raise UnknownGpu(
        f"Unknown GPU {name!r}.{tip}",
        hint="Known GPUs: " + ", ".join(_display_names()) + ".",
    )


def match_nvml(nvml_name: str, nvml_total_bytes: int | None = None) -> GpuType | None:
    """The catalog card a real GPU is, from NVML's name (and total, to pick between same-named boards).

    Returns None for a card the catalog does not know; the caller then uses NVML's own figures.
    """
    exact = [g for g in gpu_catalog() if g.nvml_name.lower() == nvml_name.strip().lower()]
    if not exact:
        index, ambiguous = _names()
        key = _norm(nvml_name)
        if key in index and key not in ambiguous:
            exact = [index[key]]
    if not exact:
        return None
    if nvml_total_bytes is None or len(exact) == 1:
        return exact[0]
    return min(exact, key=lambda g: abs(g.nvml_total_bytes - nvml_total_bytes))


_INVENTORY_RE = re.compile(r"^\s*(?:(\d+)\s*[x×*]\s*)?([A-Za-z0-9][A-Za-z0-9 _\-.]*?)\s*$", re.IGNORECASE)

_EXAMPLE = "4xRTX4090D, 8xH100-80GB, 1xL4 or 2xA100-40GB"


def parse_inventory(text: str, nodes: int = 1) -> Machine:
    """A simulated machine from ``NxNAME`` (``4xRTX4090D``, ``8x H100-80GB``), repeated over ``nodes`` nodes.

    Args:
        text: the ``--gpus`` value.
        nodes: identical nodes (``--nodes``); GPUs are indexed 0..N×nodes−1, node by node.

    Returns:
        A ``Machine`` with ``simulated=True``, free memory equal to the CUDA total, and a link for every pair
        of GPUs within a node (NVLink or PCIe as the card is usually built, with its peer-to-peer support).

    Raises:
        BadInput: the text is not ``NxNAME`` or the counts are out of range (the message gives an example).
        UnknownGpu: the name is not in the catalog.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise BadInput(f"--nodes must be a positive integer, got {nodes!r}.")
    m = _INVENTORY_RE.match(text or "")
    if not m or re.fullmatch(r"\d+\s*[x×*]", m.group(2), re.IGNORECASE):
        raise BadInput(
            f"Cannot read the GPU inventory {text!r}: expected COUNTxNAME.",
            hint=f"For example {_EXAMPLE}; or --gpus auto to use the GPUs of this machine.",
        )
    count = int(m.group(1)) if m.group(1) else 1
    if count < 1 or count > 64:
        raise BadInput(
            f"GPU count in {text!r} must be between 1 and 64 per node, got {count}.",
            hint=f"For example {_EXAMPLE}; use --nodes for more than one node.",
        )
    gpu_type = find_gpu(m.group(2))
    gpus: list[Gpu] = []
    links: list[Link] = []
    kind: Literal["nvlink", "pcie"] = gpu_type.interconnect
    for node in range(nodes):
        base = node * count
        for i in range(count):
            gpus.append(
                Gpu(
                    index=base + i,
                    name=gpu_type.nvml_name,
                    total_bytes=gpu_type.total_bytes,
                    free_bytes=gpu_type.total_bytes,
                    compute_capability=gpu_type.compute_capability,
                    nvml_total_bytes=gpu_type.nvml_total_bytes,
                    memory_bandwidth_gbps=gpu_type.bandwidth_gbps,
                    tensor_tflops=gpu_type.tensor_tflops,
                    bf16=gpu_type.bf16,
                    fp8=gpu_type.fp8,
                    node=node,
                    catalog_id=gpu_type.id,
                )
            )
        for a in range(count):
            for b in range(a + 1, count):
                links.append(
                    Link(
                        a=base + a,
                        b=base + b,
                        kind=kind,
                        nvlinks=gpu_type.nvlink_links if kind == "nvlink" else 0,
                        p2p=gpu_type.p2p,
                    )
                )
    notes: list[str] = []
    if kind == "pcie" and not gpu_type.p2p:
        notes.append(f"{gpu_type.name}: no CUDA peer-to-peer between cards; all-reduce goes through host memory.")
    if nodes > 1:
        notes.append(f"{nodes} nodes of {count}; GPUs of different nodes talk over the network.")
    return Machine(
        gpus=tuple(gpus),
        links=tuple(links),
        interconnect=kind,
        simulated=True,
        nodes=nodes,
        source=text.strip(),
        notes=tuple(notes),
    )
