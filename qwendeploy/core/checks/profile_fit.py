"""Does this profile fit this machine: its GPUs exist, free memory covers the estimate, TP divides the heads,
its ports are free (``doctor --profile``)."""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core.checks import Check
from qwendeploy.core.checks.shm import profile_shm
from qwendeploy.core.machine_facts import MachineFacts, NvmlGpu, NvmlReport, SystemFacts, cuda_total_bytes
from qwendeploy.core.profile import Profile
from qwendeploy.core.units import human_size


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
    out.append(profile_shm(facts.system, profile))
    out.append(_profile_ports(facts.system, profile))
    return out


@dataclass(frozen=True)
class MemoryNeed:
    """What vLLM will take on one GPU: ``requested`` = gpu_memory_utilization × the memory CUDA sees (vLLM refuses
    to start when less is free), ``need`` = that or the plan's footprint estimate for the GPU, whichever is more."""

    requested: int
    need: int
    cuda_total: int


def memory_need(profile: Profile, g: NvmlGpu, position: int) -> MemoryNeed:
    """The one free-memory rule doctor (``profile.memory``) and serve's preflight (``gpu memory``) share:
    ``position`` is the GPU's place in the replica (the estimate's ``per_gpu`` order)."""
    total = cuda_total_bytes(g)
    requested = int(profile.engine.gpu_memory_utilization * total)
    per_gpu = profile.estimate.per_gpu
    est = per_gpu[position] if position < len(per_gpu) else None
    estimate = (est.footprint_bytes or est.total_bytes) if est is not None and est.total_bytes else 0
    return MemoryNeed(requested=requested, need=max(requested, estimate), cuda_total=total)


def _profile_memory(chosen: list[NvmlGpu], profile: Profile) -> Check:
    util = profile.engine.gpu_memory_utilization
    short: list[str] = []
    lines: list[str] = []
    for pos, g in enumerate(chosen):
        if g.memory_total is None or g.memory_free is None:
            continue
        m = memory_need(profile, g, pos)
        lines.append(f"GPU {g.index}: free {human_size(g.memory_free)}, vLLM asks {human_size(m.requested)}")
        if g.memory_free < m.requested:
            short.append(
                f"GPU {g.index}: free {human_size(g.memory_free)} < gpu_memory_utilization {util} × "
                f"{human_size(m.cuda_total)} = {human_size(m.requested)}"
            )
        elif g.memory_free < m.need:
            short.append(f"GPU {g.index}: free {human_size(g.memory_free)} < estimate {human_size(m.need)}")
    if not lines:
        return Check("profile.memory", "skip", "NVML does not report free memory for the profile's GPUs.")
    if short:
        best = min((g.memory_free or 0) / max(1, cuda_total_bytes(g)) for g in chosen)
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


def served_ports(profile: Profile | None) -> list[int]:
    """The ports doctor checks for the profile's server(s): one per replica in ``servers`` data-parallel mode,
    counting up from ``server.port``, else one."""
    if profile is None:
        return []
    pl = profile.placement
    n = pl.data_parallel_size if pl.data_parallel_mode == "servers" else 1
    return [profile.server.port + i for i in range(n)]


def _profile_ports(sysf: SystemFacts, profile: Profile) -> Check:
    ports = served_ports(profile)
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
