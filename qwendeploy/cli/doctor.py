"""``qwendeploy doctor``: machine checks, log diagnosis and an optional NCCL all-reduce test.

Exit codes: 0 nothing failed, 1 a check failed or a diagnosis was found, 2 bad input. With ``--json`` stdout is
exactly ``{"checks": [...], "diagnoses": [...]}`` and nothing else; with ``--log`` and ``--profile`` together it also
has ``"startup"``: what vLLM reported at start-up beside the plan's prediction (a difference over 2% is flagged).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from qwendeploy.cli.errors import user_errors


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


def _doctor(
    profile_path: Path | None,
    log: str | None,
    json_out: bool,
    nccl_test: bool,
    nccl_timeout: float,
    shm_path: Path,
    dump_facts: bool,
) -> int:
    # Deferred: the doctor's checks, diagnosis engine and pydantic profile are not `plan`'s or `--help`'s cost.
    from qwendeploy.app.doctor import gather_facts, run_doctor
    from qwendeploy.cli import wiring

    # Bad input first: a missing log or a broken profile is exit 2 before anything is probed.
    profile = wiring.read_profile(profile_path) if profile_path is not None else None
    source = wiring.open_log(log) if log is not None else None

    ports = wiring.doctor_ports()
    facts = gather_facts(ports.machine, shm_path, profile)
    if dump_facts:
        typer.echo(json.dumps(facts.to_dict(), indent=2))
        return 0

    def announce(gpus: Sequence[str]) -> None:
        if not json_out:
            typer.echo(f"Running NCCL all-reduce over GPU(s) {', '.join(gpus)} (timeout {nccl_timeout:.0f} s)…")

    result = run_doctor(
        ports,
        facts=facts,
        profile=profile,
        source=source,
        nccl_test=nccl_test,
        nccl_timeout=nccl_timeout,
        on_nccl_start=announce,
    )
    if json_out:
        out: dict[str, object] = {"checks": [c.to_dict() for c in result.checks], "diagnoses": result.diagnoses}
        if result.startup is not None:
            out["startup"] = result.startup
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        from rich.console import Console

        from qwendeploy.cli import render_doctor

        render_doctor.render(
            Console(highlight=False), facts, result.checks, result.diagnoses, result.nccl, result.startup
        )
    return result.exit_code
