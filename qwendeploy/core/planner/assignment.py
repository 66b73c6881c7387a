"""GPU assignment: which GPUs each replica's TP groups take, how they are linked, and what is left out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from qwendeploy.core.hardware import Gpu, Machine, is_geforce
from qwendeploy.core.units import gib_text

LinkClass = Literal["none", "nvlink", "pcie-p2p", "pcie-no-p2p", "network"]


def link_class(machine: Machine, group: Sequence[Gpu]) -> LinkClass:
    """How the GPUs of one TP group reach each other (the slowest pair decides)."""
    if len(group) < 2:
        return "none"
    if len({g.node for g in group}) > 1:
        return "network"
    worst: LinkClass = "nvlink"
    rank = {"nvlink": 0, "pcie-p2p": 1, "pcie-no-p2p": 2}
    for i, a in enumerate(group):
        for b in group[i + 1 :]:
            link = machine.link(a.index, b.index)
            if link is not None:
                if link.kind == "nvlink" and link.p2p is not False:
                    cls: LinkClass = "nvlink"
                elif link.kind == "nvlink":
                    cls = "pcie-no-p2p"  # NVLink bridged but CUDA peer access denied (e.g. between containers)
                else:
                    p2p = link.p2p if link.p2p is not None else not (is_geforce(a) or is_geforce(b))
                    cls = "pcie-p2p" if p2p else "pcie-no-p2p"
            elif machine.interconnect == "nvlink":
                cls = "nvlink"
            else:
                cls = "pcie-no-p2p" if (is_geforce(a) or is_geforce(b)) else "pcie-p2p"
            if rank[cls] > rank[worst]:
                worst = cls
    return worst


def _custom_all_reduce(link: LinkClass, tp: int) -> bool:
    # vLLM's custom all-reduce needs P2P; on PCIe it is used for two GPUs only.
    return tp > 1 and (link == "nvlink" or (link == "pcie-p2p" and tp == 2))


# ----------------------------------------------------------------------------------------------------------
# GPU assignment
# ----------------------------------------------------------------------------------------------------------


def _tp_groups(machine: Machine, tp: int) -> list[tuple[Gpu, ...]]:
    """TP groups, never crossing a node, the group whose weakest GPU has the most free memory first."""
    groups: list[tuple[Gpu, ...]] = []
    for node in sorted({g.node for g in machine.gpus}):
        mine = sorted((g for g in machine.gpus if g.node == node), key=lambda g: (-g.free_bytes, g.index))
        for i in range(0, len(mine) - tp + 1, tp):
            groups.append(tuple(mine[i : i + tp]))
    groups.sort(key=lambda grp: -min(g.free_bytes for g in grp))
    return groups


def _dp_options(machine: Machine, tp: int, pp: int) -> list[int]:
    """Replica counts worth trying for a TP × PP shape, most replicas first.

    On GPUs with equal free memory fewer replicas only lose throughput, so the most that fit the inventory is
    the only count. When free memory differs (memory held by other processes), every replica is sized to the
    GPU with the least free memory, so each smaller count that leaves a busier GPU out is tried too.
    """
    most = max(1, len(machine.gpus) // (tp * pp))
    groups = _tp_groups(machine, tp)
    usable = min(most, len(groups) // pp)
    if usable < 1:
        return [most]
    weakest = [min(g.free_bytes for grp in groups[: pp * d] for g in grp) for d in range(1, usable + 1)]
    out = [most]
    for d in range(usable, 0, -1):
        if d < most and (d == usable or weakest[d - 1] > weakest[d]):
            out.append(d)
    return out


def _skips_busy_gpu(machine: Machine, used: Sequence[Gpu]) -> bool:
    """Whether a GPU with less free memory than every GPU of the placement was left out."""
    if not used:
        return False
    taken = {(g.node, g.index) for g in used}
    floor = min(g.free_bytes for g in used)
    return any(g.free_bytes < floor for g in machine.gpus if (g.node, g.index) not in taken)


def left_out(machine: Machine, used: Sequence[Gpu]) -> str:
    """Which GPUs of the inventory a placement leaves unused, and why (empty when it uses them all)."""
    taken = {(g.node, g.index) for g in used}
    rest = [g for g in machine.gpus if (g.node, g.index) not in taken]
    if not rest or not used:
        return ""
    floor = min(g.free_bytes for g in used)
    busy = [g for g in rest if g.free_bytes < floor]
    idle = [g for g in rest if g.free_bytes >= floor]
    parts = []
    if busy:
        frees = ", ".join(f"GPU {g.index} has {gib_text(g.free_bytes)} free" for g in busy)
        parts.append(
            f"leaves GPU {', '.join(str(g.index) for g in busy)} out for less free memory ({frees}; the GPUs used "
            f"have {gib_text(floor)} or more, and every replica is sized to its GPU with the least free memory)"
        )
    if idle:
        parts.append(
            f"{'and ' if busy else 'leaves '}GPU {', '.join(str(g.index) for g in idle)} unused (too few GPUs "
            "left for another replica of this shape)"
        )
    return " ".join(parts)


def _assign(machine: Machine, tp: int, pp: int, dp: int) -> list[tuple[Gpu, ...]] | None:
    """GPUs of each replica: TP groups never cross a node; GPUs with the most free memory first."""
    groups = _tp_groups(machine, tp)
    if len(groups) < pp * dp:
        return None
    replicas = []
    for r in range(dp):
        stages = groups[r * pp : (r + 1) * pp]
        replicas.append(tuple(g for grp in stages for g in grp))
    return replicas
