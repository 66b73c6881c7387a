"""What doctor and the planner know about a machine, as plain values: NVML's answers and the system's facts.

The NVML adapter (``qwendeploy.adapters.nvml``) fills :class:`NvmlReport`; the system adapter
(``qwendeploy.adapters.system``) fills :class:`SystemFacts`; :mod:`qwendeploy.core.machine_checks` judges them.
Everything here is serialisable (``to_dict`` / ``from_dict``) so a real machine's answers can become a test
fixture for the fake NVML backend.

``None`` in any field means "NVML (or the OS) did not answer" — NotSupported on consumer cards and vGPUs,
NoPermission in containers — never "zero".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from qwendeploy.core.hardware import Gpu, GpuProcess, Link, LinkKind, Machine
from qwendeploy.core.units import MiB
from qwendeploy.errors import BadInput, ProbeError

NO_NVML_HINT = "To plan for hardware you don't have here, pass --gpus 4xRTX4090D (any NxNAME from the GPU catalog)."

# When the driver cannot tell the reserve (nvmlDeviceGetMemoryInfo_v2 missing): shared/reference/gpus.yaml
# fallback_reserve_mib — ≈450 MiB on cards under 40 GB, ≈650 MiB from 40 GB up.
FALLBACK_RESERVE_MIB_SMALL = 450
FALLBACK_RESERVE_MIB_LARGE = 650
FALLBACK_RESERVE_THRESHOLD_BYTES = 40 * 10**9

# ---------------------------------------------------------------- report values (serialisable)


@dataclass
class ProcessInfo:
    """What the OS says about a PID (psutil), as far as this PID namespace can see it."""

    name: str = ""
    cmdline: str = ""
    ppid: int | None = None
    parent_name: str = ""
    parent_cmdline: str = ""
    username: str | None = None
    holds_gpu: bool | None = None
    """Whether the process has /dev/nvidia* open (None: not readable). False means a PID collision: the NVML
    process lives in another PID namespace (another container) and this one only shares its number."""


@dataclass
class NvmlProcess:
    pid: int
    used_bytes: int | None
    kind: str = "compute"
    """compute or graphics."""
    name: str = ""
    cmdline: str = ""
    ppid: int | None = None
    username: str | None = None
    visible: bool = False
    """Found in this PID namespace (psutil) and really holding the GPU."""
    vllm_role: str | None = None
    """engine_core, worker, ray_worker, api_server or None."""
    orphan: bool = False
    """A vLLM process whose parent is gone (adopted by PID 1 or a subreaper)."""


@dataclass
class NvLinkState:
    link: int
    active: bool
    remote_bus_id: str | None = None
    remote_type: str | None = None
    """gpu, switch, ibmnpu or unknown."""


@dataclass
class MigDevice:
    index: int
    uuid: str | None = None
    memory_total: int | None = None


@dataclass
class NvmlGpu:
    index: int
    name: str
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total: int | None = None
    """NVML's total (physical size, what nvidia-smi prints as memory.total)."""
    memory_reserved: int | None = None
    """Driver reserve (nvmlDeviceGetMemoryInfo_v2); None on drivers that do not report it."""
    memory_used: int | None = None
    """v2: memory processes hold (0 on an idle card); without v2: NVML v1's "used", which includes the reserve."""
    memory_free: int | None = None
    compute_capability: tuple[int, int] | None = None
    mig_mode: bool | None = None
    mig_pending: bool | None = None
    """The MIG mode after the next GPU reset (NVML's pending *mode*, not "a change is pending")."""
    mig_devices: list[MigDevice] = field(default_factory=list)
    ecc_enabled: bool | None = None
    ecc_pending: bool | None = None
    """The ECC mode after the next reboot (NVML's pending *mode*: True on a healthy card with ECC on)."""
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    nvlinks: list[NvLinkState] = field(default_factory=list)
    processes: list[NvmlProcess] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Field → why NVML gave no answer (NotSupported, NoPermission, FunctionNotFound, …)."""

    @property
    def active_nvlinks(self) -> int:
        return sum(1 for link in self.nvlinks if link.active)


@dataclass
class NvmlPair:
    a: int
    b: int
    topology: str | None = None
    """Common ancestor as `nvidia-smi topo -m` labels it: PIX, PXB, PHB, NODE, SYS (SELF for one board)."""
    nvlinks: int = 0
    """Active NVLink links between the pair (through an NVSwitch: the smaller side's link count)."""
    p2p_read: str | None = None
    p2p_write: str | None = None
    p2p_nvlink: str | None = None

    @property
    def label(self) -> str:
        """`nvidia-smi topo -m` cell: NV# when NVLink joins the pair, else the PCIe ancestor."""
        if self.nvlinks:
            return f"NV{self.nvlinks}"
        return self.topology or "?"

    @property
    def p2p(self) -> bool | None:
        if self.p2p_read is None and self.p2p_write is None:
            return None
        return self.p2p_read == "OK" and self.p2p_write == "OK"


@dataclass
class NvmlReport:
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    """CUDA version the driver supports, "13.0"."""
    nvml_version: str | None = None
    gpus: list[NvmlGpu] = field(default_factory=list)
    pairs: list[NvmlPair] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def pair(self, a: int, b: int) -> NvmlPair | None:
        lo, hi = min(a, b), max(a, b)
        return next((p for p in self.pairs if p.a == lo and p.b == hi), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-safe); ``from_dict`` and ``FakeNvml.from_report_dict`` read it back."""
        d = dataclasses.asdict(self)
        for g in d["gpus"]:
            if g["compute_capability"] is not None:
                g["compute_capability"] = list(g["compute_capability"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NvmlReport:
        gpus = []
        for g in d.get("gpus", []):
            g = dict(g)
            cc = g.get("compute_capability")
            g["compute_capability"] = tuple(cc) if cc is not None else None
            g["nvlinks"] = [NvLinkState(**x) for x in g.get("nvlinks", [])]
            g["processes"] = [NvmlProcess(**x) for x in g.get("processes", [])]
            g["mig_devices"] = [MigDevice(**x) for x in g.get("mig_devices", [])]
            gpus.append(NvmlGpu(**g))
        return cls(
            driver_version=d.get("driver_version"),
            cuda_driver_version=d.get("cuda_driver_version"),
            nvml_version=d.get("nvml_version"),
            gpus=gpus,
            pairs=[NvmlPair(**p) for p in d.get("pairs", [])],
            unavailable=dict(d.get("unavailable", {})),
        )

    # ------------------------------------------------------------ planner view

    def select(self, selection: str = "auto") -> list[NvmlGpu]:
        """The GPUs ``selection`` names: ``auto`` (all) or NVML indices like ``0,2,3``."""
        sel = selection.strip().lower()
        if sel in ("", "auto", "all"):
            return list(self.gpus)
        by_index = {g.index: g for g in self.gpus}
        chosen: list[NvmlGpu] = []
        for part in sel.split(","):
            part = part.strip()
            if not part.isdigit():
                raise BadInput(
                    f"--gpus {selection!r}: {part!r} is not a GPU index.",
                    hint="Use auto, indices like 0,2,3, or a simulated inventory like 4xRTX4090D.",
                )
            idx = int(part)
            if idx not in by_index:
                have = ", ".join(str(i) for i in sorted(by_index)) or "none"
                raise BadInput(f"--gpus {selection!r}: there is no GPU {idx} here (NVML sees: {have}).")
            if by_index[idx] in chosen:
                raise BadInput(f"--gpus {selection!r}: GPU {idx} is named twice.")
            chosen.append(by_index[idx])
        return chosen

    def to_machine(self, selection: str = "auto") -> Machine:
        """The planner's view of the selected GPUs (CUDA-runtime totals, free memory, links).

        Raises:
            BadInput: ``selection`` names a GPU that is not here.
            ProbeError: NVML sees no GPU.
        """
        if not self.gpus:
            raise ProbeError("NVML answered but sees no GPU.", hint=NO_NVML_HINT)
        chosen = self.select(selection)
        gpus = tuple(_to_gpu(g) for g in chosen)
        notes: list[str] = []
        links: list[Link] = []
        for i, a in enumerate(chosen):
            for b in chosen[i + 1 :]:
                p = self.pair(a.index, b.index)
                if p is None:
                    continue
                links.append(Link(a=p.a, b=p.b, kind=_link_kind(p), nvlinks=p.nvlinks, p2p=p.p2p))
        for g in chosen:
            if g.mig_mode:
                notes.append(
                    f"GPU {g.index} has MIG enabled: CUDA sees its {len(g.mig_devices)} MIG instance(s), not the card."
                )
            if g.memory_reserved is None and g.memory_total is not None:
                notes.append(f"GPU {g.index}: the driver does not report its memory reserve; a catalog value is used.")
        all_nvlink = len(chosen) > 1 and bool(links) and all(lk.kind == "nvlink" for lk in links)
        interconnect: Literal["nvlink", "pcie"] = "nvlink" if all_nvlink else "pcie"
        return Machine(
            gpus=gpus,
            links=tuple(links),
            interconnect=interconnect,
            simulated=False,
            nodes=1,
            driver_version=self.driver_version,
            cuda_driver_version=self.cuda_driver_version,
            source="nvml",
            notes=tuple(notes),
        )


def _link_kind(p: NvmlPair) -> LinkKind:
    if p.nvlinks or p.p2p_nvlink == "OK":
        return "nvlink"
    if p.topology == "SYS":
        return "sys"
    return "pcie"


def _catalog_match(name: str, nvml_total: int) -> Any | None:
    """The GPU catalog entry for this card, if the catalog module is there and knows it."""
    try:
        from qwendeploy.core import gpus as catalog
    except ImportError:
        return None
    match = getattr(catalog, "match_nvml", None)
    if match is None:
        return None
    try:
        return match(name, nvml_total)
    except Exception:  # a catalog lookup must never break probing
        return None


def _attr(obj: Any, *names: str) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return None


def cuda_total_bytes(g: NvmlGpu, entry: Any | None = None) -> int:
    """The total the CUDA runtime reports (what vLLM budgets from): NVML total − the driver's reserve.

    The reserve comes from NVML when the driver reports it, else from the catalog entry's torch total when the
    catalog knows this card with the same NVML total, else the size-based fallback.
    """
    total = g.memory_total or 0
    if g.memory_reserved is not None:
        return max(0, total - g.memory_reserved)
    if entry is not None:
        cat_nvml = _attr(entry, "nvml_total_bytes")
        cat_cuda = _attr(entry, "total_bytes")
        if cat_nvml is not None and cat_cuda is not None and int(cat_nvml) == total:
            return int(cat_cuda)
    reserve = FALLBACK_RESERVE_MIB_LARGE if total >= FALLBACK_RESERVE_THRESHOLD_BYTES else FALLBACK_RESERVE_MIB_SMALL
    return max(0, total - reserve * MiB)


def _to_gpu(g: NvmlGpu) -> Gpu:
    entry = _catalog_match(g.name, g.memory_total or 0)
    total = cuda_total_bytes(g, entry)
    free = min(g.memory_free if g.memory_free is not None else total, total)
    cc = g.compute_capability or (0, 0)
    bf16 = _attr(entry, "bf16") if entry is not None else None
    fp8 = _attr(entry, "fp8") if entry is not None else None
    return Gpu(
        index=g.index,
        name=g.name,
        total_bytes=total,
        free_bytes=free,
        compute_capability=cc,
        uuid=g.uuid,
        nvml_total_bytes=g.memory_total,
        memory_bandwidth_gbps=_attr(entry, "memory_bandwidth_gbps", "bandwidth_gbps") if entry is not None else None,
        tensor_tflops=_attr(entry, "tensor_tflops") if entry is not None else None,
        bf16=bool(bf16) if bf16 is not None else cc >= (8, 0),
        fp8=bool(fp8) if fp8 is not None else cc >= (8, 9),
        pci_bus_id=g.pci_bus_id,
        catalog_id=_attr(entry, "id", "catalog_id") if entry is not None else None,
        processes=tuple(
            GpuProcess(pid=p.pid, used_bytes=p.used_bytes, name=p.cmdline or p.name, ppid=p.ppid) for p in g.processes
        ),
        mig_instances=tuple(m.memory_total or 0 for m in g.mig_devices) if g.mig_mode else (),
    )


# ---------------------------------------------------------------- system facts (non-NVML)


@dataclass
class IbPort:
    port: int
    state: str | None = None
    """ACTIVE, DOWN, INIT … (from ``/sys/class/infiniband/<dev>/ports/<n>/state``)."""
    rate: str | None = None
    link_layer: str | None = None
    """InfiniBand or Ethernet (RoCE)."""


@dataclass
class IbDevice:
    name: str
    ports: list[IbPort] = field(default_factory=list)


@dataclass
class SystemFacts:
    """Best-effort facts about the host; every field may be None when it could not be read."""

    shm_path: str = "/dev/shm"
    shm_total_bytes: int | None = None
    shm_free_bytes: int | None = None
    in_container: bool | None = None
    container_kind: str | None = None
    """docker, podman, kubernetes, containerd, lxc … (what gave it away is in ``container_evidence``)."""
    container_evidence: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    """The variables doctor judges: NCCL_*, GLOO_*, CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER, VLLM_*, TORCH_NCCL_*."""
    infiniband: list[IbDevice] | None = None
    """None: /sys/class/infiniband does not exist (no RDMA stack); []: it exists but is empty."""
    nccl_net_plugin: str | None = None
    """NCCL_NET_PLUGIN as set."""
    nccl_net_plugin_libs: list[str] = field(default_factory=list)
    """libnccl-net*.so found on LD_LIBRARY_PATH (and the usual library directories)."""
    memlock_soft: int | None = None
    """RLIMIT_MEMLOCK soft limit in bytes; -1 is unlimited."""
    memlock_hard: int | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    """Distribution → version (None: not installed): vllm, torch, nvidia-nccl-cu12, nvidia-nccl-cu13, …"""
    torch_cuda: str | None = None
    """CUDA version torch was built for ("12.8"), read from torch/version.py without importing torch."""
    torch_available: bool = False
    iommu_enabled: bool | None = None
    """An IOMMU is active (/sys/class/iommu is not empty) — with ACS it can block PCIe peer-to-peer."""
    iommu_passthrough: bool | None = None
    """iommu=pt on the kernel command line (DMA not translated, P2P unaffected)."""
    ports_free: dict[int, bool] = field(default_factory=dict)
    """TCP port → free on 127.0.0.1 (only the ports a profile uses are checked)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SystemFacts:
        d = dict(d)
        ib = d.get("infiniband")
        if ib is not None:
            d["infiniband"] = [IbDevice(name=x["name"], ports=[IbPort(**p) for p in x.get("ports", [])]) for x in ib]
        d["ports_free"] = {int(k): bool(v) for k, v in (d.get("ports_free") or {}).items()}
        return cls(**d)


@dataclass
class MachineFacts:
    """Everything doctor's machine checks look at."""

    nvml: NvmlReport | None = None
    """None when NVML could not be used (no driver, no library); ``nvml_error`` says why."""
    nvml_error: str | None = None
    nvml_hint: str | None = None
    system: SystemFacts = field(default_factory=SystemFacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nvml": self.nvml.to_dict() if self.nvml is not None else None,
            "nvml_error": self.nvml_error,
            "nvml_hint": self.nvml_hint,
            "system": self.system.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineFacts:
        nv = d.get("nvml")
        return cls(
            nvml=NvmlReport.from_dict(nv) if nv is not None else None,
            nvml_error=d.get("nvml_error"),
            nvml_hint=d.get("nvml_hint"),
            system=SystemFacts.from_dict(d.get("system") or {}),
        )
