"""The serve use case: from a profile to supervised vLLM servers, with the outside world reached through
:mod:`qwendeploy.app.ports` (``cli.wiring.serve_ports`` builds the real adapters).

Each of serve's choices is made here, once: the runtime (vLLM on this host, or the ``vllm/vllm-openai`` image
under docker), the executables (``vllm``, ``docker``), the Ray cluster a multi-node profile attaches to, the log
directory, which preflight checks apply, what a failed preflight means (exit 2), and whether the GPU check after
shutdown can be trusted. ``--dry-run`` takes the same path as far as :func:`prepare`; :func:`run` goes on to
the locks, the preflight and the supervisor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from qwendeploy.app.ports import (
    ExecutableFinder,
    RayAddress,
    ServeEvent,
    ServeLocks,
    ServePreflight,
    Server,
    Supervise,
)
from qwendeploy.core.checks import Check
from qwendeploy.core.docker_args import build_docker_specs, docker_image, render_docker
from qwendeploy.core.profile import Profile, check_host
from qwendeploy.core.server_address import client_url
from qwendeploy.core.vllm_args import LaunchSpec, build_launch_specs, render_spec
from qwendeploy.errors import BadInput, PreflightFailed

Runtime = Literal["native", "docker"]

INSTALL_HINT = "pip install 'qwendeploy[vllm]' (or pass --vllm-bin PATH / set QWENDEPLOY_VLLM_BIN)."


@dataclass(frozen=True)
class ServePorts:
    """The outside world serve needs (``cli.wiring.serve_ports`` builds the real ones)."""

    executables: ExecutableFinder
    ray_address: RayAddress
    preflight: ServePreflight
    locks: ServeLocks
    supervise: Supervise


@dataclass(frozen=True)
class ServeRequest:
    """What the user asked for: the profile and the command line's overrides, and the environment serve runs in
    (``env``: the variables; ``home``: the user's home directory, for the default log and Hugging Face cache
    directories)."""

    profile: Profile
    env: Mapping[str, str]
    home: Path
    runtime: Runtime = "native"
    dry_run: bool = False
    port: int | None = None
    host: str | None = None
    vllm_bin: str | None = None
    image: str | None = None
    strict: bool = False
    insecure: bool = False
    log_dir: Path | None = None


@dataclass(frozen=True)
class Prepared:
    """Serve's decisions for one request, before anything runs."""

    profile: Profile
    runtime: Runtime
    executable: str
    """The vLLM executable (native), or ``docker``."""
    servers: tuple[Server, ...]
    env: Mapping[str, str]
    log_dir: Path
    ray_address: str | None = None
    """The Ray cluster a multi-node profile attaches to (None: one node)."""
    strict: bool = False
    insecure: bool = False
    warnings: tuple[str, ...] = ()
    """Said before anything else (e.g. a dry run without the API key the real launch needs)."""

    @property
    def specs(self) -> list[LaunchSpec]:
        return [s.spec for s in self.servers]

    @property
    def clients(self) -> str:
        return clients(self.profile, [(s.spec.host, s.spec.port) for s in self.servers])

    def dry_run_doc(self, profile_path: Path) -> dict[str, Any]:
        """``serve --dry-run --json``'s object."""
        return {
            "profile": str(profile_path),
            "name": self.profile.name,
            "runtime": self.runtime,
            "vllm_bin": self.executable,
            "data_parallel_mode": self.profile.placement.data_parallel_mode,
            "clients": self.clients,
            "servers": [dict(s.shown) for s in self.servers],
        }


class ServeObserver(Protocol):
    """Who is told what happens (the CLI renders it); called in this order."""

    def checks(self, checks: Sequence[Check]) -> None:
        """The preflight's results, before a failure among them stops serve."""

    def supervising(self, prepared: Prepared) -> None:
        """The preflight passed; the servers are about to start."""

    def event(self, event: ServeEvent) -> None:
        """One event of the supervisor."""


def check_overrides(port: int | None, host: str | None) -> None:
    """``--port`` and ``--host`` as given on the command line (BadInput when unusable)."""
    if port is not None and not 1 <= port <= 65535:
        raise BadInput(f"--port {port} is not a TCP port (1-65535).")
    if host is not None:
        try:
            check_host(host)
        except ValueError as e:
            raise BadInput(f"--host {host[:60]!r}: {e}.") from None


def vllm_binary(option: str | None, env: Mapping[str, str], find: ExecutableFinder, *, required: bool) -> str:
    """``--vllm-bin``, then ``$QWENDEPLOY_VLLM_BIN``, then ``vllm`` on PATH; ``vllm`` when none is found and
    none is required (a dry run prints the command anyway).

    Raises:
        BadInput: ``required`` and the one named is not an executable file, or none is named and PATH has none.
    """
    for source, value in (("--vllm-bin", option), ("QWENDEPLOY_VLLM_BIN", env.get("QWENDEPLOY_VLLM_BIN"))):
        if value:
            found = find(value, env.get("PATH"))
            if found:
                return found
            if required:
                raise BadInput(f"{source} {value} is not an executable file.", hint=INSTALL_HINT)
            return value
    found = find("vllm", env.get("PATH"))
    if found:
        return found
    if required:
        raise BadInput("vLLM is not installed: no `vllm` executable on PATH.", hint=INSTALL_HINT)
    return "vllm"


def default_log_dir(env: Mapping[str, str], home: Path) -> Path:
    """``$QWENDEPLOY_HOME/logs``, else ``$XDG_STATE_HOME/qwendeploy/logs`` or ``~/.local/state/qwendeploy/logs``."""
    if env.get("QWENDEPLOY_HOME"):
        return Path(env["QWENDEPLOY_HOME"]) / "logs"
    state = env.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    return Path(state) / "qwendeploy" / "logs"


def prepare(request: ServeRequest, ports: ServePorts) -> Prepared:
    """Serve's decisions for ``request``: runtime, executables, Ray address, servers and log directory.

    Raises:
        BadInput: the executable the runtime needs is missing (not for a dry run), or the overrides are unusable.
    """
    prof = request.profile
    env = dict(request.env)
    ray_address = ports.ray_address(env, prof.cluster.ray_port) if prof.placement.nodes > 1 else None
    warnings: list[str] = []
    key_env = prof.server.api_key_env
    if request.dry_run and key_env and not env.get(key_env):
        # Show the command anyway (the key is redacted); the real launch refuses without it.
        warnings.append(f"warning: {key_env} is not set; `serve` without --dry-run will refuse to start.")
        env[key_env] = "unset"
    if request.runtime == "docker":
        servers = _docker_servers(request, env, ports.executables)
        executable = "docker"
    else:
        executable = vllm_binary(request.vllm_bin, env, ports.executables, required=not request.dry_run)
        specs = build_launch_specs(
            prof, vllm_bin=executable, base_env=env, host=request.host, port=request.port, ray_address=ray_address
        )
        servers = tuple(Server(spec=s, shown=render_spec(s)) for s in specs)
    return Prepared(
        profile=prof,
        runtime=request.runtime,
        executable=executable,
        servers=servers,
        env=env,
        log_dir=request.log_dir or default_log_dir(env, request.home),
        ray_address=ray_address,
        strict=request.strict,
        insecure=request.insecure,
        warnings=tuple(warnings),
    )


def _docker_servers(request: ServeRequest, env: Mapping[str, str], find: ExecutableFinder) -> tuple[Server, ...]:
    if find("docker", env.get("PATH")) is None and not request.dry_run:
        raise BadInput("--runtime docker: no `docker` executable on PATH.")
    prof = request.profile
    hf_cache = Path(env.get("HF_HOME") or request.home / ".cache" / "huggingface").expanduser()
    dspecs = build_docker_specs(
        prof,
        base_env=env,
        host=request.host,
        port=request.port,
        image=request.image or docker_image(prof.estimate.vllm_version),
        hf_cache=str(hf_cache),
    )
    return tuple(Server(spec=d.launch, shown=render_docker(d), docker=d) for d in dspecs)


def preflight_checks(prepared: Prepared, ports: ServePorts) -> list[Check]:
    """The preflight that applies to this runtime."""
    checks = ports.preflight(
        prepared.profile,
        prepared.specs,
        env=prepared.env,
        strict=prepared.strict,
        insecure=prepared.insecure,
        ray_address=prepared.ray_address,
        log_dir=prepared.log_dir,
    )
    if prepared.runtime == "docker":  # the container gets --ipc=host; the host's /dev/shm does not matter
        checks = [c for c in checks if c.name != "shm"]
    return checks


def run(prepared: Prepared, ports: ServePorts, observer: ServeObserver) -> int:
    """Hold the profile's and ports' locks, run the preflight, then supervise until a stop request (exit 0) or
    a give-up (exit 1).

    Raises:
        PreflightFailed: a preflight check failed (exit 2; the first failure's text and fix, the rest counted),
            or another serve holds a lock.
    """
    prof = prepared.profile
    # One serve per profile name and per port, held until this process ends (however it ends).
    held = ports.locks(prepared.env, [prof.name, *(s.name for s in prepared.specs)], [s.port for s in prepared.specs])
    try:
        checks = preflight_checks(prepared, ports)
        observer.checks(checks)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            first = failed[0]
            more = f" ({len(failed) - 1} more check(s) failed, listed above)" if len(failed) > 1 else ""
            raise PreflightFailed(first.detail + more, hint=first.fix or None)
        # Without NVML there is nothing to compare after shutdown: no check rather than a false "all clear".
        nvml_ok = not any(c.name == "gpus" and c.status in ("skip", "fail") for c in checks)
        observer.supervising(prepared)
        return ports.supervise(prepared.servers, prof, prepared.log_dir, observer.event, gpu_check=nvml_ok)
    finally:
        held.release()


def clients(profile: Profile, endpoints: Sequence[tuple[str, int]]) -> str:
    """How clients reach the replicas (one endpoint with vLLM's data-parallel mode, else N of them)."""
    urls = [f"{client_url(host, port)}/v1" for host, port in endpoints]
    dp = profile.placement.data_parallel_size
    if dp <= 1:
        return f"one endpoint, {urls[0]}" if urls else ""
    if len(urls) == 1:
        return f"{dp} replicas behind one endpoint, {urls[0]}: vLLM balances requests (--data-parallel-size {dp})."
    return f"{dp} independent servers on {', '.join(urls)}: put a load balancer in front or spread requests yourself."
