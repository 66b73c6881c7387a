"""Where the CLI gets its hardware adapters — and the one seam tests replace.

Commands never import pynvml themselves; they call :func:`probe_report` / :func:`probe_machine` here, and the
use cases of :mod:`qwendeploy.app` get their adapters from the builders below (:func:`doctor_ports`,
:func:`plan_ports`).

Test seam (documented, not an environment variable): tests assign

* ``wiring.BACKEND_FACTORY`` — a zero-argument callable returning an NVML backend: the ``pynvml`` module by
  default, a ``tests/fakes/fake_nvml.FakeNvml`` in tests;
* ``wiring.PROCESS_LOOKUP`` — PID → ``ProcessInfo`` (psutil by default; a fake machine carries its own table),

usually with ``monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)``. Product code never sets them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from qwendeploy.adapters.log_reader import LogFile
    from qwendeploy.adapters.nccl_test import NcclTestOutcome
    from qwendeploy.adapters.nvml import NvmlReport, ProcessInfo
    from qwendeploy.adapters.serve_guard import Locks
    from qwendeploy.app.doctor import DoctorPorts
    from qwendeploy.app.plan import PlanPorts
    from qwendeploy.app.ports import ServeEvent, Server
    from qwendeploy.app.serve import ServePorts
    from qwendeploy.core.checks import Check
    from qwendeploy.core.cluster import HostNetFacts, RayCluster
    from qwendeploy.core.hardware import Machine
    from qwendeploy.core.machine_facts import MachineFacts
    from qwendeploy.core.models import ModelSpec
    from qwendeploy.core.profile import Profile
    from qwendeploy.core.vllm_args import LaunchSpec

BACKEND_FACTORY: Callable[[], Any] | None = None
"""None: the real ``pynvml`` module (imported lazily inside the NVML adapter)."""

PROCESS_LOOKUP: Callable[[int], ProcessInfo | None] | None = None
"""None: psutil in this PID namespace."""


def nvml_backend() -> Any | None:
    """The NVML backend to use (None lets the adapter import pynvml)."""
    return BACKEND_FACTORY() if BACKEND_FACTORY is not None else None


def probe_report() -> NvmlReport:
    """Everything NVML says about this machine. Raises ProbeError when there is no NVML / driver."""
    from qwendeploy.adapters import nvml

    return nvml.probe(nvml_backend(), processes=PROCESS_LOOKUP)


def probe_machine(selection: str = "auto") -> Machine:
    """The planner's Machine for ``--gpus auto`` or ``--gpus 0,2,3``.

    Raises:
        ProbeError: no NVML / driver (the hint suggests a simulated inventory).
        BadInput: ``selection`` names a GPU that is not here.
    """
    return probe_report().to_machine(selection)


def read_profile(path: Path) -> Profile:
    """A profile file, validated (ProfileInvalid / BadInput on a bad one)."""
    from qwendeploy.adapters.profile_files import read_profile as read

    return read(path)


def open_log(log: str) -> LogFile:
    """``doctor --log``: a file or ``-`` (stdin), opened but not read."""
    from qwendeploy.adapters.log_reader import open_log as open_

    return open_(log)


def gather_machine_facts(shm_path: Path, ports: Sequence[int]) -> MachineFacts:
    """NVML (through this module's seam) and the host's facts; never raises for a missing driver."""
    from qwendeploy.adapters import system
    from qwendeploy.core.machine_facts import MachineFacts
    from qwendeploy.errors import ProbeError

    facts = MachineFacts()
    try:
        facts.nvml = probe_report()
    except ProbeError as e:
        facts.nvml_error, facts.nvml_hint = e.message, e.hint
    except Exception as e:  # a broken driver stack must not stop doctor from diagnosing a log
        facts.nvml_error = f"NVML query failed: {type(e).__name__}: {e}"
    facts.system = system.collect(shm_path=shm_path, ports=list(ports))
    return facts


class RayClusterProbe:
    """``app.ports.ClusterProbe`` over the real host and Ray."""

    def host_network(self) -> HostNetFacts:
        from qwendeploy.adapters import system

        return system.host_network()

    def ray_cluster(self, ray_port: int, env_keys: Sequence[str]) -> RayCluster:
        import os

        from qwendeploy.adapters import ray_cluster

        return ray_cluster.probe(ray_cluster.default_address(os.environ, ray_port), env_keys=env_keys)


def run_nccl_test(gpus: Sequence[str], timeout_s: float) -> NcclTestOutcome:
    """``app.ports.NcclTester``: the all-reduce test, or a skipped outcome when no GPU is visible."""
    from qwendeploy.adapters import nccl_test

    if not gpus:
        return nccl_test.NcclTestOutcome("skipped", 0, message="No GPU visible: nothing to test.")
    return nccl_test.run(list(gpus), timeout_s=timeout_s)


def doctor_ports() -> DoctorPorts:
    """The real adapters doctor uses."""
    from qwendeploy.app.doctor import DoctorPorts

    return DoctorPorts(machine=gather_machine_facts, cluster=RayClusterProbe(), nccl=run_nccl_test)


# ------------------------------------------------------------------ serve (app/serve.py's ports)


def find_executable(name: str, path: str | None) -> str | None:
    """``app.ports.ExecutableFinder``: ``name`` on ``path`` (a PATH string), or ``name`` itself when it holds a
    path separator; only an executable file counts."""
    import os
    import shutil

    found = shutil.which(name, path=path) if os.sep not in name else name
    return found if found and os.path.isfile(found) and os.access(found, os.X_OK) else None


def ray_address(env: Mapping[str, str], ray_port: int) -> str:
    """``app.ports.RayAddress``: ``$RAY_ADDRESS``, else the head on this host."""
    from qwendeploy.adapters.ray_cluster import default_address

    return default_address(env, ray_port)


def serve_preflight(
    profile: Profile,
    specs: Sequence[LaunchSpec],
    *,
    env: Mapping[str, str],
    strict: bool,
    insecure: bool,
    ray_address: str | None,
    log_dir: Path,
) -> list[Check]:
    """``app.ports.ServePreflight``: adapters/preflight with NVML through this module's seam."""
    from qwendeploy.adapters import preflight

    return preflight.run_preflight(
        profile,
        specs,
        env=env,
        strict=strict,
        insecure=insecure,
        probe=probe_report,
        ray_address=ray_address,
        log_dir=log_dir,
    )


def serve_locks(env: Mapping[str, str], names: Sequence[str], ports: Sequence[int]) -> Locks:
    """``app.ports.ServeLocks``: lock files under ``$QWENDEPLOY_HOME/run`` (or the runtime directory)."""
    from qwendeploy.adapters import serve_guard

    return serve_guard.acquire(serve_guard.default_lock_dir(env), names=names, ports=ports)


def gpu_holders(pids: set[int]) -> list[tuple[int, int | None]]:
    """Of ``pids``, those NVML sees holding GPU memory, with how much."""
    report = probe_report()
    return [(p.pid, p.used_bytes) for g in report.gpus for p in g.processes if p.pid in pids]


def supervise(
    servers: Sequence[Server],
    profile: Profile,
    log_dir: Path,
    on_event: Callable[[ServeEvent], None],
    *,
    gpu_check: bool,
) -> int:
    """``app.ports.Supervise``: adapters/supervisor over real processes."""
    from qwendeploy.adapters.supervisor import Launch, Supervisor
    from qwendeploy.core.restart import Policy

    launches = [Launch.docker(s.docker) if s.docker is not None else Launch.native(s.spec) for s in servers]
    sup = Supervisor(
        launches,
        Policy.from_profile(profile),
        log_dir=log_dir,
        on_event=on_event,
        profile=profile,
        gpu_holders=gpu_holders if gpu_check else None,
    )
    return sup.run().exit_code


def serve_ports() -> ServePorts:
    """The real adapters serve uses."""
    from qwendeploy.app.serve import ServePorts

    return ServePorts(
        executables=find_executable,
        ray_address=ray_address,
        preflight=serve_preflight,
        locks=serve_locks,
        supervise=supervise,
    )


def load_model(ref: str, revision: str | None) -> ModelSpec:
    """``app.ports.ModelSource``: a local model directory or a Hub repo (the Hub client is loaded only here)."""
    from qwendeploy.adapters.hub import load_model as load

    return load(ref, revision=revision)


def installed_vllm_version() -> str | None:
    """``app.ports.VllmVersionSource``: the installed vLLM's release, from package metadata."""
    from qwendeploy.adapters.vllm_release import installed_vllm_version as installed

    return installed()


class ProfileFiles:
    """``app.ports.ProfileStore`` over the file system (atomic writes; never over a non-regular file)."""

    def check_target(self, path: Path, force: bool) -> None:
        from qwendeploy.adapters.profile_files import check_target

        check_target(path, force=force)

    def write(self, path: Path, profile: Profile, header: str, force: bool) -> Path:
        from qwendeploy.adapters.profile_files import write_profile

        return write_profile(path, profile, header=header, force=force)


def plan_ports() -> PlanPorts:
    """The real adapters plan uses (NVML through this module's seam)."""
    from qwendeploy.app.plan import PlanPorts

    return PlanPorts(
        gpus=probe_machine, models=load_model, vllm_version=installed_vllm_version, profiles=ProfileFiles()
    )


def install_catalog_cache(env: Mapping[str, str]) -> None:
    """Remember the built catalogs between runs under the user's cache directory (``core.catalog_cache``); the
    entry point calls this, so tests and library use build their catalogs in-process unless they install one."""
    from qwendeploy.adapters import catalog_cache as files
    from qwendeploy.core import catalog_cache

    catalog_cache.install(files.from_environment(env))
