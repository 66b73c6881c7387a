"""NVML adapter: ask the driver about every GPU, the links between them and the processes holding memory.

``probe(backend)`` gathers an :class:`NvmlReport` — plain, serialisable data (``to_dict`` / ``from_dict``) — and
``NvmlReport.to_machine()`` turns it into the planner's :class:`~qwendeploy.core.hardware.Machine`.

``backend`` is the ``pynvml`` module (nvidia-ml-py) by default, imported only here. Tests pass a fake module object
with the same function names, constants and exception classes (``tests/fakes/fake_nvml.py``).

What real NVML does that a naive caller trips over, and how this module copes (checked against a real H100 and
H200 on driver 580.159.04: tests/fixtures/gpu-runs/, docs/doctor.md "Real NVML on H100/H200"):

* Any query may raise ``NVMLError_NotSupported`` (consumer cards, vGPU, MIG instances), ``NoPermission``
  (containers) or ``FunctionNotFound`` (an older driver than the bindings). Every query goes through ``_ask``: the
  field becomes ``None`` and the reason is kept in ``NvmlGpu.unavailable`` — never a crash.
* NVML's memory total is the physical size; the CUDA runtime (and so vLLM, which multiplies it by
  ``--gpu-memory-utilization``) sees that minus the driver's reserve (480 MiB on the H100, 615 MiB on the H200).
  ``nvmlDeviceGetMemoryInfo(h, version=nvmlMemory_v2)`` reports the reserve apart (its ``used`` is 0 on an idle
  card); the v1 answer counts the reserve in ``used``. Older drivers have no v2, and then a catalog value or a
  size-based fallback stands in.
* Hopper and Ampere data-centre cards answer NotSupported to the retired-pages queries (they remap rows instead,
  ``nvmlDeviceGetRemappedRows`` answers); ECC and MIG modes come as ``[current, pending]``.
* The unversioned process queries of nvidia-ml-py call the driver's ``_v3`` symbol and raise
  ``NVMLLibraryMismatchError`` — not an NVMLError — on a driver without it; the ``_v2`` query is then asked.
* ``pynvml.NVML_P2P_CAPS_INDEX_READ`` is the tuple ``(0,)`` in nvidia-ml-py (a stray comma), so the P2P capability
  indices are spelled out here as plain integers.
* NVLink queries on a card without NVLink (PCIe cards) answer NotSupported for every link — and so does an SXM
  H100/H200 passed alone into a VM; links past the card's count answer InvalidArgument. Both mean "no link".
  The topology query of a GPU with itself answers NotSupported too; it is never asked.
* With MIG enabled the whole card's memory is not what CUDA sees: CUDA sees MIG instances.
* Process ids are the host's. Inside a container a process of another container is not in our PID namespace:
  psutil cannot find it (or finds an unrelated process with the same number), so it is reported as "not visible
  here" and never offered for ``kill``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from qwendeploy.core.checks.processes import is_orphan, vllm_role
from qwendeploy.core.hardware import Machine
from qwendeploy.core.machine_facts import (
    NO_NVML_HINT,
    MigDevice,
    NvLinkState,
    NvmlGpu,
    NvmlPair,
    NvmlProcess,
    NvmlReport,
    ProcessInfo,
    cuda_total_bytes,
)
from qwendeploy.errors import ProbeError

__all__ = [
    "NO_NVML_HINT",
    "MigDevice",
    "NvLinkState",
    "NvmlGpu",
    "NvmlPair",
    "NvmlProcess",
    "NvmlReport",
    "ProcessInfo",
    "cuda_total_bytes",
    "describe_process",
    "probe",
    "probe_machine",
    "psutil_lookup",
]

# nvidia-ml-py spells NVML_P2P_CAPS_INDEX_READ as the tuple (0,); these are the C enum values.
P2P_READ, P2P_WRITE, P2P_NVLINK = 0, 1, 2
P2P_STATUS_NAMES = {
    0: "OK",
    1: "CHIPSET_NOT_SUPPORTED",
    2: "GPU_NOT_SUPPORTED",
    3: "IOH_TOPOLOGY_NOT_SUPPORTED",
    4: "DISABLED_BY_REGKEY",
    5: "NOT_SUPPORTED",
    6: "UNKNOWN",
}
# nvmlGpuTopologyLevel_t → the labels `nvidia-smi topo -m` prints.
TOPOLOGY_NAMES = {0: "SELF", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
NVLINK_DEVICE_TYPE = {0: "gpu", 1: "ibmnpu", 2: "switch", 255: "unknown"}
MAX_NVLINKS = 18  # Hopper/Blackwell expose 18 per GPU; nvidia-ml-py's NVML_NVLINK_MAX_LINKS (36) is a buffer size


# ---------------------------------------------------------------- processes


ProcessLookup = Callable[[int], "ProcessInfo | None"]


def _one_line(argv: list[str]) -> str:
    """A command line as one line: vLLM's setproctitle titles ("VLLM::EngineCore") come padded with spaces to the
    length of the original argv (seen on a real H100), and an argument may hold newlines."""
    return " ".join(" ".join(argv).split())


def psutil_lookup(pid: int) -> ProcessInfo | None:
    """What this PID namespace knows about ``pid`` (None: no such process here)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            try:
                cmdline = _one_line(proc.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = ""
            ppid = proc.ppid()
            try:
                username: str | None = proc.username()
            except (psutil.AccessDenied, KeyError):
                username = None
        parent_name = parent_cmd = ""
        try:
            parent = psutil.Process(ppid)
            parent_name = parent.name()
            parent_cmd = _one_line(parent.cmdline())
        except (psutil.Error, OSError):
            pass
    except (psutil.Error, OSError):
        return None
    return ProcessInfo(
        name=name,
        cmdline=cmdline,
        ppid=ppid,
        parent_name=parent_name,
        parent_cmdline=parent_cmd,
        username=username,
        holds_gpu=_holds_nvidia_device(pid),
    )


def _holds_nvidia_device(pid: int) -> bool | None:
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith("/dev/nvidia"):
                return True
        except OSError:
            continue
    return False


def describe_process(pid: int, used: int | None, kind: str, lookup: ProcessLookup) -> NvmlProcess:
    info = None
    try:
        info = lookup(pid)
    except Exception:  # a lookup failure only loses the process name
        info = None
    if info is None or info.holds_gpu is False:
        return NvmlProcess(pid=pid, used_bytes=used, kind=kind, visible=False)
    role = vllm_role(info.name, info.cmdline)
    return NvmlProcess(
        pid=pid,
        used_bytes=used,
        kind=kind,
        name=info.name,
        cmdline=info.cmdline,
        ppid=info.ppid,
        username=info.username,
        visible=True,
        vllm_role=role,
        orphan=is_orphan(role, info),
    )


# ---------------------------------------------------------------- probing


class _Asker:
    """Calls NVML and turns every NVMLError into None, recording why."""

    def __init__(self, backend: Any) -> None:
        self.nvml = backend
        self.error_class: type[BaseException] = getattr(backend, "NVMLError", Exception)

    def __call__(self, sink: dict[str, str], key: str, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.nvml, fn_name, None)
        if fn is None:
            sink[key] = "FunctionNotFound (not in these bindings)"
            return None
        try:
            return fn(*args, **kwargs)
        except self.error_class as e:
            sink[key] = _error_name(e)
            return None
        except Exception as e:  # ctypes.ArgumentError, odd bindings: one unanswered field, never a crash
            sink[key] = f"{type(e).__name__}: {e}"
            return None


def _error_name(e: BaseException) -> str:
    name = type(e).__name__
    if name.startswith("NVMLError_"):
        return name[len("NVMLError_") :]
    return f"{name}: {e}"


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return str(v)


def _init_error(backend: Any, e: BaseException) -> ProbeError:
    name = _error_name(e)
    if name in ("LibraryNotFound", "DriverNotLoaded"):
        why = (
            "the NVIDIA driver's NVML library (libnvidia-ml.so.1) was not found"
            if name == "LibraryNotFound"
            else "the NVIDIA driver is not loaded"
        )
        return ProbeError(f"No NVIDIA GPU can be queried here: {why}.", hint=NO_NVML_HINT)
    if name == "NoPermission":
        return ProbeError("NVML refused access (NoPermission).", hint="Check /dev/nvidia* permissions. " + NO_NVML_HINT)
    return ProbeError(f"NVML could not be initialised: {name}.", hint=NO_NVML_HINT)


def probe(backend: Any | None = None, *, processes: ProcessLookup | None = None) -> NvmlReport:
    """Ask NVML about the driver, every GPU, each pair of GPUs and the processes holding memory.

    Args:
        backend: the ``pynvml`` module or a stand-in with the same names; default: ``import pynvml``.
        processes: PID → :class:`ProcessInfo` lookup; default: psutil in this PID namespace.

    Raises:
        ProbeError: no NVML library, no driver, or NVML refused to start (with a hint for --gpus NxNAME).
    """
    if backend is None:
        try:
            import pynvml as backend_module
        except ImportError as e:
            raise ProbeError(
                "The NVML bindings (nvidia-ml-py) are not installed.",
                hint="pip install nvidia-ml-py. " + NO_NVML_HINT,
            ) from e
        backend = backend_module
    lookup = processes or psutil_lookup
    error_class = getattr(backend, "NVMLError", Exception)
    try:
        backend.nvmlInit()
    except error_class as e:
        raise _init_error(backend, e) from None
    except OSError as e:
        raise ProbeError(f"NVML could not be loaded: {e}", hint=NO_NVML_HINT) from None
    try:
        return _gather(backend, lookup)
    finally:
        with contextlib.suppress(Exception):  # shutting down NVML cannot fail the probe
            backend.nvmlShutdown()


def _gather(backend: Any, lookup: ProcessLookup) -> NvmlReport:
    ask = _Asker(backend)
    report = NvmlReport()
    sink = report.unavailable
    report.driver_version = _text(ask(sink, "driver_version", "nvmlSystemGetDriverVersion"))
    report.nvml_version = _text(ask(sink, "nvml_version", "nvmlSystemGetNVMLVersion"))
    cuda = ask(sink, "cuda_driver_version", "nvmlSystemGetCudaDriverVersion")
    if isinstance(cuda, int) and cuda > 0:
        report.cuda_driver_version = f"{cuda // 1000}.{(cuda % 1000) // 10}"
    count = ask(sink, "device_count", "nvmlDeviceGetCount") or 0
    handles: list[Any] = []
    for i in range(int(count)):
        h = ask(sink, f"gpu[{i}]", "nvmlDeviceGetHandleByIndex", i)
        if h is None:
            continue
        handles.append(h)
        report.gpus.append(_gather_gpu(ask, i, h, lookup))
    _gather_pairs(ask, report, handles)
    return report


def _gather_gpu(ask: _Asker, index: int, h: Any, lookup: ProcessLookup) -> NvmlGpu:
    g = NvmlGpu(index=index, name="")
    u = g.unavailable
    g.name = _text(ask(u, "name", "nvmlDeviceGetName", h)) or f"GPU {index}"
    g.uuid = _text(ask(u, "uuid", "nvmlDeviceGetUUID", h))
    pci = ask(u, "pci_bus_id", "nvmlDeviceGetPciInfo", h)
    if pci is not None:
        g.pci_bus_id = _text(getattr(pci, "busId", None) or getattr(pci, "busIdLegacy", None))

    v2 = getattr(ask.nvml, "nvmlMemory_v2", None)
    mem2 = ask(u, "memory_reserved", "nvmlDeviceGetMemoryInfo", h, version=v2) if v2 is not None else None
    mem = mem2 if mem2 is not None else ask(u, "memory", "nvmlDeviceGetMemoryInfo", h)
    if mem is not None:
        g.memory_total = _int(getattr(mem, "total", None))
        g.memory_free = _int(getattr(mem, "free", None))
        g.memory_used = _int(getattr(mem, "used", None))
        if mem2 is not None:
            g.memory_reserved = _int(getattr(mem2, "reserved", None))
    cc = ask(u, "compute_capability", "nvmlDeviceGetCudaComputeCapability", h)
    if cc is not None:
        g.compute_capability = (int(cc[0]), int(cc[1]))

    mig = ask(u, "mig_mode", "nvmlDeviceGetMigMode", h)
    if mig is not None:
        g.mig_mode, g.mig_pending = bool(mig[0]), bool(mig[1])
    if g.mig_mode:
        n = ask(u, "mig_devices", "nvmlDeviceGetMaxMigDeviceCount", h) or 0
        for k in range(int(n)):
            mh = ask({}, "mig", "nvmlDeviceGetMigDeviceHandleByIndex", h, k)
            if mh is None:
                continue
            mmem = ask({}, "mig_memory", "nvmlDeviceGetMemoryInfo", mh)
            g.mig_devices.append(
                MigDevice(
                    index=k,
                    uuid=_text(ask({}, "mig_uuid", "nvmlDeviceGetUUID", mh)),
                    memory_total=_int(getattr(mmem, "total", None)) if mmem is not None else None,
                )
            )

    ecc = ask(u, "ecc_mode", "nvmlDeviceGetEccMode", h)
    if ecc is not None:
        g.ecc_enabled, g.ecc_pending = bool(ecc[0]), bool(ecc[1])
    if g.ecc_enabled:
        # errorType: 0 corrected, 1 uncorrected; counterType: 0 volatile (since boot), 1 aggregate (lifetime)
        g.ecc_volatile_corrected = _int(ask(u, "ecc_volatile_corrected", "nvmlDeviceGetTotalEccErrors", h, 0, 0))
        g.ecc_volatile_uncorrected = _int(ask(u, "ecc_volatile_uncorrected", "nvmlDeviceGetTotalEccErrors", h, 1, 0))
        g.ecc_aggregate_corrected = _int(ask(u, "ecc_aggregate_corrected", "nvmlDeviceGetTotalEccErrors", h, 0, 1))
        g.ecc_aggregate_uncorrected = _int(ask(u, "ecc_aggregate_uncorrected", "nvmlDeviceGetTotalEccErrors", h, 1, 1))
    sbe = ask(u, "retired_pages", "nvmlDeviceGetRetiredPages", h, 0)
    dbe = ask(u, "retired_pages", "nvmlDeviceGetRetiredPages", h, 1)
    g.retired_pages_sbe = len(sbe) if sbe is not None else None
    g.retired_pages_dbe = len(dbe) if dbe is not None else None
    pending = ask(u, "retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus", h)
    g.retired_pages_pending = bool(pending) if pending is not None else None
    rows = ask(u, "remapped_rows", "nvmlDeviceGetRemappedRows", h)
    if rows is not None:
        g.remapped_rows_correctable, g.remapped_rows_uncorrectable = int(rows[0]), int(rows[1])
        g.remapped_rows_pending, g.remapped_rows_failure = bool(rows[2]), bool(rows[3])

    g.pcie_gen_current = _int(ask(u, "pcie_gen_current", "nvmlDeviceGetCurrPcieLinkGeneration", h))
    g.pcie_gen_max = _int(ask(u, "pcie_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration", h))
    g.pcie_width_current = _int(ask(u, "pcie_width_current", "nvmlDeviceGetCurrPcieLinkWidth", h))
    g.pcie_width_max = _int(ask(u, "pcie_width_max", "nvmlDeviceGetMaxPcieLinkWidth", h))

    g.nvlinks = _gather_nvlinks(ask, h, u)
    g.processes = _gather_processes(ask, h, u, lookup)
    return g


def _gather_nvlinks(ask: _Asker, h: Any, u: dict[str, str]) -> list[NvLinkState]:
    links: list[NvLinkState] = []
    for link in range(MAX_NVLINKS):
        why: dict[str, str] = {}
        state = ask(why, "nvlink", "nvmlDeviceGetNvLinkState", h, link)
        if state is None:
            # NotSupported on link 0: no NVLink on this card. InvalidArgument: past the card's link count.
            if link == 0:
                u["nvlink"] = why.get("nvlink", "NotSupported")
            break
        active = bool(state)
        remote_bus = remote_type = None
        if active:
            pci = ask({}, "nvlink_remote", "nvmlDeviceGetNvLinkRemotePciInfo", h, link)
            if pci is not None:
                remote_bus = _text(getattr(pci, "busId", None))
            rtype = ask({}, "nvlink_remote_type", "nvmlDeviceGetNvLinkRemoteDeviceType", h, link)
            if rtype is not None:
                remote_type = NVLINK_DEVICE_TYPE.get(int(rtype), "unknown")
        links.append(NvLinkState(link=link, active=active, remote_bus_id=remote_bus, remote_type=remote_type))
    return links


def _gather_processes(ask: _Asker, h: Any, u: dict[str, str], lookup: ProcessLookup) -> list[NvmlProcess]:
    out: list[NvmlProcess] = []
    seen: set[int] = set()
    for kind, fn in (
        ("compute", "nvmlDeviceGetComputeRunningProcesses"),
        ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ):
        key = f"processes_{kind}"
        procs = ask(u, key, fn, h)
        if procs is None and u.get(key, "").startswith("NVMLLibraryMismatchError"):
            # nvidia-ml-py's unversioned call wants the driver's _v3 symbol; an older driver still has _v2
            why: dict[str, str] = {}
            procs = ask(why, key, f"{fn}_v2", h)
            if procs is not None:
                del u[key]
            else:
                u[key] = why[key]
        for p in procs or []:
            pid = int(p.pid)
            if pid in seen:
                continue
            seen.add(pid)
            out.append(describe_process(pid, _int(getattr(p, "usedGpuMemory", None)), kind, lookup))
    return out


def _norm_bus(bus: str | None) -> str | None:
    """NVML bus ids come as 00000000:17:00.0 or 0000:17:00.0; compare them without the domain's width."""
    if not bus:
        return None
    parts = bus.lower().split(":")
    if len(parts) == 3:
        return f"{int(parts[0], 16):x}:{parts[1]}:{parts[2]}"
    return bus.lower()


def _gather_pairs(ask: _Asker, report: NvmlReport, handles: list[Any]) -> None:
    gpus = report.gpus
    by_bus = {_norm_bus(g.pci_bus_id): g.index for g in gpus if g.pci_bus_id}
    for i in range(len(gpus)):
        for j in range(i + 1, len(gpus)):
            a, b = gpus[i], gpus[j]
            ha, hb = handles[i], handles[j]
            why: dict[str, str] = {}
            pair = NvmlPair(a=a.index, b=b.index)
            level = ask(why, "topology", "nvmlDeviceGetTopologyCommonAncestor", ha, hb)
            if level is not None:
                pair.topology = TOPOLOGY_NAMES.get(int(level), str(level))
            for attr, idx in (("p2p_read", P2P_READ), ("p2p_write", P2P_WRITE), ("p2p_nvlink", P2P_NVLINK)):
                status = ask(why, attr, "nvmlDeviceGetP2PStatus", ha, hb, idx)
                if status is not None:
                    setattr(pair, attr, P2P_STATUS_NAMES.get(int(status), str(status)))
            pair.nvlinks = _pair_nvlinks(a, b, by_bus)
            for k, v in why.items():
                report.unavailable[f"pair[{a.index},{b.index}].{k}"] = v
            report.pairs.append(pair)


def _pair_nvlinks(a: NvmlGpu, b: NvmlGpu, by_bus: dict[str | None, int]) -> int:
    """Links joining a and b: direct links whose far end is b, or, through NVSwitches, min of both sides."""
    direct = sum(
        1
        for lk in a.nvlinks
        if lk.active and lk.remote_type in (None, "gpu") and by_bus.get(_norm_bus(lk.remote_bus_id)) == b.index
    )
    if direct:
        return direct
    a_sw = sum(1 for lk in a.nvlinks if lk.active and lk.remote_type == "switch")
    b_sw = sum(1 for lk in b.nvlinks if lk.active and lk.remote_type == "switch")
    return min(a_sw, b_sw)


def _int(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def probe_machine(
    selection: str = "auto", backend: Any | None = None, *, processes: ProcessLookup | None = None
) -> Machine:
    """``--gpus auto`` / ``--gpus 0,2,3``: probe NVML and return the planner's Machine for the selected GPUs."""
    return probe(backend, processes=processes).to_machine(selection)
