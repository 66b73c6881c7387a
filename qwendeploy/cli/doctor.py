"""``qwendeploy doctor``: machine checks, log diagnosis and an optional NCCL all-reduce test.

Exit codes: 0 nothing failed, 1 a check failed or a diagnosis was found, 2 bad input. With ``--json`` stdout is
exactly ``{"checks": [...], "diagnoses": [...]}`` and nothing else; with ``--log`` and ``--profile`` together it also
has ``"startup"``: what vLLM reported at start-up beside the plan's prediction (a difference over 2% is flagged).
"""

from __future__ import annotations

import io
import json
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from qwendeploy.adapters.log_reader import stream_lines
from qwendeploy.cli import wiring
from qwendeploy.cli.errors import user_errors
from qwendeploy.core.checks import Check
from qwendeploy.core.checks.machine import run_checks
from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose
from qwendeploy.core.diagnosis.evidence import MachineProcess
from qwendeploy.core.diagnosis.startup import StartupReport, compare
from qwendeploy.core.machine_facts import MachineFacts, NvmlReport
from qwendeploy.core.profile import Profile
from qwendeploy.errors import BadInput, ProbeError


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


@dataclass
class _LogSource:
    """The log to diagnose, opened but not read: ``lines()`` streams it once (bounded memory for any size)."""

    name: str
    stream: IO[str]
    age_s: float | None = None
    """Seconds since the file was last written (None for stdin)."""

    def lines(self) -> Iterator[str]:
        try:
            yield from stream_lines(self.stream)
        except OSError as e:
            raise BadInput(f"Cannot read the log {self.name}: {e.strerror or e}.") from None
        finally:
            if self.stream is not sys.stdin:
                self.stream.close()


def _open_log(log: str) -> _LogSource:
    hint = "Pass a vLLM log file, or --log - to read stdin."
    if log == "-":
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise BadInput("--log - reads the log from stdin, but stdin is closed.", hint=hint)
        try:
            stdin.fileno()
        except io.UnsupportedOperation:
            pass  # an in-memory stand-in (tests, embedding): readable, no descriptor
        except (OSError, ValueError):
            raise BadInput("--log - reads the log from stdin, but stdin is closed.", hint=hint) from None
        return _LogSource("stdin", stdin)
    path = Path(log)
    if path.is_dir():
        raise BadInput(f"{log} is a directory, not a log file.", hint=hint)
    if not path.exists():
        raise BadInput(f"Log file {log} does not exist.", hint=hint)
    try:
        st = path.stat()
        stream = path.open(encoding="utf-8", errors="replace", newline="")
    except OSError as e:
        raise BadInput(f"Cannot read log file {log}: {e.strerror or e}.") from None
    age = time.time() - st.st_mtime if stat.S_ISREG(st.st_mode) else None
    return _LogSource(log, stream, max(0.0, age) if age is not None else None)


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
    source: _LogSource, profile: Profile | None, facts: MachineFacts
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


def _nccl_check_and_diagnosis(
    outcome: Any, checks: list[Check], profile: Profile | None, facts: MachineFacts
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
    if outcome.status == "hang":
        hung = (f"over {outcome.world_size} GPUs: {outcome.message}", findings, tuple(outcome.last_lines[-10:]))
        found = diagnose([], _context(profile, facts, nccl_test=hung))
        diag = next((d.to_dict() for d in found if d.rule_id == "nccl-test-hang"), None)
        return Check("nccl_test", "fail", outcome.message + f" {findings}.", fix), diag
    return Check("nccl_test", "fail", outcome.message + " " + " | ".join(outcome.last_lines[-5:]), fix), None


def _multi_node(profile: Profile) -> list[Check]:
    """Interface, host name, and the Ray cluster (at $RAY_ADDRESS, else this host's head port) vs the profile."""
    import os

    from qwendeploy.adapters import ray_cluster, system
    from qwendeploy.core import cluster as core
    from qwendeploy.core.checks.multi_node import multi_node_checks

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
    source = _open_log(log) if log is not None else None

    facts = gather_facts(shm_path, profile)
    if dump_facts:
        typer.echo(json.dumps(facts.to_dict(), indent=2))
        return 0
    checks = run_checks(facts, profile)
    if profile is not None and profile.placement.nodes > 1:
        checks += _multi_node(profile)
    diagnoses: list[dict[str, Any]] = []
    nccl: dict[str, Any] | None = None
    startup: dict[str, Any] | None = None
    if nccl_test:
        from qwendeploy.adapters import nccl_test as nccl_mod

        gpus = _nccl_gpus(facts.nvml, profile)
        if not gpus:
            outcome = nccl_mod.NcclTestOutcome("skipped", 0, message="No GPU visible: nothing to test.")
        else:
            if not json_out:
                typer.echo(f"Running NCCL all-reduce over GPU(s) {', '.join(gpus)} (timeout {nccl_timeout:.0f} s)…")
            outcome = nccl_mod.run(gpus, timeout_s=nccl_timeout)
        check, diag = _nccl_check_and_diagnosis(outcome, checks, profile, facts)
        checks.append(check)
        if diag is not None:
            diagnoses.append(diag)
        nccl = outcome.to_dict()
    if source is not None:
        from_log, had_text, report = _diagnose(source, profile, facts)
        if profile is not None:
            startup = _startup(report, profile)
        if had_text:
            diagnoses += from_log
        else:
            checks.append(_empty_log(log))

    if json_out:
        out: dict[str, Any] = {"checks": [c.to_dict() for c in checks], "diagnoses": diagnoses}
        if startup is not None:
            out["startup"] = startup
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        from rich.console import Console

        from qwendeploy.cli import render_doctor

        render_doctor.render(Console(highlight=False), facts, checks, diagnoses, nccl, startup)
    failed = any(c.status == "fail" for c in checks)
    found = any(d.get("recognised") for d in diagnoses)
    return 1 if failed or found else 0
