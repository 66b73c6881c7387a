"""Values that describe a machine's GPUs. Built by the NVML adapter or from a simulated inventory; never probes.

Memory figures follow what vLLM budgets from: ``total_bytes`` is the CUDA runtime's total
(``torch.cuda.mem_get_info()[1]``), which is NVML's total minus the driver's reserve. NVML's own figure is
kept in ``nvml_total_bytes`` for display.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from qwendeploy.core.units import GiB

BUSY_BYTES = 1 * GiB
"""Memory held on a GPU beyond which other processes count as holding it: `doctor` warns, `plan` names them."""

LinkKind = Literal["nvlink", "pcie", "sys", "self"]
"""How two GPUs reach each other: NVLink, a PCIe switch/bridge (PIX/PXB/PHB), across CPU sockets (SYS)."""


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU, as NVML reports it."""

    pid: int
    used_bytes: int | None
    name: str = ""
    """Command line or process name where known (``VLLM::EngineCore`` marks a vLLM engine)."""
    ppid: int | None = None


@dataclass(frozen=True)
class Gpu:
    """One GPU as the planner sees it."""

    index: int
    """NVML index (PCI bus order); CUDA uses the same order with CUDA_DEVICE_ORDER=PCI_BUS_ID."""
    name: str
    total_bytes: int
    """CUDA runtime total (what vLLM multiplies by --gpu-memory-utilization)."""
    free_bytes: int
    """Free now; for a simulated GPU equal to total_bytes."""
    compute_capability: tuple[int, int]
    uuid: str | None = None
    nvml_total_bytes: int | None = None
    memory_bandwidth_gbps: float | None = None
    """Peak memory bandwidth in GB/s (decode speed is bound by it)."""
    tensor_tflops: float | None = None
    """Dense 16-bit tensor-core peak in TFLOPS (a batch's matrix products are bound by it)."""
    bf16: bool = True
    fp8: bool = False
    pci_bus_id: str | None = None
    node: int = 0
    """Which node of a multi-node inventory the GPU belongs to."""
    catalog_id: str | None = None
    """GPU catalog entry this card matched (e.g. ``rtx-4090d``)."""
    processes: tuple[GpuProcess, ...] = ()
    mig_instances: tuple[int, ...] = ()
    """With MIG enabled: the memory of each MIG instance (CUDA then sees those, not the card)."""

    @property
    def used_bytes(self) -> int:
        return max(0, self.total_bytes - self.free_bytes)

    @property
    def busy(self) -> bool:
        """Other processes hold more than BUSY_BYTES of it (never true of a simulated GPU: all free)."""
        return self.used_bytes > BUSY_BYTES

    def emptied(self) -> Gpu:
        """The same card with nothing else on it (for "what would fit if it were free")."""
        return replace(self, free_bytes=self.total_bytes, processes=())


@dataclass(frozen=True)
class Link:
    """The path between two GPUs (a < b)."""

    a: int
    b: int
    kind: LinkKind
    nvlinks: int = 0
    """Active NVLink links between the pair."""
    p2p: bool | None = None
    """Whether CUDA peer-to-peer works between the pair (None: unknown)."""


@dataclass(frozen=True)
class Machine:
    """The GPUs available to a plan, on one or more identical nodes."""

    gpus: tuple[Gpu, ...]
    links: tuple[Link, ...] = ()
    interconnect: Literal["nvlink", "pcie"] = "pcie"
    """Best path between GPUs of one node: NVLink if every pair has it, else PCIe."""
    simulated: bool = False
    nodes: int = 1
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    source: str = ""
    """How it was obtained: ``nvml`` or the simulated inventory string (``4xRTX4090D``)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def gpus_per_node(self) -> int:
        return len(self.gpus) // max(1, self.nodes)

    def link(self, a: int, b: int) -> Link | None:
        lo, hi = min(a, b), max(a, b)
        for link in self.links:
            if link.a == lo and link.b == hi:
                return link
        return None

    def fingerprint(self) -> str:
        """Stable id of the hardware a profile was planned for: card names, totals, count, interconnect."""
        parts = [f"{g.node}:{g.name}:{g.total_bytes}" for g in self.gpus]
        parts.append(f"nodes={self.nodes}:ic={self.interconnect}")
        return "sha256:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def is_geforce(gpu: Gpu) -> bool:
    """A GeForce card (its driver disables CUDA peer-to-peer over PCIe), by NVML's name."""
    name = gpu.name.upper()
    return "GEFORCE" in name or re.search(r"RTX\s*[345]0\d\d", name) is not None
