"""How GPUs talk to each other: P2P, NVLink, the topology matrix, PCIe link width."""

from __future__ import annotations

from qwendeploy.core.checks import Check
from qwendeploy.core.machine_facts import NvmlReport, SystemFacts


def is_nvlink_machine(nv: NvmlReport) -> bool:
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
    if sysf.iommu_enabled and not sysf.iommu_passthrough and not is_nvlink_machine(nv):
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
