"""The doctor use case: machine checks, an optional NCCL all-reduce test and log diagnosis, with the machine,
the Ray cluster, the NCCL test and the log reached through :mod:`qwendeploy.app.ports`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwendeploy.app.ports import ClusterProbe, LogSource, MachineProbe, NcclOutcome, NcclTester
from qwendeploy.core.checks import Check
from qwendeploy.core.checks.machine import run_checks
from qwendeploy.core.checks.multi_node import multi_node_checks
from qwendeploy.core.checks.profile_fit import served_ports
from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose
from qwendeploy.core.diagnosis.evidence import MachineProcess
from qwendeploy.core.diagnosis.startup import StartupReport, compare
from qwendeploy.core.launch_env import HOST_IP_VAR, IFNAME_VARS, cluster_env
from qwendeploy.core.machine_facts import MachineFacts, NvmlReport
from qwendeploy.core.profile import Profile
from qwendeploy.errors import BadInput, ProbeError


@dataclass(frozen=True)
class DoctorPorts:
    """The outside world doctor needs (``cli.wiring.doctor_ports`` builds the real ones)."""

    machine: MachineProbe
    cluster: ClusterProbe
    nccl: NcclTester


@dataclass
class DoctorResult:
    """Everything doctor found; ``exit_code``: 1 when a check failed or a diagnosis was recognised, else 0."""

    facts: MachineFacts
    checks: list[Check]
    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    nccl: dict[str, Any] | None = None
    startup: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        failed = any(c.status == "fail" for c in self.checks)
        found = any(d.get("recognised") for d in self.diagnoses)
        return 1 if failed or found else 0


def gather_facts(machine: MachineProbe, shm_path: Path, profile: Profile | None) -> MachineFacts:
    return machine(shm_path, served_ports(profile))


def run_doctor(
    ports: DoctorPorts,
    *,
    facts: MachineFacts,
    profile: Profile | None,
    source: LogSource | None,
    nccl_test: bool,
    nccl_timeout: float,
    on_nccl_start: Callable[[Sequence[str]], None] | None = None,
) -> DoctorResult:
    """Judge ``facts`` (and ``profile``), run the NCCL test when asked, diagnose the log when given."""
    checks = run_checks(facts, profile)
    if profile is not None and profile.placement.nodes > 1:
        checks += _multi_node(ports.cluster, profile)
    result = DoctorResult(facts=facts, checks=checks)
    if nccl_test:
        gpus = _nccl_gpus(facts.nvml, profile)
        if gpus and on_nccl_start is not None:
            on_nccl_start(gpus)
        outcome = ports.nccl(gpus, nccl_timeout)
        check, diag = _nccl_check_and_diagnosis(outcome, checks, profile, facts)
        checks.append(check)
        if diag is not None:
            result.diagnoses.append(diag)
        result.nccl = outcome.to_dict()
    if source is not None:
        from_log, had_text, report = _diagnose(source, profile, facts)
        if profile is not None:
            result.startup = _startup(report, profile)
        if had_text:
            result.diagnoses += from_log
        else:
            checks.append(_empty_log(source.name))
    return result


def _empty_log(name: str) -> Check:
    return Check(
        "log",
        "warn",
        f"The log is empty ({name} gave no text): nothing to diagnose.",
        "Pass the log of the failed run (the file serve wrote, or `journalctl -u UNIT` under systemd).",
    )


def _context(
    profile: Profile | None,
    facts: MachineFacts,
    log_age_s: float | None = None,
    nccl_test: tuple[str, str, tuple[str, ...]] | None = None,
) -> DiagnosisContext:
    """What doctor knows besides the log: the profile, the environment, the driver and the GPU processes."""
    tp = profile.placement.tensor_parallel_size if profile is not None else None
    env = dict(facts.system.env)
    if profile is not None:
        env.update(profile.env)
    nv = facts.nvml
    procs: dict[int, MachineProcess] = {}
    for g in nv.gpus if nv is not None else ():
        for p in g.processes:
            name = (p.cmdline or p.name or "?")[:80]
            procs[p.pid] = MachineProcess(pid=p.pid, name=name, orphan=p.orphan, vllm=p.vllm_role is not None)
    return DiagnosisContext(
        profile=profile,
        tensor_parallel_size=tp,
        env=env,
        driver_version=nv.driver_version if nv is not None else None,
        gpu_processes=tuple(procs.values()),
        log_age_s=log_age_s,
        nccl_test=nccl_test,
    )


def _diagnose(
    source: LogSource, profile: Profile | None, facts: MachineFacts
) -> tuple[list[dict[str, Any]], bool, StartupReport]:
    """The log's diagnoses, whether it had any text at all, and vLLM's start-up figures — in one streamed pass."""
    seen = [False]
    report = StartupReport()

    def counted() -> Iterator[str]:
        for i, line in enumerate(source.lines(), 1):
            if not seen[0] and line.strip():
                seen[0] = True
            report.feed(i, line)
            yield line

    found = diagnose(counted(), _context(profile, facts, source.age_s))
    return [d.to_dict() for d in found], seen[0], report


def _startup(report: StartupReport, profile: Profile) -> dict[str, Any]:
    rows = compare(report, profile.estimate)
    return {
        "reported": report.to_dict(),
        "comparison": [r.to_dict() for r in rows],
        "flagged": any(r.flagged for r in rows),
        "vllm_version_planned": profile.estimate.vllm_version,
    }


def _nccl_gpus(nv: NvmlReport | None, profile: Profile | None) -> list[str]:
    if nv is None:
        return []
    if profile is not None:
        if profile.placement.gpus:
            return list(profile.placement.gpus)[: profile.placement.gpus_per_replica]
        return [str(g.index) for g in nv.gpus[: profile.placement.gpus_per_replica]]
    return [str(g.index) for g in nv.gpus if not g.mig_mode]


NCCL_TEST_HANG_RULE = "nccl-test-hang"
"""The catalog rule a hung NCCL test is reported as (the diagnosis comes from the catalog, not built here)."""


def _nccl_check_and_diagnosis(
    outcome: NcclOutcome, checks: list[Check], profile: Profile | None, facts: MachineFacts
) -> tuple[Check, dict[str, Any] | None]:
    """The NCCL test as a check; a hang also as the catalog's ``nccl-test-hang`` diagnosis carrying the P2P/ACS
    findings."""
    if outcome.status == "skipped":
        return Check("nccl_test", "skip", outcome.message, outcome.message if "torch" in outcome.message else ""), None
    if outcome.status == "ok":
        last = outcome.results[-1] if outcome.results else None
        detail = f"All-reduce over {outcome.world_size} GPUs finished in {outcome.elapsed_s:.1f} s"
        if last is not None:
            detail += f"; at {last.bytes >> 20} MiB: algbw {last.algbw_gbps:.1f} GB/s, busbw {last.busbw_gbps:.1f} GB/s"
        return Check("nccl_test", "ok", detail + "."), None
    related = [c for c in checks if c.name in ("p2p", "topology", "nvlink", "nccl_env", "shm") and c.status != "ok"]
    findings = "; ".join(f"{c.name}: {c.detail}" for c in related) or "the P2P checks found nothing wrong"
    fix = (
        "Run with NCCL_P2P_DISABLE=1 to confirm (if it then passes, P2P is broken on this machine); disable PCIe "
        "ACS / boot with iommu=pt, or keep NCCL_P2P_DISABLE=1 and --disable-custom-all-reduce. "
        "NCCL_DEBUG=INFO shows the transport in use."
    )
    last_lines = list(outcome.last_lines)
    if outcome.status == "hang":
        hung = (f"over {outcome.world_size} GPUs: {outcome.message}", findings, tuple(last_lines[-10:]))
        found = diagnose([], _context(profile, facts, nccl_test=hung))
        diag = next((d.to_dict() for d in found if d.rule_id == NCCL_TEST_HANG_RULE), None)
        return Check("nccl_test", "fail", outcome.message + f" {findings}.", fix), diag
    return Check("nccl_test", "fail", outcome.message + " " + " | ".join(last_lines[-5:]), fix), None


def _multi_node(cluster: ClusterProbe, profile: Profile) -> list[Check]:
    """Interface, host name, and the Ray cluster (at $RAY_ADDRESS, else this host's head port) vs the profile."""
    net = cluster.host_network()
    keys = sorted({*IFNAME_VARS, HOST_IP_VAR, *cluster_env(profile)})
    try:
        found = cluster.ray_cluster(profile.cluster.ray_port, keys)
    except (ProbeError, BadInput) as e:
        return multi_node_checks(profile, net, None, cluster_error=e.message, cluster_hint=e.hint)
    return multi_node_checks(profile, net, found)
