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
* ``fail``: pynvml function name → error name, raised by every call to that function.
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
        return type(self).__name__.removeprefix("NVMLError_")


def _make_error_classes() -> dict[str, type[NVMLError]]:
    classes = {}
    for name, code in _ERROR_CODES.items():
        cls = type(f"NVMLError_{name}", (NVMLError,), {})
        NVMLError._valClassMapping[code] = cls
        classes[name] = cls
    return classes


_ERRORS = _make_error_classes()


def _error(name: str) -> NVMLError:
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
        # the real struct's char arrays come back as bytes
        return SimpleNamespace(busId=bus.encode(), busIdLegacy=bus.encode())

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
        return SimpleNamespace(busId=str(bus).encode())

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
            raise _error(reasons[f"processes_{kind}"])
        return [
            SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used_bytes"), gpuInstanceId=0xFFFFFFFF)
            for p in h.gpu.get("processes", [])
            if p.get("kind", "compute") == kind
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        return self._processes(h, "compute", "nvmlDeviceGetComputeRunningProcesses")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        return self._processes(h, "graphics", "nvmlDeviceGetGraphicsRunningProcesses")

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
