"""``qwendeploy doctor``: machine checks, log diagnosis and an optional NCCL all-reduce test.

Exit codes: 0 nothing failed, 1 a check failed or a diagnosis was found, 2 bad input. With ``--json`` stdout is
exactly ``{"checks": [...], "diagnoses": [...]}`` and nothing else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qwendeploy.cli import wiring
from qwendeploy.cli.errors import user_errors
from qwendeploy.core.checks import Check
from qwendeploy.core.machine_checks import run_checks
from qwendeploy.core.machine_facts import MachineFacts, NvmlReport
from qwendeploy.core.profile import Profile
from qwendeploy.errors import BadInput, ProbeError, QwendeployError


def doctor(
    profile: Annotated[
        Path | None,
        typer.Option("--profile", "-p", help="Also check this profile against the machine (GPUs, memory, TP, port)."),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option("--log", "-l", help="Diagnose a vLLM/NCCL log file ([bold]-[/] reads stdin)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help='Print {"checks": [...], "diagnoses": [...]} as JSON only.')
    ] = False,
    nccl_test: Annotated[
        bool,
        typer.Option("--nccl-test", help="Run an NCCL all-reduce (1 MiB → 1 GiB) over the GPUs; needs torch."),
    ] = False,
    nccl_timeout: Annotated[
        float, typer.Option("--nccl-timeout", min=1.0, help="Seconds before the NCCL test counts as a hang.")
    ] = 120.0,
    shm_path: Annotated[
        Path, typer.Option("--shm-path", help="Shared-memory mount to check (NCCL uses /dev/shm).")
    ] = Path("/dev/shm"),
    dump_facts: Annotated[
        bool,
        typer.Option(
            "--dump-facts", help="Print what NVML and the host reported as JSON (a fake-NVML test fixture) and exit."
        ),
    ] = False,
) -> None:
    """Check this machine for vLLM (driver, GPUs, P2P, /dev/shm, NCCL env) and diagnose failure logs."""
    with user_errors():
        code = _doctor(profile, log, json_out, nccl_test, nccl_timeout, shm_path, dump_facts)
    raise typer.Exit(code)


def _read_log(log: str) -> list[str]:
    if log == "-":
        return sys.stdin.read().splitlines()
    path = Path(log)
    if path.is_dir():
        raise BadInput(f"{log} is a directory, not a log file.", hint="Pass a vLLM log file, or --log - to read stdin.")
    if not path.is_file():
        raise BadInput(f"Log file {log} does not exist.", hint="Pass a vLLM log file, or --log - to read stdin.")
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise BadInput(f"Cannot read log file {log}: {e.strerror or e}.") from None


def _empty_log(log: str | None) -> Check:
    source = "stdin" if log == "-" else str(log)
    return Check(
        "log",
        "warn",
        f"The log is empty ({source} gave no text): nothing to diagnose.",
        "Pass the log of the failed run (the file serve wrote, or `journalctl -u UNIT` under systemd).",
    )


def _load_profile(path: Path) -> Profile:
    from qwendeploy.adapters.profile_files import read_profile

    return read_profile(path)


def gather_facts(shm_path: Path, profile: Profile | None) -> MachineFacts:
    """NVML (through wiring's seam) and the host's facts; never raises for a missing driver."""
    from qwendeploy.adapters import system

    facts = MachineFacts()
    try:
        facts.nvml = wiring.probe_report()
    except ProbeError as e:
        facts.nvml_error, facts.nvml_hint = e.message, e.hint
    except Exception as e:  # a broken driver stack must not stop doctor from diagnosing a log
        facts.nvml_error = f"NVML query failed: {type(e).__name__}: {e}"
    ports: list[int] = []
    if profile is not None:
        n = profile.placement.data_parallel_size if profile.placement.data_parallel_mode == "servers" else 1
        ports = [profile.server.port + i for i in range(n)]
    facts.system = system.collect(shm_path=shm_path, ports=ports)
    return facts


def _diagnose(lines: list[str], profile: Profile | None, facts: MachineFacts) -> list[dict[str, Any]]:
    try:
        from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose
    except ImportError as e:
        raise QwendeployError(f"The log diagnosis engine is not available: {e}.", exit_code=2) from None
    tp = profile.placement.tensor_parallel_size if profile is not None else None
    env = dict(facts.system.env)
    if profile is not None:
        env.update(profile.env)
    ctx = DiagnosisContext(profile=profile, tensor_parallel_size=tp, env=env)
    return [d.to_dict() for d in diagnose(lines, ctx)]


def _nccl_gpus(nv: NvmlReport | None, profile: Profile | None) -> list[str]:
    if nv is None:
        return []
    if profile is not None:
        if profile.placement.gpus:
            return list(profile.placement.gpus)[: profile.placement.gpus_per_replica]
        return [str(g.index) for g in nv.gpus[: profile.placement.gpus_per_replica]]
    return [str(g.index) for g in nv.gpus if not g.mig_mode]


def _nccl_check_and_diagnosis(outcome: Any, checks: list[Check]) -> tuple[Check, dict[str, Any] | None]:
    """The NCCL test as a check; a hang also as an ``nccl_p2p_hang`` diagnosis carrying the P2P/ACS findings."""
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
    if outcome.status == "hang":
        diag = {
            "category": "nccl_p2p_hang",
            "summary": f"The NCCL all-reduce over {outcome.world_size} GPUs hung ({outcome.message}) Machine checks: "
            f"{findings}.",
            "evidence": [{"line": i + 1, "text": t} for i, t in enumerate(outcome.last_lines[-10:])],
            "fix": fix,
            "confidence": 0.8,
        }
        return Check("nccl_test", "fail", outcome.message + f" {findings}.", fix), diag
    return Check("nccl_test", "fail", outcome.message + " " + " | ".join(outcome.last_lines[-5:]), fix), None


def _multi_node(profile: Profile) -> list[Check]:
    """Interface, host name, and the Ray cluster (at $RAY_ADDRESS, else this host's head port) vs the profile."""
    import os

    from qwendeploy.adapters import ray_cluster, system
    from qwendeploy.core import cluster as core
    from qwendeploy.core.machine_checks import multi_node_checks

    net = system.host_network()
    address = ray_cluster.default_address(os.environ, profile.cluster.ray_port)
    keys = sorted({*core.IFNAME_VARS, core.HOST_IP_VAR, *core.cluster_env(profile)})
    try:
        found = ray_cluster.probe(address, env_keys=keys)
    except (ProbeError, BadInput) as e:
        return multi_node_checks(profile, net, None, cluster_error=e.message, cluster_hint=e.hint)
    return multi_node_checks(profile, net, found)


def _doctor(
    profile_path: Path | None,
    log: str | None,
    json_out: bool,
    nccl_test: bool,
    nccl_timeout: float,
    shm_path: Path,
    dump_facts: bool,
) -> int:
    # Bad input first: a missing log or a broken profile is exit 2 before anything is probed.
    profile = _load_profile(profile_path) if profile_path is not None else None
    lines = _read_log(log) if log is not None else None

    facts = gather_facts(shm_path, profile)
    if dump_facts:
        typer.echo(json.dumps(facts.to_dict(), indent=2))
        return 0
    checks = run_checks(facts, profile)
    if profile is not None and profile.placement.nodes > 1:
        checks += _multi_node(profile)
    diagnoses: list[dict[str, Any]] = []
    nccl: dict[str, Any] | None = None
    if nccl_test:
        from qwendeploy.adapters import nccl_test as nccl_mod

        gpus = _nccl_gpus(facts.nvml, profile)
        if not gpus:
            outcome = nccl_mod.NcclTestOutcome("skipped", 0, message="No GPU visible: nothing to test.")
        else:
            if not json_out:
                typer.echo(f"Running NCCL all-reduce over GPU(s) {', '.join(gpus)} (timeout {nccl_timeout:.0f} s)…")
            outcome = nccl_mod.run(gpus, timeout_s=nccl_timeout)
        check, diag = _nccl_check_and_diagnosis(outcome, checks)
        checks.append(check)
        if diag is not None:
            diagnoses.append(diag)
        nccl = outcome.to_dict()
    if lines is not None:
        if any(line.strip() for line in lines):
            diagnoses += _diagnose(lines, profile, facts)
        else:
            checks.append(_empty_log(log))

    if json_out:
        sys.stdout.write(json.dumps({"checks": [c.to_dict() for c in checks], "diagnoses": diagnoses}) + "\n")
    else:
        from rich.console import Console

        from qwendeploy.cli import render_doctor

        render_doctor.render(Console(highlight=False), facts, checks, diagnoses, nccl)
    failed = any(c.status == "fail" for c in checks)
    found = any(d.get("recognised") for d in diagnoses)
    return 1 if failed or found else 0
