"""doctor's machine checks: judge :class:`MachineFacts` (and optionally a profile) → ok / warn / fail with the fix.

Pure: facts in, checks out. Check names are stable short ids (``nvml``, ``driver``, ``gpu[0].memory``,
``gpu_processes``, ``ecc``, ``p2p``, ``nvlink``, ``topology``, ``pcie``, ``shm``, ``container``,
``cuda_visible_devices``, ``nccl_env``, ``infiniband``, ``memlock``, ``versions``, ``profile.*``); docs/doctor.md
explains each one. A check NVML cannot answer is ``skip``, never a failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qwendeploy.core.checks import Check, Status
from qwendeploy.core.hardware import BUSY_BYTES
from qwendeploy.core.machine_facts import MachineFacts, NvmlGpu, NvmlProcess, NvmlReport, SystemFacts
from qwendeploy.core.profile import Profile
from qwendeploy.core.units import GiB, MiB, human_size

if TYPE_CHECKING:
    from qwendeploy.core.cluster import HostNetFacts, RayCluster


# Minimum Linux driver for each CUDA toolkit release (NVIDIA's CUDA release notes, "CUDA Toolkit and Corresponding
# Driver Versions", GA releases). Within one major version minor-version compatibility lets an older driver of the
# same major run the runtime, except kernels JIT-compiled from PTX (Triton, FlashInfer), which then fail with
# "the provided PTX was compiled with an unsupported toolchain" — so an older minor is a warning, an older major
# a failure. The per-release values were written from NVIDIA's release-notes table without re-checking a stored copy
# (the major-version floors 525.60.13 / 580.65.06 agree with NVIDIA's data-center support matrix: R535/R570 run
# CUDA 12.x, R580 CUDA 13.x through minor-version compatibility).
CUDA_MIN_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}
CUDA_MAJOR_MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

SHM_WARN_BYTES = 1 * GiB
"""NVIDIA's containers are started with --shm-size=1g at least; below that, warn."""
SHM_PER_RANK_BYTES = 160 * MiB
"""NCCL's SHM transport maps one ~9 MiB segment (7–9.2 MiB in the logs: 4 MiB NCCL_BUFFSIZE × protocols) per channel
and peer, up to 16 channels per rank: ≈ 144 MiB a rank, rounded up to 160 MiB for vLLM's own shared-memory
broadcast queue. The rule: fail when /dev/shm < 160 MiB × the ranks of one tensor-parallel group (TP × PP)."""
"""Memory in use beyond this, with no vLLM of ours running, is "held by another process"."""

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


def _gi(n: int | None) -> str:
    return human_size(n) if n is not None else "?"


# ---------------------------------------------------------------- entry point


def run_checks(
    facts: MachineFacts,
    profile: Profile | None = None,
    *,
    multi_node: bool = False,
) -> list[Check]:
    """Every machine check, in a stable order; with ``profile``, the ``profile.*`` checks too.

    Args:
        facts: NVML's report (or why there is none) and the host's facts.
        profile: the deployment to check against this machine.
        multi_node: judge network settings for a multi-node run even without a profile saying so.
    """
    nv = facts.nvml
    sysf = facts.system
    nodes = max(profile.placement.nodes if profile else 1, 2 if multi_node else 1)
    checks: list[Check] = [check_nvml(facts)]
    if nv is not None and nv.gpus:
        checks.append(check_driver(nv, sysf))
        checks += [check_gpu_memory(g) for g in nv.gpus]
        checks.append(check_gpu_processes(nv))
        checks.append(check_mig(nv))
        checks.append(check_ecc(nv))
        checks.append(check_p2p(nv, sysf))
        checks.append(check_nvlink(nv))
        checks.append(check_topology(nv))
        checks.append(check_pcie(nv))
    else:
        checks.append(Check("driver", "skip", "No NVIDIA driver to check."))
    tp_ranks = ranks_on_this_node(profile) if profile else None
    n_gpus = len(nv.gpus) if nv is not None else 0
    checks.append(check_shm(sysf, tp_ranks=tp_ranks, n_gpus=n_gpus))
    checks.append(check_container(sysf, nv))
    checks.append(check_cuda_visible_devices(sysf, nv))
    checks.append(check_nccl_env(sysf, nv, nodes=nodes))
    checks.append(check_infiniband(sysf, nodes=nodes))
    checks.append(check_memlock(sysf))
    checks.append(check_versions(sysf))
    if profile is not None:
        checks += profile_checks(facts, profile)
    return checks


def worst(checks: list[Check]) -> Status:
    order: dict[Status, int] = {"skip": 0, "ok": 1, "warn": 2, "fail": 3}
    return max((c.status for c in checks), key=lambda s: order[s], default="ok")


# ---------------------------------------------------------------- NVML and driver


def check_nvml(facts: MachineFacts) -> Check:
    nv = facts.nvml
    if nv is None:
        why = (facts.nvml_error or "No NVIDIA GPU visible here: NVML is not available").rstrip(".")
        return Check(
            "nvml",
            "warn",
            f"{why}. GPU checks are skipped.",
            facts.nvml_hint
            or "Install the NVIDIA driver, or run the container with --gpus all (Docker) / the NVIDIA runtime.",
        )
    if not nv.gpus:
        return Check(
            "nvml",
            "warn",
            f"NVML works (driver {nv.driver_version or '?'}) but sees no GPU.",
            "Check CUDA_VISIBLE_DEVICES / the container's --gpus, and `nvidia-smi`.",
        )
    names = sorted({g.name for g in nv.gpus})
    return Check("nvml", "ok", f"NVML sees {len(nv.gpus)} GPU(s): {', '.join(names)}.")


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _mm(v: str) -> str:
    parts = v.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else f"{parts[0]}.0"


def required_driver(cuda: str) -> str | None:
    """Minimum Linux driver for a CUDA toolkit version ("12.8" → "570.26"), None when unknown."""
    mm = _mm(cuda)
    if mm in CUDA_MIN_DRIVER:
        return CUDA_MIN_DRIVER[mm]
    known = sorted(CUDA_MIN_DRIVER, key=_version_tuple)
    below = [k for k in known if _version_tuple(k) <= _version_tuple(mm)]
    return CUDA_MIN_DRIVER[below[-1]] if below and below[-1].split(".")[0] == mm.split(".")[0] else None


def check_driver(nv: NvmlReport, sysf: SystemFacts) -> Check:
    drv, cuda = nv.driver_version, nv.cuda_driver_version
    detail = f"Driver {drv or '? (not reported)'}, supports CUDA {cuda or '?'}."
    build = sysf.torch_cuda
    if build is None or cuda is None:
        extra = "" if build else " No torch installed here to compare its CUDA build with."
        return Check("driver", "ok" if drv else "warn", detail + extra, "" if drv else "nvidia-smi should show it.")
    need = required_driver(build)
    need_text = f" (driver ≥ {need})" if need else ""
    b, c = _version_tuple(_mm(build)), _version_tuple(_mm(cuda))
    detail += f" torch is built for CUDA {build}{need_text}."
    if b[0] > c[0]:
        return Check(
            "driver",
            "fail",
            detail + f" A CUDA {b[0]} build cannot run on a driver that supports CUDA {cuda}.",
            f"Upgrade the NVIDIA driver to {need or f'a CUDA {build} capable release'} or newer, or install a "
            f"torch/vLLM build for CUDA {_mm(cuda)} (e.g. pip install torch --index-url "
            f"https://download.pytorch.org/whl/cu{_mm(cuda).replace('.', '')}).",
        )
    if b > c:
        return Check(
            "driver",
            "warn",
            detail + " Minor-version compatibility runs it, but kernels JIT-compiled from PTX (Triton, FlashInfer) "
            "can fail with 'the provided PTX was compiled with an unsupported toolchain'.",
            f"Upgrade the driver to {need or 'a newer release'} or newer.",
        )
    return Check("driver", "ok", detail)


# ---------------------------------------------------------------- GPUs, memory, processes


def _process_label(p: NvmlProcess) -> str:
    what = p.cmdline or p.name or "?"
    if len(what) > 60:
        what = what[:57] + "..."
    used = f" {human_size(p.used_bytes)}" if p.used_bytes is not None else ""
    if not p.visible:
        return f"PID {p.pid}{used} (not visible here: another container or PID namespace)"
    return f"PID {p.pid} {what}{used}"


def check_gpu_memory(g: NvmlGpu) -> Check:
    name = f"gpu[{g.index}].memory"
    cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
    if g.memory_total is None:
        return Check(name, "skip", f"GPU {g.index} {g.name}: NVML does not report its memory.")
    reserved = g.memory_reserved
    cuda_total = g.memory_total - reserved if reserved is not None else None
    used = g.memory_used
    free = g.memory_free
    detail = (
        f"GPU {g.index} {g.name} (cc {cc}): total {_gi(g.memory_total)}"
        + (f" (CUDA sees {_gi(cuda_total)}; {_gi(reserved)} driver reserve)" if cuda_total is not None else "")
        + f", used {_gi(used)}"
        + (" (NVML v1: includes the driver reserve)" if reserved is None else "")
        + f", free {_gi(free)}."
    )
    if used is not None and used > BUSY_BYTES:
        holders = ", ".join(_process_label(p) for p in g.processes) or (
            "NVML lists no process (it cannot see processes of other containers)"
        )
        return Check(
            name,
            "warn",
            detail + f" Held by: {holders}.",
            "vLLM needs free ≥ gpu_memory_utilization × total at start-up: free the GPU or lower "
            "--gpu-memory-utilization (see gpu_processes).",
        )
    return Check(name, "ok", detail)


def check_gpu_processes(nv: NvmlReport) -> Check:
    orphans: list[tuple[int, NvmlProcess]] = []
    others: list[tuple[int, NvmlProcess]] = []
    unknown: list[int] = []
    for g in nv.gpus:
        if "processes_compute" in g.unavailable and not g.processes:
            unknown.append(g.index)
        for p in g.processes:
            (orphans if p.orphan else others).append((g.index, p))
    if orphans:
        pids = sorted({p.pid for _, p in orphans})
        listing = "; ".join(f"GPU {i}: {_process_label(p)} (parent gone)" for i, p in orphans)
        return Check(
            "gpu_processes",
            "fail",
            f"Orphaned vLLM processes still hold GPU memory: {listing}.",
            f"kill {' '.join(map(str, pids))}   (then `kill -9 {' '.join(map(str, pids))}` if they survive 10 s)",
        )
    if others:
        listing = "; ".join(f"GPU {i}: {_process_label(p)}" for i, p in others)
        vllm = [p for _, p in others if p.vllm_role]
        status: Status = "warn"
        note = " A running vLLM server holds them." if vllm else ""
        visible = sorted({p.pid for _, p in others if p.visible and not p.vllm_role})
        fix = "Stop them before starting vLLM, or plan with the free memory (qwendeploy plan --gpus auto counts it)."
        if visible:
            fix += f" To end them: kill {' '.join(map(str, visible))}."
        return Check("gpu_processes", status, f"Processes hold GPU memory: {listing}.{note}", fix)
    if unknown:
        return Check(
            "gpu_processes",
            "skip",
            f"NVML would not list processes on GPU(s) {', '.join(map(str, unknown))} "
            f"({nv.gpus[unknown[0]].unavailable.get('processes_compute')}).",
        )
    return Check("gpu_processes", "ok", "No process holds GPU memory.")


def check_mig(nv: NvmlReport) -> Check:
    mig = [g for g in nv.gpus if g.mig_mode]
    pending = [g for g in nv.gpus if g.mig_pending is not None and g.mig_pending != g.mig_mode]
    if mig:
        desc = "; ".join(f"GPU {g.index}: {len(g.mig_devices)} MIG instance(s)" for g in mig)
        return Check(
            "mig",
            "warn",
            f"MIG is enabled ({desc}). CUDA sees MIG instances, not whole cards; vLLM cannot use tensor parallelism "
            "across MIG instances.",
            "Use a MIG instance's UUID in CUDA_VISIBLE_DEVICES for a small model, or disable MIG: "
            "sudo nvidia-smi -i <index> -mig 0 (then reset the GPU).",
        )
    if pending:
        return Check("mig", "warn", "A MIG mode change is pending a GPU reset.", "Reset the GPU or reboot.")
    if all(g.mig_mode is None for g in nv.gpus):
        return Check("mig", "skip", "MIG is not supported on these GPUs.")
    return Check("mig", "ok", "MIG is off.")


def check_ecc(nv: NvmlReport) -> Check:
    fails: list[str] = []
    warns: list[str] = []
    known = False
    for g in nv.gpus:
        fields = (
            g.ecc_enabled,
            g.ecc_volatile_uncorrected,
            g.retired_pages_dbe,
            g.remapped_rows_uncorrectable,
        )
        if any(f is not None for f in fields):
            known = True
        if g.ecc_volatile_uncorrected:
            fails.append(f"GPU {g.index}: {g.ecc_volatile_uncorrected} uncorrectable ECC error(s) since boot")
        if g.retired_pages_pending:
            fails.append(f"GPU {g.index}: page retirement pending (needs a GPU reset)")
        if g.remapped_rows_failure:
            fails.append(f"GPU {g.index}: row remapping failed")
        if g.remapped_rows_pending:
            fails.append(f"GPU {g.index}: row remapping pending (needs a GPU reset)")
        if g.ecc_aggregate_uncorrected:
            warns.append(f"GPU {g.index}: {g.ecc_aggregate_uncorrected} uncorrectable ECC error(s) in its lifetime")
        if g.retired_pages_dbe or g.retired_pages_sbe:
            warns.append(f"GPU {g.index}: {(g.retired_pages_dbe or 0) + (g.retired_pages_sbe or 0)} retired page(s)")
        if g.remapped_rows_uncorrectable:
            warns.append(f"GPU {g.index}: {g.remapped_rows_uncorrectable} row(s) remapped after uncorrectable errors")
        if g.ecc_enabled is not None and g.ecc_pending is not None and g.ecc_pending != g.ecc_enabled:
            now, then = ("on", "off") if g.ecc_enabled else ("off", "on")
            warns.append(f"GPU {g.index}: ECC is {now} but turns {then} at the next reboot (memory size changes)")
    if fails:
        return Check(
            "ecc",
            "fail",
            "; ".join(fails + warns) + ".",
            "Drain the GPU, reset it (sudo nvidia-smi -r -i <index>) or reboot; if errors recur, the board needs "
            "service (check `nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER` and dmesg for Xid 48/63/64/94/95).",
        )
    if warns:
        return Check("ecc", "warn", "; ".join(warns) + ".", "Watch for new errors; plan to have the board checked.")
    if not known:
        return Check("ecc", "skip", "NVML does not report ECC on these GPUs (GeForce and vGPU boards do not).")
    off = [g.index for g in nv.gpus if g.ecc_enabled is False]
    note = f" ECC is off on GPU(s) {', '.join(map(str, off))}." if off else ""
    return Check("ecc", "ok", "No uncorrectable ECC errors, retired pages or failed row remaps." + note)


# ---------------------------------------------------------------- P2P, NVLink, topology, PCIe


def _is_nvlink_machine(nv: NvmlReport) -> bool:
    return len(nv.gpus) > 1 and bool(nv.pairs) and all(p.nvlinks > 0 for p in nv.pairs)


def check_p2p(nv: NvmlReport, sysf: SystemFacts) -> Check:
    if len(nv.gpus) < 2:
        return Check("p2p", "skip", "One GPU: no peer-to-peer pairs.")
    bad = [p for p in nv.pairs if p.p2p is False]
    unknown = [p for p in nv.pairs if p.p2p is None]
    if bad:
        statuses = sorted({p.p2p_read or "?" for p in bad})
        pairs = ", ".join(f"{p.a}-{p.b}" for p in bad[:8]) + (" …" if len(bad) > 8 else "")
        consumer = any("GeForce" in g.name or "RTX" in g.name for g in nv.gpus)
        why = (
            "NVIDIA does not enable P2P on GeForce cards"
            if consumer
            else "the chipset/topology or an IOMMU/ACS setting refuses it"
        )
        fix = (
            "vLLM detects this and uses NCCL over host memory (slower all-reduce). If start-up hangs after NCCL "
            "init, set NCCL_P2P_DISABLE=1 and use --disable-custom-all-reduce; prefer data parallelism (replicas) "
            "over tensor parallelism on these cards."
        )
        if sysf.iommu_enabled and not sysf.iommu_passthrough:
            fix += " An IOMMU is on without iommu=pt: disable ACS on the PCIe switches or boot with iommu=pt."
        return Check("p2p", "warn", f"P2P unavailable for pair(s) {pairs} ({', '.join(statuses)}): {why}.", fix)
    if unknown and len(unknown) == len(nv.pairs):
        return Check("p2p", "skip", "NVML does not report P2P status on these GPUs.")
    detail = f"P2P works between all {len(nv.pairs)} GPU pair(s)."
    if sysf.iommu_enabled and not sysf.iommu_passthrough and not _is_nvlink_machine(nv):
        return Check(
            "p2p",
            "warn",
            detail + " But an IOMMU is active without iommu=pt: with PCIe ACS on, P2P traffic is routed through the "
            "root complex and NCCL can hang or silently corrupt data.",
            "Boot with iommu=pt (or disable ACS on the PCIe switches); if NCCL hangs, NCCL_P2P_DISABLE=1.",
        )
    return Check("p2p", "ok", detail)


def check_nvlink(nv: NvmlReport) -> Check:
    with_links = [g for g in nv.gpus if g.nvlinks]
    if not with_links:
        reasons = sorted({g.unavailable["nvlink"] for g in nv.gpus if "nvlink" in g.unavailable})
        said = f" (NVML: {', '.join(reasons)})" if reasons else ""
        if len(nv.gpus) < 2:
            # A lone SXM board in a VM answers NotSupported too: nothing to link to, not a fault.
            return Check("nvlink", "skip", f"One GPU: no NVLink peers{said}.")
        return Check("nvlink", "skip", f"No NVLink on these GPUs{said}; GPUs talk over PCIe.")
    down = [(g.index, sum(1 for lk in g.nvlinks if not lk.active), len(g.nvlinks)) for g in with_links]
    down = [d for d in down if d[1]]
    summary = ", ".join(f"GPU {g.index}: {g.active_nvlinks} active" for g in with_links)
    if down:
        desc = "; ".join(f"GPU {i}: {n} of {t} link(s) down" for i, n, t in down)
        return Check(
            "nvlink",
            "warn",
            f"NVLink links are down ({desc}). {summary}.",
            "Check `nvidia-smi nvlink -s` and the fabric manager (systemctl status nvidia-fabricmanager on NVSwitch "
            "systems); a reset or reboot often restores them.",
        )
    return Check("nvlink", "ok", f"NVLink: {summary}.")


def topology_matrix(nv: NvmlReport) -> list[list[str]]:
    """``nvidia-smi topo -m`` style cells: X on the diagonal, NV# or PIX/PXB/PHB/NODE/SYS elsewhere."""
    idx = [g.index for g in nv.gpus]
    rows: list[list[str]] = []
    for a in idx:
        row = []
        for b in idx:
            if a == b:
                row.append("X")
                continue
            p = nv.pair(a, b)
            row.append(p.label if p is not None else "?")
        rows.append(row)
    return rows


def check_topology(nv: NvmlReport) -> Check:
    if len(nv.gpus) < 2:
        return Check("topology", "skip", "One GPU: no topology between GPUs.")
    labels = {f"{p.a}-{p.b}": p.label for p in nv.pairs}
    text = ", ".join(f"{k} {v}" for k, v in labels.items())
    sys_pairs = [p for p in nv.pairs if not p.nvlinks and p.topology == "SYS"]
    if all(p.topology is None and not p.nvlinks for p in nv.pairs):
        return Check("topology", "skip", "NVML does not report the topology of these GPUs.")
    if sys_pairs:
        return Check(
            "topology",
            "warn",
            f"{text}. Pairs marked SYS cross CPU sockets (slowest path for P2P/all-reduce).",
            "Keep each tensor-parallel group within one NUMA node (e.g. CUDA_VISIBLE_DEVICES to GPUs that are "
            "PIX/PXB/PHB/NODE to each other); use data parallelism across sockets.",
        )
    return Check("topology", "ok", text + ".")


def check_pcie(nv: NvmlReport) -> Check:
    narrow: list[str] = []
    slow: list[str] = []
    parts: list[str] = []
    known = False
    for g in nv.gpus:
        if g.pcie_width_current is None and g.pcie_gen_current is None:
            continue
        known = True
        parts.append(
            f"GPU {g.index} gen {g.pcie_gen_current or '?'}/{g.pcie_gen_max or '?'} "
            f"x{g.pcie_width_current or '?'}/x{g.pcie_width_max or '?'}"
        )
        if g.pcie_width_current and g.pcie_width_max and g.pcie_width_current < g.pcie_width_max:
            narrow.append(f"GPU {g.index} runs x{g.pcie_width_current} of x{g.pcie_width_max}")
        if g.pcie_gen_current and g.pcie_gen_max and g.pcie_gen_current < g.pcie_gen_max:
            slow.append(f"GPU {g.index}")
    if not known:
        return Check("pcie", "skip", "NVML does not report PCIe link state on these GPUs.")
    detail = "PCIe current/max: " + "; ".join(parts) + "."
    if slow:
        detail += (
            f" {', '.join(slow)} below max generation — normal at idle (the link slows down to save power); "
            "check again under load."
        )
    if narrow:
        return Check(
            "pcie",
            "warn",
            detail + " Link width is downtrained: " + "; ".join(narrow) + ".",
            "Reseat the card or check the slot/riser and BIOS lane settings; a narrow link slows weight loading and "
            "PCIe all-reduce.",
        )
    return Check("pcie", "ok", detail)


# ---------------------------------------------------------------- host


def shm_needed(tp_ranks: int) -> int:
    """/dev/shm NCCL needs for a tensor-parallel group of ``tp_ranks`` ranks (see SHM_PER_RANK_BYTES)."""
    return SHM_PER_RANK_BYTES * tp_ranks if tp_ranks > 1 else 0


def check_shm(sysf: SystemFacts, *, tp_ranks: int | None, n_gpus: int) -> Check:
    total = sysf.shm_total_bytes
    if total is None:
        return Check("shm", "skip", f"Could not read {sysf.shm_path}.")
    detail = f"{sysf.shm_path}: {human_size(total)} (free {_gi(sysf.shm_free_bytes)})."
    fix = (
        "Give the container more shared memory: docker run --ipc=host (or --shm-size=16g); on Kubernetes mount an "
        "emptyDir with medium: Memory at /dev/shm."
    )
    ranks = tp_ranks if tp_ranks is not None else (2 if n_gpus > 1 else 1)
    need = shm_needed(ranks)
    if need and total < need:
        who = f"TP group of {ranks} ranks" if tp_ranks is not None else "any TP > 1 on this machine"
        return Check(
            "shm",
            "fail",
            detail + f" NCCL needs about {human_size(need)} for a {who} (160 MiB per rank); it will fail with "
            "'Error while creating shared memory segment' / 'unhandled system error'.",
            fix,
        )
    if total < SHM_WARN_BYTES:
        return Check("shm", "warn", detail + " Under 1 GiB.", fix)
    return Check("shm", "ok", detail)


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
    nvlink = nv is not None and _is_nvlink_machine(nv)
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


def check_versions(sysf: SystemFacts) -> Check:
    v = sysf.versions
    nccl = v.get("nvidia-nccl-cu13") or v.get("nvidia-nccl-cu12")
    parts = [
        f"vLLM {v.get('vllm') or 'not installed'}",
        f"torch {v.get('torch') or 'not installed'}" + (f" (CUDA {sysf.torch_cuda})" if sysf.torch_cuda else ""),
        f"NCCL {nccl or 'not installed (pip)'}",
    ]
    return Check("versions", "ok", ", ".join(parts) + ".")


# ---------------------------------------------------------------- profile


def _profile_gpus(nv: NvmlReport, profile: Profile) -> tuple[list[NvmlGpu], list[str]]:
    """The GPUs the profile would use, and what is wrong with its selection."""
    want = profile.placement.world_size
    problems: list[str] = []
    chosen: list[NvmlGpu] = []
    if not profile.placement.gpus:
        chosen = list(nv.gpus[:want])
    else:
        for ref in profile.placement.gpus:
            g = None
            if ref.isdigit():
                g = next((x for x in nv.gpus if x.index == int(ref)), None)
            else:
                g = next((x for x in nv.gpus if x.uuid and x.uuid.lower().startswith(ref.lower())), None)
            if g is None:
                problems.append(f"GPU {ref} is not here")
            else:
                chosen.append(g)
    if len(chosen) < want:
        problems.append(f"the placement needs {want} GPU(s) (TP × PP × DP), {len(chosen)} available")
    return chosen, problems


def profile_checks(facts: MachineFacts, profile: Profile) -> list[Check]:
    """``--profile``: its GPUs exist, free memory covers the estimate, TP divides the heads, /dev/shm, the port."""
    out: list[Check] = []
    nv = facts.nvml
    if nv is None or not nv.gpus:
        out.append(Check("profile.gpus", "skip", "No GPU visible: cannot check the profile's GPUs."))
        out.append(Check("profile.memory", "skip", "No GPU visible: cannot check free memory."))
    else:
        chosen, problems = _profile_gpus(nv, profile)
        if problems:
            out.append(
                Check(
                    "profile.gpus",
                    "fail",
                    "; ".join(problems) + f" (NVML sees {len(nv.gpus)}).",
                    "Re-plan on this machine: qwendeploy plan <model> --gpus auto -o <profile> --force",
                )
            )
        else:
            planned = profile.hardware.gpus
            names = [g.name for g in chosen]
            mismatch = bool(planned) and not profile.hardware.simulated and planned[: len(names)] != names
            detail = f"Uses GPU(s) {', '.join(str(g.index) for g in chosen)}: {', '.join(sorted(set(names)))}."
            if mismatch:
                out.append(
                    Check(
                        "profile.gpus",
                        "warn",
                        detail + f" The profile was planned for {', '.join(sorted(set(planned)))}.",
                        "Re-plan on this machine: qwendeploy plan <model> --gpus auto -o <profile> --force",
                    )
                )
            else:
                out.append(Check("profile.gpus", "ok", detail))
        out.append(_profile_memory(chosen, profile))
    out.append(_profile_heads(profile))
    out.append(_profile_shm(facts.system, profile))
    out.append(_profile_ports(facts.system, profile))
    return out


def _profile_memory(chosen: list[NvmlGpu], profile: Profile) -> Check:
    util = profile.engine.gpu_memory_utilization
    per_gpu = profile.estimate.per_gpu
    need_est = max((e.footprint_bytes or e.total_bytes for e in per_gpu), default=0)
    short: list[str] = []
    lines: list[str] = []
    for g in chosen:
        if g.memory_total is None or g.memory_free is None:
            continue
        total = g.memory_total - (g.memory_reserved or 0)
        requested = int(util * total)
        lines.append(f"GPU {g.index}: free {human_size(g.memory_free)}, vLLM asks {human_size(requested)}")
        if g.memory_free < requested:
            short.append(
                f"GPU {g.index}: free {human_size(g.memory_free)} < gpu_memory_utilization {util} × "
                f"{human_size(total)} = {human_size(requested)}"
            )
        elif need_est and g.memory_free < need_est:
            short.append(f"GPU {g.index}: free {human_size(g.memory_free)} < estimate {human_size(need_est)}")
    if not lines:
        return Check("profile.memory", "skip", "NVML does not report free memory for the profile's GPUs.")
    if short:
        best = min((g.memory_free or 0) / max(1, (g.memory_total or 0) - (g.memory_reserved or 0)) for g in chosen)
        return Check(
            "profile.memory",
            "fail",
            "vLLM will refuse to start: " + "; ".join(short) + ".",
            f"Free the GPUs (see gpu_processes), or lower gpu_memory_utilization below {best:.2f} and re-plan "
            f"(qwendeploy plan <model> --gpus auto --gpu-memory-utilization {max(0.05, best - 0.02):.2f} -o ...).",
        )
    return Check("profile.memory", "ok", "; ".join(lines) + ".")


def _profile_heads(profile: Profile) -> Check:
    # The planner's own TP rules (heads, KV-head replication, MLP width, quantized-kernel shapes): one source.
    from qwendeploy.core.models import find_model
    from qwendeploy.core.planner import tp_rule_violation, valid_tp_sizes

    tp = profile.placement.tensor_parallel_size
    spec = find_model(profile.model.id)
    if spec is None:
        return Check("profile.tp_heads", "skip", f"{profile.model.id} is not in the built-in catalog.")
    violation = tp_rule_violation(spec, tp, quantization=profile.model.quantization)
    if violation is not None:
        ok = valid_tp_sizes(spec, 8, quantization=profile.model.quantization)
        return Check(
            "profile.tp_heads",
            "fail",
            f"tensor_parallel_size={tp} cannot serve {spec.id}: {violation[1]}.",
            f"Use tensor_parallel_size in {{{', '.join(map(str, ok))}}} (re-plan with qwendeploy plan).",
        )
    return Check("profile.tp_heads", "ok", f"TP {tp} divides {spec.num_attention_heads} attention heads.")


def ranks_on_this_node(profile: Profile) -> int:
    """Ranks of one model replica that share this node's /dev/shm: TP×PP on one node; on several nodes only
    the replica's share of a node (``cluster.gpus_per_node``, else the world size spread over the nodes)."""
    pl = profile.placement
    if pl.nodes <= 1:
        return pl.gpus_per_replica
    per_node = profile.cluster.gpus_per_node or -(-pl.world_size // pl.nodes)
    return max(1, min(pl.gpus_per_replica, per_node))


def _profile_shm(sysf: SystemFacts, profile: Profile) -> Check:
    pl = profile.placement
    ranks = ranks_on_this_node(profile)
    total = sysf.shm_total_bytes
    if total is None:
        return Check("profile.shm", "skip", f"Could not read {sysf.shm_path}.")
    need = shm_needed(ranks)
    layout = f"TP×PP={pl.gpus_per_replica}"
    if ranks != pl.gpus_per_replica:
        layout += f" over {pl.nodes} nodes: {ranks} rank(s) on this node"
    if need and total < need:
        return Check(
            "profile.shm",
            "fail",
            f"{sysf.shm_path} is {human_size(total)}; {layout} needs about {human_size(need)}.",
            "docker run --ipc=host (or --shm-size=16g).",
        )
    where = " on this node" if pl.nodes > 1 else ""
    return Check(
        "profile.shm", "ok", f"{sysf.shm_path} {human_size(total)} is enough for {ranks} rank(s){where} ({layout})."
    )


def _profile_ports(sysf: SystemFacts, profile: Profile) -> Check:
    pl = profile.placement
    n = pl.data_parallel_size if pl.data_parallel_mode == "servers" else 1
    ports = [profile.server.port + i for i in range(n)]
    known = {p: sysf.ports_free[p] for p in ports if p in sysf.ports_free}
    if not known:
        return Check("profile.port", "skip", "Ports not checked.")
    busy = [p for p, free in known.items() if not free]
    if busy:
        return Check(
            "profile.port",
            "fail",
            f"Port(s) {', '.join(map(str, busy))} on {profile.server.host} are in use.",
            f"Find the owner: ss -ltnp 'sport = :{busy[0]}'; or set server.port in the profile.",
        )
    return Check("profile.port", "ok", f"Port(s) {', '.join(map(str, ports))} free.")


def multi_node_check_name(name: str) -> str:
    """The stable id doctor gives a multi-node check: ``ray gpus`` → ``multinode.ray_gpus``."""
    return "multinode." + name.replace(" ", "_")


def multi_node_checks(
    profile: Profile,
    net: HostNetFacts,
    cluster: RayCluster | None,
    *,
    cluster_error: str | None = None,
    cluster_hint: str | None = None,
) -> list[Check]:
    """A multi-node profile on this host: interface selection, host name resolution, and — where the Ray
    cluster answers — its nodes, GPUs, per-node environment and versions against the profile."""
    from qwendeploy.core.cluster import check_cluster, check_host_network

    found = check_host_network(profile, net)
    if cluster is not None:
        found += check_cluster(profile, cluster)
    out = [Check(multi_node_check_name(c.name), c.status, c.detail, c.fix) for c in found]
    if cluster is None:
        out.append(
            Check(
                multi_node_check_name("ray cluster"),
                "warn",
                f"Ray cluster not checked: {cluster_error or 'no address'}",
                cluster_hint or "Start it with `qwendeploy cluster head PROFILE` / `cluster join`.",
            )
        )
    return out
