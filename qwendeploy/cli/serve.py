"""``qwendeploy serve PROFILE``: launch and supervise vLLM's OpenAI-compatible server from a profile."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import BadInput, PreflightFailed

if TYPE_CHECKING:  # deferred at run time: `serve --help` must not import rich, psutil or the supervisor
    from rich.console import Console
    from rich.status import Status

    from qwendeploy.adapters.supervisor import Event, Launch
    from qwendeploy.core.checks import Check
    from qwendeploy.core.docker_args import DockerSpec
    from qwendeploy.core.profile import Profile
    from qwendeploy.core.vllm_args import LaunchSpec


class Runtime(str, Enum):
    native = "native"
    docker = "docker"


INSTALL_HINT = "pip install 'qwendeploy[vllm]' (or pass --vllm-bin PATH / set QWENDEPLOY_VLLM_BIN)."


def resolve_vllm_bin(option: str | None, env: dict[str, str], *, required: bool) -> str:
    """``--vllm-bin``, then ``$QWENDEPLOY_VLLM_BIN``, then ``vllm`` on PATH; ``vllm`` when not required."""
    for source, value in (("--vllm-bin", option), ("QWENDEPLOY_VLLM_BIN", env.get("QWENDEPLOY_VLLM_BIN"))):
        if value:
            found = shutil.which(value, path=env.get("PATH")) if os.sep not in value else value
            if found and os.path.isfile(found) and os.access(found, os.X_OK):
                return found
            if required:
                raise BadInput(f"{source} {value} is not an executable file.", hint=INSTALL_HINT)
            return value
    found = shutil.which("vllm", path=env.get("PATH"))
    if found:
        return found
    if required:
        raise BadInput("vLLM is not installed: no `vllm` executable on PATH.", hint=INSTALL_HINT)
    return "vllm"


def serve(
    profile: Annotated[Path, typer.Argument(help="Profile written by `qwendeploy plan -o`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact command(s) and environment, then exit.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (with --dry-run: one JSON object).")
    ] = False,
    port: Annotated[int | None, typer.Option(help="Override server.port (replica i uses port+i).")] = None,
    host: Annotated[str | None, typer.Option(help="Override server.host (default 127.0.0.1).")] = None,
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


# long: picks runtime, binaries, Ray address and log directory — the serve use case (app/serve.py) takes these
# over in phase B.
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
    from qwendeploy.adapters.profile_files import read_profile
    from qwendeploy.adapters.supervisor import Launch
    from qwendeploy.core import docker_args, vllm_args

    if port is not None and not 1 <= port <= 65535:
        raise BadInput(f"--port {port} is not a TCP port (1-65535).")
    if host is not None:
        from qwendeploy.core.profile import check_host

        try:
            check_host(host)
        except ValueError as e:
            raise BadInput(f"--host {host[:60]!r}: {e}.") from None
    env = dict(os.environ)
    prof = read_profile(profile_path)
    key_env = prof.server.api_key_env
    if dry_run and key_env and not env.get(key_env):
        # Show the command anyway (the key is redacted); the real launch refuses without it.
        typer.echo(f"warning: {key_env} is not set; `serve` without --dry-run will refuse to start.", err=True)
        env[key_env] = "unset"

    launches: list[Launch] = []
    rendered: list[dict[str, Any]] = []
    if runtime is Runtime.docker:
        if shutil.which("docker", path=env.get("PATH")) is None and not dry_run:
            raise BadInput("--runtime docker: no `docker` executable on PATH.")
        hf_cache = Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
        dspecs = docker_args.build_docker_specs(
            prof,
            base_env=env,
            host=host,
            port=port,
            image=image or docker_args.docker_image(prof.estimate.vllm_version),
            hf_cache=str(hf_cache),
        )
        for d in dspecs:
            r = docker_args.render_docker(d)
            rendered.append(r)
            launches.append(
                Launch(
                    spec=d.launch,
                    argv=d.argv,
                    env=d.env,
                    display=r["command"],
                    after_stop=_docker_rm(d),
                    container=(d.argv[0], d.container_name),
                )
            )
        bin_shown = "docker"
        specs = [d.launch for d in dspecs]
    else:
        bin_path = resolve_vllm_bin(vllm_bin, env, required=not dry_run)
        ray_address = None
        if prof.placement.nodes > 1:
            from qwendeploy.adapters.ray_cluster import default_address

            ray_address = default_address(env, prof.cluster.ray_port)
        specs = vllm_args.build_launch_specs(
            prof, vllm_bin=bin_path, base_env=env, host=host, port=port, ray_address=ray_address
        )
        rendered = [vllm_args.render_spec(s) for s in specs]
        launches = [Launch.native(s) for s in specs]
        bin_shown = bin_path

    if dry_run:
        _print_dry_run(prof, profile_path, runtime, bin_shown, rendered, json_out)
        return 0

    from rich.console import Console

    from qwendeploy.adapters import serve_guard
    from qwendeploy.adapters.supervisor import default_log_dir

    console = Console(highlight=False, soft_wrap=True)
    directory = log_dir or default_log_dir(env)
    # One serve per profile name and per port, held until this process ends (however it ends).
    locks = serve_guard.acquire(
        serve_guard.default_lock_dir(env), names=[prof.name, *(s.name for s in specs)], ports=[s.port for s in specs]
    )
    try:
        checks = _preflight(prof, specs, env, strict=strict, insecure=insecure, runtime=runtime, log_dir=directory)
        _print_checks(console, checks, json_out)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            first = failed[0]
            more = f" ({len(failed) - 1} more check(s) failed, listed above)" if len(failed) > 1 else ""
            raise PreflightFailed(first.detail + more, hint=first.fix or None)
        nvml_ok = not any(c.name == "gpus" and c.status in ("skip", "fail") for c in checks)
        return _run(prof, launches, console, json_out, directory, gpu_check=nvml_ok)
    finally:
        locks.release()


def _docker_rm(d: DockerSpec) -> Callable[[], None]:
    def rm() -> None:
        subprocess.run(
            [d.argv[0], "rm", "-f", d.container_name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )

    return rm


def _print_dry_run(
    prof: Profile, path: Path, runtime: Runtime, bin_shown: str, rendered: list[dict[str, Any]], json_out: bool
) -> None:
    if json_out:
        doc = {
            "profile": str(path),
            "name": prof.name,
            "runtime": runtime.value,
            "vllm_bin": bin_shown,
            "data_parallel_mode": prof.placement.data_parallel_mode,
            "clients": _clients(prof, rendered),
            "servers": rendered,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    for r in rendered:
        gpus = ",".join(r["gpus"]) if r["gpus"] else f"from the Ray cluster ({prof.placement.nodes} nodes)"
        typer.echo(f"# {r['name']}: GPUs {gpus} → http://{r['host']}:{r['port']} (model name {r['served_model_name']})")
        for k, v in r["env"].items():
            typer.echo(f"#   env {shlex.quote(k)}={shlex.quote(v)}")  # quoted: a line break cannot leave the comment
        typer.echo(r["command"])
    if prof.placement.data_parallel_size > 1:
        typer.echo(f"# clients: {_clients(prof, rendered)}")


def _clients(prof: Profile, rendered: list[dict[str, Any]]) -> str:
    """How clients reach the replicas (one endpoint with vLLM's data-parallel mode, else N of them)."""
    urls = [f"http://{'127.0.0.1' if r['host'] in ('0.0.0.0', '::') else r['host']}:{r['port']}/v1" for r in rendered]
    dp = prof.placement.data_parallel_size
    if dp <= 1:
        return f"one endpoint, {urls[0]}" if urls else ""
    if len(urls) == 1:
        return f"{dp} replicas behind one endpoint, {urls[0]}: vLLM balances requests (--data-parallel-size {dp})."
    return f"{dp} independent servers on {', '.join(urls)}: put a load balancer in front or spread requests yourself."


def _preflight(
    prof: Profile,
    specs: Sequence[LaunchSpec],
    env: dict[str, str],
    *,
    strict: bool,
    insecure: bool,
    runtime: Runtime,
    log_dir: Path,
) -> list[Check]:
    from qwendeploy.adapters import preflight
    from qwendeploy.cli import wiring

    checks = preflight.run_preflight(
        prof, specs, env=env, strict=strict, insecure=insecure, probe=wiring.probe_report, log_dir=log_dir
    )
    if runtime is Runtime.docker:  # the container gets --ipc=host; the host's /dev/shm does not matter
        checks = [c for c in checks if c.name != "shm"]
    return checks


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


def _gpu_holders(pids: set[int]) -> list[tuple[int, int | None]]:
    from qwendeploy.cli import wiring

    report = wiring.probe_report()
    return [(p.pid, p.used_bytes) for g in report.gpus for p in g.processes if p.pid in pids]


def _run(
    prof: Profile,
    launches: Sequence[Launch],
    console: Console,
    json_out: bool,
    directory: Path,
    *,
    gpu_check: bool,
) -> int:
    from qwendeploy.adapters.supervisor import Policy, Supervisor

    renderer = _Renderer(console, json_out)
    if prof.placement.data_parallel_size > 1 and not json_out:
        rendered = [{"host": launch.spec.host, "port": launch.spec.port} for launch in launches]
        console.print(f"Clients: {_clients(prof, rendered)}", markup=False)
    sup = Supervisor(
        launches,
        Policy.from_profile(prof),
        log_dir=directory,
        on_event=renderer,
        profile=prof,
        gpu_holders=_gpu_holders if gpu_check else None,
    )
    try:
        outcome = sup.run()
    finally:
        renderer.close()
    return outcome.exit_code


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

    def __call__(self, e: Event) -> None:
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

    def _examples(self, e: Event) -> None:
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
