"""A fake NVML: a real object with the pynvml names qwendeploy calls, answering from a machine description.

It stands in for the ``pynvml`` module (``probe(backend=FakeNvml(...))`` or ``wiring.BACKEND_FACTORY``), raising
the same exception classes real NVML raises. A field that is ``None`` in the description makes its query raise
``NVMLError_NotSupported`` — or the error named for it in ``unavailable`` (``NoPermission``, ``FunctionNotFound``),
as a consumer card, a vGPU or a container would.

Machine descriptions live in ``tests/fixtures/machines/*.yaml``. They use the format of
``NvmlReport.to_dict()`` (so ``qwendeploy doctor --json``'s ``nvml`` dump of a real card can become a fixture
through :meth:`FakeNvml.from_report_dict`) plus a few conveniences:

* ``gpu_count`` + ``gpu_template``: N identical GPUs (index, UUID and bus id filled in);
* ``*_mib`` keys (``memory_total_mib``, ``memory_reserved_mib``, ``memory_used_mib``, ``used_mib``) for bytes;
* ``pair_defaults``: every pair not listed in ``pairs`` gets these values;
* ``nvswitch_links: 18``: every GPU gets 18 active NVLinks to an NVSwitch;
* ``process_table``: PID → what psutil would say (name, cmdline, ppid, parent_name, parent_cmdline, holds_gpu);
* ``fail_init``: ``LibraryNotFound`` / ``DriverNotLoaded`` / ``NoPermission`` — nvmlInit raises it;
* ``fail``: pynvml function name → error name, raised by every call to that function (``LibraryMismatch``
  raises pynvml's ``NVMLLibraryMismatchError``, which is *not* an ``NVMLError``: what the unversioned process
  queries raise on a driver older than the bindings).

What it copies from real NVML (checked against the answers of an H100 and an H200 on driver 580.159.04, kept in
``tests/fixtures/gpu-runs/``): error classes and their messages (``str(NVMLError_NotSupported(3))`` is
``"Not Supported"``); PCI info whose char fields come back as ``str`` (pynvml decodes struct strings); v1 memory
whose ``used`` includes the driver's reserve while v2 reports it apart (``used`` 0 on an idle card); ECC and MIG
modes as ``[current, pending]``; ``NotSupported`` from ``nvmlDeviceGetNvLinkState`` on link 0 of a card that
reports no NVLink (a lone SXM board in a VM does too), and from the topology query of a GPU with itself; process
records with ``pid``, ``usedGpuMemory`` (None when NVML cannot tell), ``gpuInstanceId`` and ``computeInstanceId``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from qwendeploy.adapters.nvml import ProcessInfo

MiB = 1 << 20

_TOPOLOGY_LEVELS = {"SELF": 0, "PIX": 10, "PXB": 20, "PHB": 30, "NODE": 40, "SYS": 50}
_P2P_CODES = {
    "OK": 0,
    "CHIPSET_NOT_SUPPORTED": 1,
    "GPU_NOT_SUPPORTED": 2,
    "IOH_TOPOLOGY_NOT_SUPPORTED": 3,
    "DISABLED_BY_REGKEY": 4,
    "NOT_SUPPORTED": 5,
    "UNKNOWN": 6,
}
_NVLINK_TYPES = {"gpu": 0, "ibmnpu": 1, "switch": 2, "unknown": 255}
_ERROR_MESSAGES = {  # nvmlErrorString(): what str() of a real pynvml NVMLError says
    "Uninitialized": "Uninitialized",
    "InvalidArgument": "Invalid Argument",
    "NotSupported": "Not Supported",
    "NoPermission": "Insufficient Permissions",
    "NotFound": "Not Found",
    "DriverNotLoaded": "Driver Not Loaded",
    "Timeout": "Timeout",
    "LibraryNotFound": "NVML Shared Library Not Found",
    "FunctionNotFound": "Function Not Found",
    "GpuIsLost": "GPU is lost",
    "Unknown": "Unknown Error",
}
NVML_VALUE_NOT_AVAILABLE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process on a card without MIG
_ERROR_CODES = {
    "Uninitialized": 1,
    "InvalidArgument": 2,
    "NotSupported": 3,
    "NoPermission": 4,
    "NotFound": 6,
    "DriverNotLoaded": 9,
    "Timeout": 10,
    "LibraryNotFound": 12,
    "FunctionNotFound": 13,
    "GpuIsLost": 15,
    "Unknown": 999,
}


class NVMLError(Exception):
    """Same shape as pynvml.NVMLError: ``value`` is the NVML return code."""

    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - mirrors pynvml's class attribute

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value  # type: ignore[attr-defined]
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        name = type(self).__name__.removeprefix("NVMLError_")
        return _ERROR_MESSAGES.get(name, name)


class NVMLLibraryMismatchError(Exception):
    """pynvml raises this (not an NVMLError) from an unversioned call whose function the driver lacks."""


def _make_error_classes() -> dict[str, type[NVMLError]]:
    classes = {}
    for name, code in _ERROR_CODES.items():
        cls = type(f"NVMLError_{name}", (NVMLError,), {})
        NVMLError._valClassMapping[code] = cls
        classes[name] = cls
    return classes


_ERRORS = _make_error_classes()


def _error(name: str) -> Exception:
    if name == "LibraryMismatch":
        return NVMLLibraryMismatchError(
            "Unversioned function called and the pyNVML version does not match the NVML lib version."
        )
    return _ERRORS.get(name, _ERRORS["Unknown"])(_ERROR_CODES.get(name, 999))


class _Handle:
    def __init__(self, gpu: dict[str, Any], mig: dict[str, Any] | None = None) -> None:
        self.gpu = gpu
        self.mig = mig


def _expand(desc: dict[str, Any]) -> dict[str, Any]:
    """Fixture conveniences → plain NvmlReport dict (plus process_table / fail_init / fail)."""
    d = copy.deepcopy(desc)
    if "gpu_count" in d:
        template = d.pop("gpu_template", {})
        n = int(d.pop("gpu_count"))
        listed = {g["index"]: g for g in d.get("gpus", [])}
        gpus = []
        for i in range(n):
            g = copy.deepcopy(template)
            g.update(listed.get(i, {}))
            g["index"] = i
            g.setdefault("uuid", f"GPU-{i:08x}-fake-0000-0000-{i:012x}")
            g.setdefault("pci_bus_id", f"00000000:{0x18 + 0x10 * i:02X}:00.0")
            gpus.append(g)
        d["gpus"] = gpus
    switch_links = d.pop("nvswitch_links", None)
    for g in d.get("gpus", []):
        for key in ("memory_total", "memory_reserved", "memory_used", "memory_free"):
            mib = g.pop(f"{key}_mib", None)
            if mib is not None:
                g[key] = int(mib * MiB)
        if g.get("memory_free") is None and g.get("memory_total") is not None:
            used = g.get("memory_used") or 0
            g["memory_free"] = g["memory_total"] - (g.get("memory_reserved") or 0) - used
        if g.get("memory_used") is None and g.get("memory_total") is not None:
            g["memory_used"] = 0
        for p in g.get("processes", []):
            mib = p.pop("used_mib", None)
            if mib is not None:
                p["used_bytes"] = int(mib * MiB)
        if switch_links and "nvlinks" not in g:
            g["nvlinks"] = [
                {"link": k, "active": True, "remote_bus_id": f"00000000:{0xA0 + k:02X}:00.0", "remote_type": "switch"}
                for k in range(int(switch_links))
            ]
    defaults = d.pop("pair_defaults", None)
    if defaults is not None:
        listed_pairs = {(p["a"], p["b"]): p for p in d.get("pairs", [])}
        pairs = []
        idx = [g["index"] for g in d.get("gpus", [])]
        for i, a in enumerate(idx):
            for b in idx[i + 1 :]:
                p = dict(defaults)
                p.update(listed_pairs.get((a, b), {}))
                p["a"], p["b"] = a, b
                pairs.append(p)
        d["pairs"] = pairs
    return d


class FakeNvml:
    """Stand-in for the pynvml module, built from a machine description."""

    NVMLError = NVMLError
    nvmlMemory_v2 = 0x02000028

    def __init__(self, desc: dict[str, Any]) -> None:
        d = _expand(desc)
        self.fail_init: str | None = d.pop("fail_init", None)
        self.fail: dict[str, str] = dict(d.pop("fail", {}) or {})
        table = d.pop("process_table", {}) or {}
        self.process_table: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in table.items()}
        self.desc = d
        self.gpus: list[dict[str, Any]] = d.get("gpus", [])
        self.calls: list[str] = []
        self.initialised = False
        for name, cls in _ERRORS.items():
            setattr(self, f"NVMLError_{name}", cls)

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | Path) -> FakeNvml:
        return cls(yaml.safe_load(Path(path).read_text()))

    @classmethod
    def from_report_dict(cls, d: dict[str, Any]) -> FakeNvml:
        """A fake that answers what a real probe recorded (``NvmlReport.to_dict()`` / ``doctor --json``'s nvml).

        Processes seen in that PID namespace become the process table, so names and orphan status survive.
        """
        desc = copy.deepcopy(d)
        table: dict[int, dict[str, Any]] = {}
        for g in desc.get("gpus", []):
            for p in g.get("processes", []):
                if p.get("visible"):
                    orphan = p.get("orphan", False)
                    table[int(p["pid"])] = {
                        "name": p.get("name", ""),
                        "cmdline": p.get("cmdline", ""),
                        "ppid": 1 if orphan else p.get("ppid"),
                        "parent_name": "systemd" if orphan else "",
                        "username": p.get("username"),
                        "holds_gpu": True,
                    }
        desc.setdefault("process_table", table)
        return cls(desc)

    def process_lookup(self, pid: int) -> ProcessInfo | None:
        """What psutil would say about ``pid`` on this fake machine (None: not in this PID namespace)."""
        row = self.process_table.get(int(pid))
        if row is None:
            return None
        return ProcessInfo(**row)

    # ---------------------------------------------------------------- helpers

    def _enter(self, fn: str) -> None:
        self.calls.append(fn)
        if fn != "nvmlInit" and not self.initialised:
            raise _error("Uninitialized")
        if fn in self.fail:
            raise _error(self.fail[fn])

    def _field(self, where: dict[str, Any], key: str, reason_key: str | None = None) -> Any:
        value = where.get(key)
        if value is None:
            reasons = where.get("unavailable", {}) or {}
            raise _error(reasons.get(reason_key or key, "NotSupported").split(" ")[0].rstrip(":"))
        return value

    def _top(self, key: str) -> Any:
        return self._field(self.desc, key)

    def _pair(self, ha: _Handle, hb: _Handle) -> dict[str, Any]:
        a, b = ha.gpu["index"], hb.gpu["index"]
        lo, hi = min(a, b), max(a, b)
        for p in self.desc.get("pairs", []):
            if p["a"] == lo and p["b"] == hi:
                return p
        raise _error("NotSupported")

    # ---------------------------------------------------------------- system

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.fail_init:
            raise _error(self.fail_init)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return str(self._top("driver_version"))

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return str(self._top("nvml_version"))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        major, _, minor = str(self._top("cuda_driver_version")).partition(".")
        return int(major) * 1000 + int(minor or 0) * 10

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise _error("InvalidArgument")
        return _Handle(self.gpus[index])

    # ---------------------------------------------------------------- identity and memory

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetName")
        return str(self._field(h.gpu, "name"))

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetUUID")
        if h.mig is not None:
            return str(self._field(h.mig, "uuid"))
        return str(self._field(h.gpu, "uuid"))

    def nvmlDeviceGetPciInfo(self, h: _Handle) -> SimpleNamespace:
        self._enter("nvmlDeviceGetPciInfo")
        bus = str(self._field(h.gpu, "pci_bus_id"))
        # pynvml's structures decode their char arrays: busId "00000000:00:06.0", busIdLegacy "0000:00:06.0"
        legacy = bus[4:] if len(bus.split(":")[0]) == 8 else bus
        return SimpleNamespace(busId=bus, busIdLegacy=legacy)

    def nvmlDeviceGetMemoryInfo(self, h: _Handle, version: int | None = None) -> SimpleNamespace:
        self._enter("nvmlDeviceGetMemoryInfo")
        if h.mig is not None:
            return SimpleNamespace(total=self._field(h.mig, "memory_total"), free=0, used=0)
        g = h.gpu
        total = self._field(g, "memory_total", "memory")
        free = self._field(g, "memory_free", "memory")
        if version:
            reserved = self._field(g, "memory_reserved")
            return SimpleNamespace(
                version=version, total=total, reserved=reserved, free=free, used=g.get("memory_used") or 0
            )
        # v1: "used" includes the driver's reserve on current drivers
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetCudaComputeCapability(self, h: _Handle) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability")
        cc = self._field(h.gpu, "compute_capability")
        return (int(cc[0]), int(cc[1]))

    # ---------------------------------------------------------------- MIG

    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        mode = self._field(h.gpu, "mig_mode")
        pending = h.gpu.get("mig_pending")
        return [int(bool(mode)), int(bool(mode if pending is None else pending))]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount")
        return len(h.gpu.get("mig_devices", []))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, index: int) -> _Handle:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        migs = h.gpu.get("mig_devices", [])
        if not 0 <= index < len(migs):
            raise _error("NotFound")
        return _Handle(h.gpu, mig=migs[index])

    # ---------------------------------------------------------------- ECC, retired pages, remapped rows

    def nvmlDeviceGetEccMode(self, h: _Handle) -> list[int]:
        self._enter("nvmlDeviceGetEccMode")
        on = self._field(h.gpu, "ecc_enabled", "ecc_mode")
        pending = h.gpu.get("ecc_pending")
        return [int(bool(on)), int(bool(on if pending is None else pending))]

    def nvmlDeviceGetTotalEccErrors(self, h: _Handle, error_type: int, counter_type: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors")
        kind = "corrected" if error_type == 0 else "uncorrected"
        scope = "volatile" if counter_type == 0 else "aggregate"
        return int(self._field(h.gpu, f"ecc_{scope}_{kind}"))

    def nvmlDeviceGetRetiredPages(self, h: _Handle, cause: int) -> list[int]:
        self._enter("nvmlDeviceGetRetiredPages")
        n = self._field(h.gpu, "retired_pages_sbe" if cause == 0 else "retired_pages_dbe", "retired_pages")
        return [0x1000 * (k + 1) for k in range(int(n))]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetRetiredPagesPendingStatus")
        return int(bool(self._field(h.gpu, "retired_pages_pending")))

    def nvmlDeviceGetRemappedRows(self, h: _Handle) -> tuple[int, int, int, int]:
        self._enter("nvmlDeviceGetRemappedRows")
        g = h.gpu
        corr = self._field(g, "remapped_rows_correctable", "remapped_rows")
        return (
            int(corr),
            int(g.get("remapped_rows_uncorrectable") or 0),
            int(bool(g.get("remapped_rows_pending"))),
            int(bool(g.get("remapped_rows_failure"))),
        )

    # ---------------------------------------------------------------- PCIe

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrPcieLinkGeneration")
        return int(self._field(h.gpu, "pcie_gen_current"))

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxPcieLinkGeneration")
        return int(self._field(h.gpu, "pcie_gen_max"))

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrPcieLinkWidth")
        return int(self._field(h.gpu, "pcie_width_current"))

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxPcieLinkWidth")
        return int(self._field(h.gpu, "pcie_width_max"))

    # ---------------------------------------------------------------- NVLink

    def _link(self, h: _Handle, link: int) -> dict[str, Any]:
        links = h.gpu.get("nvlinks") or []
        if not links:
            reason = (h.gpu.get("unavailable") or {}).get("nvlink", "NotSupported")
            raise _error(reason)
        if not 0 <= link < len(links):
            raise _error("InvalidArgument")
        return dict(links[link])

    def nvmlDeviceGetNvLinkState(self, h: _Handle, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkState")
        return int(bool(self._link(h, link).get("active")))

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: _Handle, link: int) -> SimpleNamespace:
        self._enter("nvmlDeviceGetNvLinkRemotePciInfo")
        bus = self._link(h, link).get("remote_bus_id")
        if bus is None:
            raise _error("NotSupported")
        return SimpleNamespace(busId=str(bus))

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: _Handle, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkRemoteDeviceType")
        kind = self._link(h, link).get("remote_type")
        if kind is None:
            raise _error("NotSupported")
        return _NVLINK_TYPES.get(str(kind), 255)

    # ---------------------------------------------------------------- processes

    def _processes(self, h: _Handle, kind: str, fn: str) -> list[SimpleNamespace]:
        self._enter(fn)
        reasons = h.gpu.get("unavailable") or {}
        if f"processes_{kind}" in reasons:
            raise _error(reasons[f"processes_{kind}"].split(" ")[0].rstrip(":"))
        # pynvml's nvmlFriendlyObject for c_nvmlProcessInfo_v2_t/v3_t; usedGpuMemory None = NVML_VALUE_NOT_AVAILABLE
        return [
            SimpleNamespace(
                pid=p["pid"],
                usedGpuMemory=p.get("used_bytes"),
                gpuInstanceId=NVML_VALUE_NOT_AVAILABLE,
                computeInstanceId=NVML_VALUE_NOT_AVAILABLE,
            )
            for p in h.gpu.get("processes", [])
            if p.get("kind", "compute") == kind
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        return self._processes(h, "compute", "nvmlDeviceGetComputeRunningProcesses")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: _Handle) -> list[SimpleNamespace]:
        return self._processes(h, "compute", "nvmlDeviceGetComputeRunningProcesses_v2")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        return self._processes(h, "graphics", "nvmlDeviceGetGraphicsRunningProcesses")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, h: _Handle) -> list[SimpleNamespace]:
        return self._processes(h, "graphics", "nvmlDeviceGetGraphicsRunningProcesses_v2")

    # ---------------------------------------------------------------- pairs

    def nvmlDeviceGetTopologyCommonAncestor(self, ha: _Handle, hb: _Handle) -> int:
        self._enter("nvmlDeviceGetTopologyCommonAncestor")
        label = self._pair(ha, hb).get("topology")
        if label is None:
            raise _error("NotSupported")
        return _TOPOLOGY_LEVELS[str(label)]

    def nvmlDeviceGetP2PStatus(self, ha: _Handle, hb: _Handle, index: int) -> int:
        self._enter("nvmlDeviceGetP2PStatus")
        if not isinstance(index, int):
            # what ctypes does with pynvml's NVML_P2P_CAPS_INDEX_READ == (0,)
            raise TypeError(f"Don't know how to convert parameter 3: {index!r}")
        key = {0: "p2p_read", 1: "p2p_write", 2: "p2p_nvlink"}.get(index)
        if key is None:
            raise _error("InvalidArgument")
        status = self._pair(ha, hb).get(key)
        if status is None:
            raise _error("NotSupported")
        return _P2P_CODES[str(status)]


def load_machine(path: str | Path) -> FakeNvml:
    """``FakeNvml.load`` under the name tests read best: ``load_machine(fixtures / "machines/8xh100.yaml")``."""
    return FakeNvml.load(path)


# ---------------------------------------------------------------- real NVML answers → machine description

_TOPOLOGY_NAMES = {v: k for k, v in _TOPOLOGY_LEVELS.items()}
_P2P_NAMES = {v: k for k, v in _P2P_CODES.items()}


def _raw_error(v: Any) -> str | None:
    """``{"error": "NVMLError_NotSupported", ...}`` (benchmarks/gpu/nvml_dump.py's record of a failed query) →
    ``NotSupported``; None for an answer."""
    if isinstance(v, dict) and "error" in v:
        return str(v["error"]).removeprefix("NVMLError_")
    return None


def report_dict_from_raw_dump(raw: dict[str, Any], assume: dict[str, Any] | None = None) -> dict[str, Any]:
    """A machine description (``NvmlReport.to_dict()`` format) from ``benchmarks/gpu/nvml_dump.py``'s JSON.

    The dump records every pynvml query independently of qwendeploy's adapter, so a description built from it is
    an outside check of how the adapter reads each answer. Where the dump holds no v2 memory answer, the driver's
    reserve is NVML's total minus the CUDA runtime's total (``torch`` section); fields the dump did not query
    come from ``assume`` (per GPU), and without it they stay out (the fake then answers NotSupported).
    """
    assume = assume or {}
    cuda = raw.get("cuda_driver")
    out: dict[str, Any] = {
        "driver_version": raw.get("driver"),
        "cuda_driver_version": f"{cuda // 1000}.{(cuda % 1000) // 10}" if isinstance(cuda, int) else None,
        "nvml_version": raw.get("nvml_version"),
        "gpus": [],
        "pairs": [],
        "unavailable": {},
    }
    torch_totals = (raw.get("torch") or {}).get("total_memory") or []
    for r in raw.get("gpus", []):
        i = int(r["index"])
        u: dict[str, str] = {}
        g: dict[str, Any] = {"index": i, "name": r["name"], "uuid": r.get("uuid")}
        g["pci_bus_id"] = (r.get("pci") or {}).get("busId")
        mem2, mem = r.get("memory_v2"), r.get("memory") or {}
        procs = [*(r.get("compute_procs") or []), *(r.get("graphics_procs") or [])]
        if isinstance(mem2, dict) and _raw_error(mem2) is None:
            g.update(memory_total=mem2["total"], memory_reserved=mem2["reserved"])
            g.update(memory_used=mem2["used"], memory_free=mem2["free"])
        else:
            g.update(memory_total=mem["total"], memory_free=mem["free"])
            reserved = mem["total"] - torch_totals[i] if i < len(torch_totals) else None
            g["memory_reserved"] = reserved
            g["memory_used"] = mem["used"] - reserved if reserved is not None else mem["used"]
        g["compute_capability"] = list(r["cc"]) if _raw_error(r.get("cc")) is None else None
        mig = r.get("mig_mode")
        if _raw_error(mig) is None and mig is not None:
            g["mig_mode"], g["mig_pending"] = bool(mig[0]), bool(mig[1])
        else:
            u["mig_mode"] = _raw_error(mig) or "NotSupported"
        ecc = r.get("ecc_mode")
        if _raw_error(ecc) is None and ecc is not None:
            g["ecc_enabled"], g["ecc_pending"] = bool(ecc[0]), bool(ecc[1])
            g["ecc_volatile_uncorrected"] = r.get("ecc_volatile_uncorrected")
            g["ecc_aggregate_uncorrected"] = r.get("ecc_aggregate_uncorrected")
        else:
            u["ecc_mode"] = _raw_error(ecc) or "NotSupported"
        dbe = r.get("retired_pages_dbe")
        if _raw_error(dbe) is not None:
            # the function itself is refused (Ampere/Hopper remap rows instead): every cause answers the same
            g["retired_pages_sbe"] = g["retired_pages_dbe"] = None
            u["retired_pages"] = str(_raw_error(dbe))
        else:
            g["retired_pages_dbe"] = len(dbe or [])
        pending = r.get("retired_pending")
        if _raw_error(pending) is not None:
            u["retired_pages_pending"] = str(_raw_error(pending))
        else:
            g["retired_pages_pending"] = bool(pending)
        rows = r.get("remapped_rows")
        if _raw_error(rows) is None and rows is not None:
            g["remapped_rows_correctable"], g["remapped_rows_uncorrectable"] = int(rows[0]), int(rows[1])
            g["remapped_rows_pending"], g["remapped_rows_failure"] = bool(rows[2]), bool(rows[3])
        else:
            u["remapped_rows"] = _raw_error(rows) or "NotSupported"
        for key, raw_key in (
            ("pcie_gen_current", "pcie_gen"),
            ("pcie_gen_max", "pcie_gen_max"),
            ("pcie_width_current", "pcie_width"),
            ("pcie_width_max", "pcie_width_max"),
        ):
            v = r.get(raw_key)
            if _raw_error(v) is None:
                g[key] = v
            else:
                u[key] = str(_raw_error(v))
        links = r.get("nvlink") or []
        if links and _raw_error(links[0]["state"]) is not None:
            g["nvlinks"] = []
            u["nvlink"] = str(_raw_error(links[0]["state"]))
        else:
            g["nvlinks"] = [
                {
                    "link": lk["link"],
                    "active": bool(lk["state"]),
                    "remote_bus_id": (lk.get("remote_pci") or {}).get("busId"),
                    "remote_type": None,
                }
                for lk in links
                if _raw_error(lk["state"]) is None
            ]
        g["processes"] = [
            {"pid": int(p["pid"]), "used_bytes": p.get("usedGpuMemory"), "kind": kind, "visible": False}
            for kind, key in (("compute", "compute_procs"), ("graphics", "graphics_procs"))
            for p in (r.get(key) or [])
        ]
        if procs and g["memory_reserved"] is not None and not isinstance(mem2, dict):
            g["memory_reserved"] = None  # v1 "used" then holds the processes too: the reserve is not known
        g.update(assume.get(i, {}))
        g["unavailable"] = u
        out["gpus"].append(g)
        for j, p in sorted((r.get("p2p") or {}).items(), key=lambda kv: int(kv[0])):
            if int(j) <= i:
                continue
            pair: dict[str, Any] = {"a": i, "b": int(j), "nvlinks": 0}
            if _raw_error(p.get("topology")) is None:
                pair["topology"] = _TOPOLOGY_NAMES.get(int(p["topology"]), str(p["topology"]))
            for key, raw_key in (("p2p_read", "read"), ("p2p_write", "write"), ("p2p_nvlink", "nvlink")):
                if _raw_error(p.get(raw_key)) is None:
                    pair[key] = _P2P_NAMES.get(int(p[raw_key]), str(p[raw_key]))
            out["pairs"].append(pair)
    return out
