"""``qwendeploy serve PROFILE``: launch and supervise vLLM's OpenAI-compatible server from a profile."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.core.server_address import DEFAULT_HOST, http_url

if TYPE_CHECKING:  # deferred at run time: `serve --help` must not import rich, psutil or the supervisor
    from rich.console import Console
    from rich.status import Status

    from qwendeploy.app.ports import ServeEvent
    from qwendeploy.app.serve import Prepared
    from qwendeploy.core.checks import Check


class Runtime(str, Enum):
    native = "native"
    docker = "docker"


def serve(
    profile: Annotated[Path, typer.Argument(help="Profile written by `qwendeploy plan -o`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact command(s) and environment, then exit.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (with --dry-run: one JSON object).")
    ] = False,
    port: Annotated[int | None, typer.Option(help="Override server.port (replica i uses port+i).")] = None,
    host: Annotated[str | None, typer.Option(help=f"Override server.host (default {DEFAULT_HOST}).")] = None,
    vllm_bin: Annotated[
        str | None, typer.Option("--vllm-bin", help="vLLM executable (else $QWENDEPLOY_VLLM_BIN, else vllm on PATH).")
    ] = None,
    runtime: Annotated[
        Runtime, typer.Option(help="native: run vllm here; docker: run the vllm/vllm-openai image.")
    ] = Runtime.native,
    image: Annotated[
        str | None,
        typer.Option(
            help="Docker image for --runtime docker (default: vllm/vllm-openai at the profile's vLLM release)."
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (exit 2) when NVML is missing instead of skipping GPU checks.")
    ] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback host without an API key.")] = False,
    log_dir: Annotated[
        Path | None,
        typer.Option(
            "--log-dir", help="Log directory (default $QWENDEPLOY_HOME/logs or ~/.local/state/qwendeploy/logs)."
        ),
    ] = None,
) -> None:
    """Launch and supervise a vLLM server from a profile (exit 0 clean stop, 1 gave up, 2 bad input/preflight)."""
    with user_errors():
        code = _serve(profile, dry_run, json_out, port, host, vllm_bin, runtime, image, strict, insecure, log_dir)
    raise typer.Exit(code)


def _serve(
    profile_path: Path,
    dry_run: bool,
    json_out: bool,
    port: int | None,
    host: str | None,
    vllm_bin: str | None,
    runtime: Runtime,
    image: str | None,
    strict: bool,
    insecure: bool,
    log_dir: Path | None,
) -> int:
    from qwendeploy.app import serve as use_case
    from qwendeploy.cli import wiring

    use_case.check_overrides(port, host)
    prof = wiring.read_profile(profile_path)
    request = use_case.ServeRequest(
        profile=prof,
        env=dict(os.environ),
        home=Path.home(),
        runtime="docker" if runtime is Runtime.docker else "native",
        dry_run=dry_run,
        port=port,
        host=host,
        vllm_bin=vllm_bin,
        image=image,
        strict=strict,
        insecure=insecure,
        log_dir=log_dir,
    )
    ports = wiring.serve_ports()
    prepared = use_case.prepare(request, ports)
    for warning in prepared.warnings:
        typer.echo(warning, err=True)
    if dry_run:
        _print_dry_run(prepared, profile_path, json_out)
        return 0
    from rich.console import Console

    observer = _Observer(Console(highlight=False, soft_wrap=True), json_out)
    try:
        return use_case.run(prepared, ports, observer)
    finally:
        observer.close()


def _print_dry_run(prepared: Prepared, path: Path, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(prepared.dry_run_doc(path), indent=2))
        return
    prof = prepared.profile
    for server in prepared.servers:
        r = server.shown
        gpus = ",".join(r["gpus"]) if r["gpus"] else f"from the Ray cluster ({prof.placement.nodes} nodes)"
        typer.echo(
            f"# {r['name']}: GPUs {gpus} → {http_url(r['host'], r['port'])} (model name {r['served_model_name']})"
        )
        for k, v in r["env"].items():
            typer.echo(f"#   env {shlex.quote(k)}={shlex.quote(v)}")  # quoted: a line break cannot leave the comment
        typer.echo(r["command"])
    if prof.placement.data_parallel_size > 1:
        typer.echo(f"# clients: {prepared.clients}")


class _Observer:
    """``app.serve.ServeObserver`` for the terminal or ``--json``: the preflight's checks, then the supervisor's
    events through :class:`_Renderer`."""

    def __init__(self, console: Console, json_out: bool) -> None:
        self.console = console
        self.json_out = json_out
        self.renderer: _Renderer | None = None

    def checks(self, checks: Sequence[Check]) -> None:
        _print_checks(self.console, checks, self.json_out)

    def supervising(self, prepared: Prepared) -> None:
        self.renderer = _Renderer(self.console, self.json_out)
        if prepared.profile.placement.data_parallel_size > 1 and not self.json_out:
            self.console.print(f"Clients: {prepared.clients}", markup=False)

    def event(self, event: ServeEvent) -> None:
        if self.renderer is not None:
            self.renderer(event)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


_MARK = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "skip": "[yellow]-[/]", "fail": "[red]✗[/]"}


def _print_checks(console: Console, checks: Sequence[Check], json_out: bool) -> None:
    from rich.markup import escape

    for c in checks:
        if json_out:
            typer.echo(json.dumps({"event": "preflight", **c.to_dict()}))
            continue
        console.print(f"{_MARK[c.status]} {escape(c.name)}: {escape(c.detail)}")
        if c.fix and c.status != "ok":
            console.print(f"    [dim]{escape(c.fix)}[/]")


class _Renderer:
    """Events → the terminal: phases as a rich status (or plain lines off a TTY), or JSON lines."""

    _LOUD = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Error:", "error:")

    def __init__(self, console: Console, json_out: bool) -> None:
        self.console = console
        self.json_out = json_out
        self.status: Status | None = None
        self.phase: dict[str, str] = {}
        if console.is_terminal and not json_out:
            self.status = console.status("starting vLLM…")
            self.status.start()

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __call__(self, e: ServeEvent) -> None:
        if self.json_out:
            if e.kind != "line":
                sys.stdout.write(
                    json.dumps({"event": e.kind, "name": e.name, "message": e.message, **dict(e.data)}) + "\n"
                )
                sys.stdout.flush()
            return
        from rich.markup import escape

        who = f"[bold]{escape(e.name)}[/] " if e.name else ""
        msg = escape(e.message)
        if e.kind == "line":
            if self.status is not None:
                self.status.update(f"{who}{escape(self.phase.get(e.name, 'starting'))}: [dim]{msg[:150]}[/]")
            if any(m in e.message for m in self._LOUD):
                self.console.print(f"{who}[dim]{msg}[/]")
            return
        if e.kind == "phase":
            self.phase[e.name] = e.message
            self.console.print(f"{who}[cyan]▸ {msg}[/]")
        elif e.kind == "ready":
            self.console.print(f"{who}[bold green]✓ {msg}[/]")
            self._examples(e)
        elif e.kind in ("exited", "timeout", "unhealthy", "gave_up", "leftovers", "stranger"):
            self.console.print(f"{who}[red]{msg}[/]")
        elif e.kind == "diagnosis":
            self.console.print(f"{who}[yellow]diagnosis:[/] {msg}")
            if e.data.get("fix"):
                self.console.print(f"    [dim]fix:[/] {escape(str(e.data['fix']))}")
            for ev in e.data.get("evidence", []):
                self.console.print(f"    [dim]evidence: {escape(str(ev))[:200]}[/]")
            self.console.print(f"    [dim]log: {escape(str(e.data.get('log', '')))}[/]")
        elif e.kind == "start":
            self.console.print(f"{who}{msg}")
            self.console.print(f"    [dim]{escape(str(e.data.get('command', '')))}[/]")
        elif e.kind == "shutdown":
            code = e.data.get("exit_code")
            self.console.print(f"[dim]qwendeploy serve exits {code}: {msg}[/]")
        elif e.kind == "gpu_check":
            ok = e.data.get("ok")
            color = "green" if ok is True else "red" if ok is False else "yellow"
            self.console.print(f"[{color}]{msg}[/]")
        else:
            self.console.print(f"{who}{msg}")

    def _examples(self, e: ServeEvent) -> None:
        from rich.markup import escape

        url = e.data["url"]
        model = e.data["served_model_name"]
        key_env = e.data.get("api_key_env")
        auth = f' -H "Authorization: Bearer ${key_env}"' if key_env else ""
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
        # Quoted for the shell and for Python: a served name holding a quote must not turn the line into a command.
        chat = shlex.quote(f"{url}/v1/chat/completions")
        curl = f"curl {chat} -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}"
        key_expr = f'os.environ["{key_env}"]' if key_env else '"EMPTY"'
        py = (
            f"import os; from openai import OpenAI; client = OpenAI(base_url={json.dumps(url + '/v1')}, "
            f"api_key={key_expr}); "
            f"print(client.chat.completions.create(model={json.dumps(model)}, "
            f'messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)'
        )
        self.console.print(f"    [dim]curl:[/]   {escape(curl)}")
        self.console.print(f"    [dim]python:[/] {escape(py)}")
