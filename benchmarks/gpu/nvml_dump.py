#!/usr/bin/env python3
"""Dump what real NVML answers on this machine, query by query, as JSON (device side).

Every call is recorded with its value or the NVML error class, so the fake NVML backend in tests/fakes can be
checked against a real card (NotSupported fields, MIG, NVLink on a single card, reserved memory, processes).
Usage: python3 benchmarks/gpu/nvml_dump.py > nvml_raw.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pynvml as n


def q(fn: Any, *args: Any) -> Any:
    try:
        v = fn(*args)
    except n.NVMLError as e:
        return {"error": type(e).__name__, "message": str(e)}
    except Exception as e:  # a binding missing in this nvidia-ml-py
        return {"error": type(e).__name__, "message": str(e)}
    if isinstance(v, bytes):
        return v.decode()
    if hasattr(v, "_fields_"):
        return {f[0]: q(lambda o=v, k=f[0]: getattr(o, k)) for f in v._fields_}
    if isinstance(v, (list, tuple)):
        return [q(lambda x=x: x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def main() -> int:
    n.nvmlInit()
    out: dict[str, Any] = {
        "driver": q(n.nvmlSystemGetDriverVersion),
        "cuda_driver": q(n.nvmlSystemGetCudaDriverVersion_v2),
        "nvml_version": q(n.nvmlSystemGetNVMLVersion),
        "count": q(n.nvmlDeviceGetCount),
        "gpus": [],
    }
    count = out["count"] if isinstance(out["count"], int) else 0
    handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    for i, h in enumerate(handles):
        g: dict[str, Any] = {"index": i}
        for name, fn, args in [
            ("name", n.nvmlDeviceGetName, ()),
            ("uuid", n.nvmlDeviceGetUUID, ()),
            ("pci", n.nvmlDeviceGetPciInfo, ()),
            ("memory", n.nvmlDeviceGetMemoryInfo, ()),
            ("memory_v2", lambda h: n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2), ()),  # has `reserved`
            ("cc", n.nvmlDeviceGetCudaComputeCapability, ()),
            ("mig_mode", n.nvmlDeviceGetMigMode, ()),
            ("ecc_mode", n.nvmlDeviceGetEccMode, ()),
            (
                "ecc_volatile_uncorrected",
                n.nvmlDeviceGetTotalEccErrors,
                (n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC),
            ),
            (
                "ecc_aggregate_uncorrected",
                n.nvmlDeviceGetTotalEccErrors,
                (n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC),
            ),
            ("retired_pages_dbe", n.nvmlDeviceGetRetiredPages, (n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,)),
            ("retired_pending", n.nvmlDeviceGetRetiredPagesPendingStatus, ()),
            ("remapped_rows", n.nvmlDeviceGetRemappedRows, ()),
            ("pcie_gen", n.nvmlDeviceGetCurrPcieLinkGeneration, ()),
            ("pcie_gen_max", n.nvmlDeviceGetMaxPcieLinkGeneration, ()),
            ("pcie_width", n.nvmlDeviceGetCurrPcieLinkWidth, ()),
            ("pcie_width_max", n.nvmlDeviceGetMaxPcieLinkWidth, ()),
            ("persistence", n.nvmlDeviceGetPersistenceMode, ()),
            ("compute_mode", n.nvmlDeviceGetComputeMode, ()),
            ("power_limit_mw", n.nvmlDeviceGetPowerManagementLimit, ()),
            ("temperature", n.nvmlDeviceGetTemperature, (n.NVML_TEMPERATURE_GPU,)),
            ("compute_procs", n.nvmlDeviceGetComputeRunningProcesses, ()),
            ("graphics_procs", n.nvmlDeviceGetGraphicsRunningProcesses, ()),
            ("bar1", n.nvmlDeviceGetBAR1MemoryInfo, ()),
            ("numa_node", getattr(n, "nvmlDeviceGetNumaNodeId", lambda h: None), ()),
        ]:
            g[name] = q(fn, h, *args)
        g["nvlink"] = []
        for link in range(18):
            st = q(n.nvmlDeviceGetNvLinkState, h, link)
            g["nvlink"].append(
                {
                    "link": link,
                    "state": st,
                    "remote_pci": q(n.nvmlDeviceGetNvLinkRemotePciInfo_v2, h, link) if st == 1 else None,
                }
            )
            if isinstance(st, dict):
                break
        g["topology_self"] = q(n.nvmlDeviceGetTopologyCommonAncestor, h, h)
        g["p2p"] = {}
        for j, h2 in enumerate(handles):
            if j == i:
                continue
            g["p2p"][j] = {
                "topology": q(n.nvmlDeviceGetTopologyCommonAncestor, h, h2),
                "read": q(n.nvmlDeviceGetP2PStatus, h, h2, n.NVML_P2P_CAPS_INDEX_READ),
                "write": q(n.nvmlDeviceGetP2PStatus, h, h2, n.NVML_P2P_CAPS_INDEX_WRITE),
                "nvlink": q(n.nvmlDeviceGetP2PStatus, h, h2, n.NVML_P2P_CAPS_INDEX_NVLINK),
            }
        out["gpus"].append(g)
    try:
        import torch

        out["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "mem_get_info": list(torch.cuda.mem_get_info()) if torch.cuda.is_available() else None,
            "total_memory": [
                torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())
            ],
        }
    except Exception as e:
        out["torch"] = {"error": repr(e)}
    n.nvmlShutdown()
    json.dump(out, sys.stdout, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
