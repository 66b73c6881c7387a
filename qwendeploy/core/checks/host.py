"""The host around the GPUs: container, CUDA_VISIBLE_DEVICES, NCCL variables, InfiniBand, memlock, versions."""

from __future__ import annotations

from qwendeploy.core.checks import Check
from qwendeploy.core.checks.interconnect import is_nvlink_machine
from qwendeploy.core.machine_facts import NvmlReport, SystemFacts
from qwendeploy.core.units import human_size

NCCL_ENV_MEANINGS: dict[str, str] = {
    "NCCL_P2P_DISABLE": "disables CUDA peer-to-peer (NVLink/PCIe P2P) between GPUs; traffic goes through host memory",
    "NCCL_SHM_DISABLE": "disables the shared-memory transport; intra-node traffic falls back to sockets",
    "NCCL_IB_DISABLE": "disables InfiniBand/RoCE; multi-node traffic uses TCP sockets",
    "NCCL_SOCKET_IFNAME": "network interface(s) NCCL uses for bootstrap and socket traffic",
    "GLOO_SOCKET_IFNAME": "network interface Gloo (torch.distributed CPU groups) uses",
    "NCCL_DEBUG": "NCCL log level (INFO prints the transports chosen; WARN only problems)",
    "NCCL_DEBUG_SUBSYS": "which NCCL subsystems log",
    "NCCL_NVLS_ENABLE": "NVLink SHARP (NVSwitch multicast) all-reduce; 0 turns it off",
    "NCCL_CUMEM_ENABLE": "cuMem-based buffers (vLLM sets 0 itself unless told otherwise)",
    "NCCL_P2P_LEVEL": "how far apart GPUs may be and still use P2P (LOC, NVL, PIX, PXB, PHB, SYS)",
    "NCCL_ALGO": "forces collective algorithms (Ring, Tree, NVLS …)",
    "NCCL_PROTO": "forces protocols (LL, LL128, Simple)",
    "NCCL_IB_HCA": "which InfiniBand adapters NCCL uses",
    "NCCL_IB_GID_INDEX": "RoCE GID index",
    "NCCL_NET_GDR_LEVEL": "when GPUDirect RDMA is used",
    "NCCL_NET_PLUGIN": "external network plugin library (libnccl-net-<name>.so)",
    "NCCL_BUFFSIZE": "buffer size per channel (default 4 MiB); larger values need more /dev/shm",
    "NCCL_MIN_NCHANNELS": "minimum channels",
    "NCCL_MAX_NCHANNELS": "maximum channels",
    "NCCL_IGNORE_DISABLED_P2P": "silences NCCL's P2P-disabled warning",
    "NCCL_TIMEOUT": "not an NCCL variable (vLLM/torch use their own timeouts)",
    "NCCL_ASYNC_ERROR_HANDLING": "torch's old name for TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "NCCL_BLOCKING_WAIT": "torch's old name for TORCH_NCCL_BLOCKING_WAIT",
    "NCCL_LAUNCH_MODE": "PARALLEL or GROUP kernel launch",
    "NCCL_NET": "forces the network module (IB or Socket)",
}


def check_container(sysf: SystemFacts, nv: NvmlReport | None) -> Check:
    if sysf.in_container is None:
        return Check("container", "skip", "Could not tell whether this is a container.")
    if not sysf.in_container:
        return Check("container", "ok", "Not in a container.")
    detail = f"In a {sysf.container_kind or 'container'} container ({sysf.container_evidence})."
    hidden = [p for g in (nv.gpus if nv else []) for p in g.processes if not p.visible]
    if hidden:
        detail += (
            f" {len(hidden)} GPU process(es) live outside this container's PID namespace: they cannot be seen or "
            "killed from here."
        )
    return Check("container", "ok", detail)


def check_cuda_visible_devices(sysf: SystemFacts, nv: NvmlReport | None) -> Check:
    cvd = sysf.env.get("CUDA_VISIBLE_DEVICES")
    order = sysf.env.get("CUDA_DEVICE_ORDER")
    n = len(nv.gpus) if nv is not None else None
    if cvd is None:
        detail = "CUDA_VISIBLE_DEVICES is not set: " + (
            f"all {n} GPU(s) are visible." if n else "all GPUs are visible."
        )
        return Check("cuda_visible_devices", "ok", detail)
    entries = [e.strip() for e in cvd.split(",")]
    if cvd.strip() == "" or entries[0].startswith("-"):
        return Check(
            "cuda_visible_devices",
            "fail",
            f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU from CUDA.",
            "unset CUDA_VISIBLE_DEVICES, or list the GPUs to use (e.g. CUDA_VISIBLE_DEVICES=0,1).",
        )
    problems: list[str] = []
    seen: set[str] = set()
    numeric = [e for e in entries if e.isdigit()]
    uuids = [e for e in entries if not e.isdigit()]
    if numeric and uuids:
        problems.append("mixes indices and UUIDs (CUDA stops at the first entry it cannot parse)")
    for e in entries:
        if e in seen:
            problems.append(f"{e} is listed twice")
        seen.add(e)
    if nv is not None:
        for e in numeric:
            if int(e) >= len(nv.gpus):
                problems.append(f"ordinal {e} is out of range (NVML sees {len(nv.gpus)} GPU(s): 0–{len(nv.gpus) - 1})")
        known = [g.uuid for g in nv.gpus if g.uuid] + [m.uuid for g in nv.gpus for m in g.mig_devices if m.uuid]
        for e in uuids:
            if known and not any(k.lower().startswith(e.lower()) for k in known):
                problems.append(f"{e} matches no GPU UUID here")
    if problems:
        return Check(
            "cuda_visible_devices",
            "fail",
            f"CUDA_VISIBLE_DEVICES={cvd}: " + "; ".join(problems) + ".",
            "List GPU indices from `nvidia-smi -L` (with CUDA_DEVICE_ORDER=PCI_BUS_ID) or full UUIDs.",
        )
    detail = f"CUDA_VISIBLE_DEVICES={cvd}: {len(entries)} GPU(s) visible to CUDA"
    detail += f" of {n}." if n is not None else "."
    heterogeneous = nv is not None and len({g.name for g in nv.gpus}) > 1
    if numeric and order != "PCI_BUS_ID":
        if heterogeneous:
            return Check(
                "cuda_visible_devices",
                "warn",
                detail + " CUDA_DEVICE_ORDER is not PCI_BUS_ID and the GPUs differ: CUDA orders the fastest first, "
                "so index N may not be nvidia-smi's GPU N.",
                "export CUDA_DEVICE_ORDER=PCI_BUS_ID",
            )
        detail += " (CUDA_DEVICE_ORDER=PCI_BUS_ID makes indices match nvidia-smi's in every case.)"
    return Check("cuda_visible_devices", "ok", detail)


def check_nccl_env(sysf: SystemFacts, nv: NvmlReport | None, *, nodes: int = 1) -> Check:
    env = {k: v for k, v in sysf.env.items() if k.startswith(("NCCL_", "GLOO_"))}
    nvlink = nv is not None and is_nvlink_machine(nv)
    has_ib = bool(sysf.infiniband)
    harmful: list[str] = []
    fails: list[str] = []
    for k, v in env.items():
        on = v.strip().lower() in ("1", "true", "yes", "on")
        if k == "NCCL_P2P_DISABLE" and on and nvlink:
            harmful.append(
                "NCCL_P2P_DISABLE=1 on an NVLink machine sends all-reduce through host memory (many times slower)"
            )
        if k == "NCCL_SHM_DISABLE" and on and env.get("NCCL_P2P_DISABLE", "") in ("1", "true"):
            harmful.append("NCCL_SHM_DISABLE=1 with P2P disabled leaves only sockets between local GPUs")
        if k == "NCCL_IB_DISABLE" and on and has_ib:
            harmful.append("NCCL_IB_DISABLE=1 while InfiniBand devices are present: multi-node traffic uses TCP")
        loopback = k in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME") and v.strip().lstrip("=^") in ("lo", "lo0")
        if loopback and nodes > 1:  # loopback is fine, even usual, on a single node
            fails.append(f"{k}={v} binds to loopback: other nodes cannot connect")
        if k in ("NCCL_ALGO", "NCCL_PROTO"):
            harmful.append(f"{k}={v} forces NCCL's choice; a wrong one slows or hangs collectives")
        if k == "NCCL_P2P_LEVEL" and v.upper() in ("LOC", "0") and nvlink:
            harmful.append(f"NCCL_P2P_LEVEL={v} disables P2P even over NVLink")
        if k == "NCCL_NET_PLUGIN" and not sysf.nccl_net_plugin_libs and v.lower() not in ("none", ""):
            harmful.append(f"NCCL_NET_PLUGIN={v} but no libnccl-net*.so is on LD_LIBRARY_PATH")
        if k == "NCCL_BUFFSIZE":
            harmful.append("NCCL_BUFFSIZE changes /dev/shm needs and memory per channel")
    described = "; ".join(f"{k}={v} ({NCCL_ENV_MEANINGS.get(k, 'see NCCL docs')})" for k, v in env.items())
    debug_tip = "" if "NCCL_DEBUG" in env else " Tip: NCCL_DEBUG=INFO makes NCCL log its transports and errors."
    if fails:
        return Check(
            "nccl_env",
            "fail",
            "; ".join(fails + harmful) + f". Set: {described}.",
            "Set NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME to the interface that reaches the other nodes "
            "(e.g. eth0, ib0, bond0).",
        )
    if harmful:
        return Check(
            "nccl_env",
            "warn",
            "; ".join(harmful) + f". Set: {described}.",
            "unset " + " ".join(sorted({h.split("=")[0].split()[0] for h in harmful if "=" in h})),
        )
    if not env:
        return Check("nccl_env", "ok", "No NCCL_* / GLOO_* variables set (NCCL's defaults)." + debug_tip)
    return Check("nccl_env", "ok", described + "." + debug_tip)


def check_infiniband(sysf: SystemFacts, *, nodes: int = 1) -> Check:
    ib = sysf.infiniband
    plugin = ""
    if sysf.nccl_net_plugin_libs:
        plugin = f" NCCL net plugin(s): {', '.join(sysf.nccl_net_plugin_libs)}."
    if not ib:
        detail = "No InfiniBand/RoCE devices." + plugin
        if nodes > 1:
            return Check(
                "infiniband",
                "warn",
                detail + " A multi-node run will use TCP sockets (slow tensor/pipeline traffic).",
                "Use InfiniBand/RoCE between nodes, or keep tensor parallelism within a node (PP across nodes).",
            )
        return Check("infiniband", "ok", detail + " (One node needs none.)")
    ports = [(d.name, p) for d in ib for p in d.ports]
    active = [f"{n}:{p.port}" for n, p in ports if (p.state or "").upper() == "ACTIVE"]
    down = [f"{n}:{p.port} {p.state or '?'}" for n, p in ports if (p.state or "").upper() != "ACTIVE"]
    detail = f"RDMA devices: {', '.join(d.name for d in ib)}; active ports: {', '.join(active) or 'none'}." + plugin
    if not active and nodes > 1:
        return Check(
            "infiniband", "fail", detail + f" No port is ACTIVE ({', '.join(down)}).", "Check cabling/`ibstat`."
        )
    if down:
        return Check("infiniband", "ok", detail + f" Not active: {', '.join(down)}.")
    return Check("infiniband", "ok", detail)


def check_memlock(sysf: SystemFacts) -> Check:
    soft = sysf.memlock_soft
    if soft is None:
        return Check("memlock", "skip", "Could not read the memlock limit.")
    text = "unlimited" if soft == -1 else human_size(soft)
    if soft == -1:
        return Check("memlock", "ok", "memlock limit: unlimited.")
    if sysf.infiniband:
        return Check(
            "memlock",
            "warn",
            f"memlock limit is {text}: RDMA (InfiniBand/RoCE) registers pinned memory and NCCL's IB transport can "
            "fail or fall back.",
            "Raise it: docker run --ulimit memlock=-1, or `* - memlock unlimited` in /etc/security/limits.conf.",
        )
    return Check("memlock", "ok", f"memlock limit: {text} (unlimited is recommended only with InfiniBand).")
