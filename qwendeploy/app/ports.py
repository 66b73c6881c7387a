"""The protocols the use cases reach the outside world through. ``cli/wiring.py`` supplies the real adapters;
tests may supply any object of the same shape."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only, so that app.plan and app.serve start without them
    from collections.abc import Callable, Mapping

    from qwendeploy.core.checks import Check
    from qwendeploy.core.cluster import HostNetFacts, RayCluster
    from qwendeploy.core.docker_args import DockerSpec
    from qwendeploy.core.hardware import Machine
    from qwendeploy.core.machine_facts import MachineFacts
    from qwendeploy.core.models import ModelSpec
    from qwendeploy.core.profile import Profile
    from qwendeploy.core.vllm_args import LaunchSpec


class LogSource(Protocol):
    """A log opened but not read: ``lines()`` streams it once."""

    @property
    def name(self) -> str: ...

    @property
    def age_s(self) -> float | None:
        """Seconds since the file was last written (None: not a file, e.g. stdin)."""

    def lines(self) -> Iterator[str]: ...


class MachineProbe(Protocol):
    """NVML's report (or why there is none) and the host's facts; never raises for a missing driver."""

    def __call__(self, shm_path: Path, ports: Sequence[int]) -> MachineFacts: ...


class ClusterProbe(Protocol):
    """A multi-node profile's surroundings: this host's network facts and the Ray cluster."""

    def host_network(self) -> HostNetFacts: ...

    def ray_cluster(self, ray_port: int, env_keys: Sequence[str]) -> RayCluster:
        """The cluster at $RAY_ADDRESS, else this host's head port. Raises ProbeError/BadInput when none answers."""


class NcclResultLike(Protocol):
    @property
    def bytes(self) -> int: ...
    @property
    def algbw_gbps(self) -> float: ...
    @property
    def busbw_gbps(self) -> float: ...


class NcclOutcome(Protocol):
    """What an NCCL all-reduce test found: status ok, hang, failed or skipped."""

    @property
    def status(self) -> str: ...
    @property
    def world_size(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def results(self) -> Sequence[NcclResultLike]: ...
    @property
    def last_lines(self) -> Sequence[str]: ...

    def to_dict(self) -> dict[str, Any]: ...


class NcclTester(Protocol):
    """Runs the all-reduce test over ``gpus`` (an empty list: a skipped outcome saying there is nothing to test)."""

    def __call__(self, gpus: Sequence[str], timeout_s: float) -> NcclOutcome: ...


# ------------------------------------------------------------------ serve (app/serve.py)


@dataclass(frozen=True)
class Server:
    """One server to start: vLLM's spec (name, host, port, GPUs, argv/env of a native launch), the ``docker run``
    that wraps it under the docker runtime, and its description with every secret redacted (``shown``: what
    ``--dry-run`` prints; ``shown["command"]`` is the command as displayed)."""

    spec: LaunchSpec
    shown: Mapping[str, Any]
    docker: DockerSpec | None = None


class ExecutableFinder(Protocol):
    """An executable file by name (looked up on ``path``, a PATH string) or by path (a name holding a separator);
    None when there is none."""

    def __call__(self, name: str, path: str | None) -> str | None: ...


class RayAddress(Protocol):
    """The Ray cluster a multi-node server attaches to (``HOST:PORT``), from the environment and the profile's
    head port."""

    def __call__(self, env: Mapping[str, str], ray_port: int) -> str: ...


class ServePreflight(Protocol):
    """Serve's checks of the machine (this host's GPUs, or the Ray cluster at ``ray_address`` for a multi-node
    profile; ports, shm, model, log directory, security); never raises for a missing driver (a ``skip``, or a
    ``fail`` when ``strict``)."""

    def __call__(
        self,
        profile: Profile,
        specs: Sequence[LaunchSpec],
        *,
        env: Mapping[str, str],
        strict: bool,
        insecure: bool,
        ray_address: str | None,
        log_dir: Path,
    ) -> list[Check]: ...


class Held(Protocol):
    def release(self) -> None: ...


class ServeLocks(Protocol):
    """Exclusive locks on server names and ports, one serve each. Raises PreflightFailed when another serve holds
    one."""

    def __call__(self, env: Mapping[str, str], names: Sequence[str], ports: Sequence[int]) -> Held: ...


class ServeEvent(Protocol):
    """One thing the supervisor saw (start, line, phase, ready, exited, diagnosis, restart, gave_up, shutdown, …)."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


class Supervise(Protocol):
    """Start ``servers`` and supervise them until a stop request (0) or a give-up (1); ``gpu_check``: look for
    processes of the servers still holding GPU memory after shutdown."""

    def __call__(
        self,
        servers: Sequence[Server],
        profile: Profile,
        log_dir: Path,
        on_event: Callable[[ServeEvent], None],
        *,
        gpu_check: bool,
    ) -> int: ...


# plan


class GpuProbe(Protocol):
    """This machine's GPUs for ``--gpus auto`` or ``0,2,3``. Raises ProbeError (no NVML / driver) or BadInput (a
    GPU that is not here)."""

    def __call__(self, selection: str) -> Machine: ...


class ModelSource(Protocol):
    """A model that is not in the built-in catalog: a local directory with config.json, or a Hub repo id. Raises
    UnknownModel (nothing there, or the Hub unreachable and nothing cached) or BadInput (a config.json the
    estimator cannot read)."""

    def __call__(self, ref: str, revision: str | None) -> ModelSpec: ...


class VllmVersionSource(Protocol):
    """The installed vLLM's version (None: none installed), read without importing vLLM."""

    def __call__(self) -> str | None: ...


class ProfileStore(Protocol):
    """Where ``plan -o`` writes its profile."""

    def check_target(self, path: Path, force: bool) -> None:
        """Raises ProfileExists (there, without ``force``) or BadInput (not writable there) before any planning."""

    def write(self, path: Path, profile: Profile, header: str, force: bool) -> Path:
        """Writes ``profile`` under the ``header`` comment and returns the path written."""
