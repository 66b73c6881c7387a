"""/dev/shm: the one rule doctor (``shm``, ``profile.shm``) and serve's preflight (``shm``) share.

What NCCL and vLLM actually need, and so what the rule compares:

- **Free space, not the mount's size.** NCCL's SHM transport creates its segments in /dev/shm with
  ``posix_fallocate`` (``shmutils.cc``); on tmpfs that reserves pages at once and fails with ENOSPC ("Error while
  creating shared memory segment ... unhandled system error") when the *free* space is short. Space another
  program (or a previous run's leftovers) already holds is not available, so a 16 GiB mount with 100 MiB free fails
  like a 100 MiB mount. Where a probe knows only the size, the size stands in for the free space.
- **The ranks that share this node's /dev/shm in one communicator.** One replica's TP × PP ranks on this node
  (``ranks_on_this_node``); with vLLM's own data parallelism (``data_parallel_mode: vllm``) the replicas on this node
  join one data-parallel group, so their ranks count together.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core.checks import Check, size_text
from qwendeploy.core.machine_facts import SystemFacts
from qwendeploy.core.profile import Profile
from qwendeploy.core.units import GiB, MiB, human_size

SHM_WARN_BYTES = 1 * GiB
"""NVIDIA's containers are started with --shm-size=1g at least; below that, warn."""
SHM_PER_RANK_BYTES = 160 * MiB
"""NCCL's SHM transport maps one ~9 MiB segment (7–9.2 MiB in the logs: 4 MiB NCCL_BUFFSIZE × protocols) per channel
and peer, up to 16 channels per rank: ≈ 144 MiB a rank, rounded up to 160 MiB for vLLM's own shared-memory
broadcast queue. The rule: fail when the free /dev/shm < 160 MiB × the ranks sharing it (``shm_ranks``)."""

SHM_FIX = (
    "Give the container more shared memory: docker run --ipc=host (or --shm-size=16g); on Kubernetes mount an "
    "emptyDir with medium: Memory at /dev/shm; on a host: mount -o remount,size=16G /dev/shm."
)


def shm_needed(tp_ranks: int) -> int:
    """/dev/shm NCCL needs for a communicator of ``tp_ranks`` ranks on this node (see SHM_PER_RANK_BYTES)."""
    return SHM_PER_RANK_BYTES * tp_ranks if tp_ranks > 1 else 0


def ranks_on_this_node(profile: Profile) -> int:
    """Ranks of one model replica that share this node's /dev/shm: TP×PP on one node; on several nodes only
    the replica's share of a node (``cluster.gpus_per_node``, else the world size spread over the nodes)."""
    pl = profile.placement
    if pl.nodes <= 1:
        return pl.gpus_per_replica
    per_node = profile.cluster.gpus_per_node or -(-pl.world_size // pl.nodes)
    return max(1, min(pl.gpus_per_replica, per_node))


def shm_ranks(profile: Profile) -> int:
    """Ranks in the largest communicator on this node that uses /dev/shm (module docstring)."""
    pl = profile.placement
    ranks = ranks_on_this_node(profile)
    if pl.data_parallel_mode == "vllm" and pl.data_parallel_size > 1:
        per_node = profile.cluster.gpus_per_node or -(-pl.world_size // max(1, pl.nodes))
        ranks = max(ranks, min(per_node, ranks * pl.data_parallel_size))
    return ranks


@dataclass(frozen=True)
class ShmVerdict:
    """The rule's answer: what it compared (``available``: free bytes, else the mount's size) with ``need``."""

    ranks: int
    need: int
    available: int

    @property
    def short(self) -> bool:
        return bool(self.need) and self.available < self.need


def judge_shm(total: int, free: int | None, ranks: int) -> ShmVerdict:
    """The /dev/shm rule: ``ranks`` ranks need ``shm_needed(ranks)`` bytes free."""
    available = total if free is None else min(free, total)  # free never exceeds the size; a probe may disagree
    return ShmVerdict(ranks=ranks, need=shm_needed(ranks), available=available)


def check_shm(sysf: SystemFacts, *, tp_ranks: int | None, n_gpus: int) -> Check:
    """doctor's ``shm``: the profile's ranks when given, else any TP > 1 on a machine with several GPUs."""
    total = sysf.shm_total_bytes
    if total is None:
        return Check("shm", "skip", f"Could not read {sysf.shm_path}.")
    detail = f"{sysf.shm_path}: {human_size(total)} (free {size_text(sysf.shm_free_bytes)})."
    ranks = tp_ranks if tp_ranks is not None else (2 if n_gpus > 1 else 1)
    v = judge_shm(total, sysf.shm_free_bytes, ranks)
    if v.short:
        who = f"TP group of {ranks} ranks" if tp_ranks is not None else "any TP > 1 on this machine"
        return Check(
            "shm",
            "fail",
            detail + f" NCCL needs about {human_size(v.need)} free for a {who} (160 MiB per rank); it will fail "
            "with 'Error while creating shared memory segment' / 'unhandled system error'.",
            SHM_FIX,
        )
    if total < SHM_WARN_BYTES:
        return Check("shm", "warn", detail + " Under 1 GiB.", SHM_FIX)
    return Check("shm", "ok", detail)


def profile_shm(sysf: SystemFacts, profile: Profile) -> Check:
    """doctor's ``profile.shm``."""
    pl = profile.placement
    total = sysf.shm_total_bytes
    if total is None:
        return Check("profile.shm", "skip", f"Could not read {sysf.shm_path}.")
    v = judge_shm(total, sysf.shm_free_bytes, shm_ranks(profile))
    layout = f"TP×PP={pl.gpus_per_replica}"
    if v.ranks != pl.gpus_per_replica:
        layout += f", {v.ranks} rank(s) on this node"
    if v.short:
        return Check(
            "profile.shm",
            "fail",
            f"{sysf.shm_path} has {human_size(v.available)} free (of {human_size(total)}); {layout} needs about "
            f"{human_size(v.need)}.",
            SHM_FIX,
        )
    where = " on this node" if pl.nodes > 1 else ""
    return Check(
        "profile.shm",
        "ok",
        f"{sysf.shm_path} {human_size(total)} is enough for {v.ranks} rank(s){where} ({layout}).",
    )


def serve_shm(profile: Profile, shm_path: str, total: int, free: int) -> list[Check]:
    """serve's preflight ``shm`` (nothing to say when no rank shares /dev/shm)."""
    v = judge_shm(total, free, shm_ranks(profile))
    if not v.need:
        return []
    if v.short:
        return [
            Check(
                "shm",
                "fail",
                f"{shm_path} has {human_size(free)} free (of {human_size(total)}); tensor parallelism needs at "
                f"least {human_size(v.need)} for NCCL and vLLM's shared-memory queues ({v.ranks} ranks).",
                fix=SHM_FIX,
            )
        ]
    return [Check("shm", "ok", f"{shm_path}: {human_size(free)} free")]
