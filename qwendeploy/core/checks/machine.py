"""doctor's machine checks, the entry point: judge :class:`MachineFacts` (and optionally a profile) → ok / warn /
fail with the fix, every check in a stable order.

Pure: facts in, checks out. Check names are stable short ids (``nvml``, ``driver``, ``gpu[0].memory``,
``gpu_processes``, ``ecc``, ``p2p``, ``nvlink``, ``topology``, ``pcie``, ``shm``, ``container``,
``cuda_visible_devices``, ``nccl_env``, ``infiniband``, ``memlock``, ``versions``, ``profile.*``); docs/doctor.md
explains each one. A check NVML cannot answer is ``skip``, never a failure.
"""

from __future__ import annotations

from qwendeploy.core.checks import Check, Status
from qwendeploy.core.checks.driver import check_driver, check_nvml
from qwendeploy.core.checks.gpus import check_ecc, check_gpu_memory, check_gpu_processes, check_mig
from qwendeploy.core.checks.host import (
    check_container,
    check_cuda_visible_devices,
    check_infiniband,
    check_memlock,
    check_nccl_env,
)
from qwendeploy.core.checks.interconnect import check_nvlink, check_p2p, check_pcie, check_topology
from qwendeploy.core.checks.profile_fit import profile_checks
from qwendeploy.core.checks.shm import check_shm, ranks_on_this_node
from qwendeploy.core.checks.versions import check_versions
from qwendeploy.core.machine_facts import MachineFacts
from qwendeploy.core.profile import Profile


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
