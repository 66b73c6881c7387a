"""app.serve driven through its ports, without the CLI: the real adapters (``wiring.serve_ports()``) over stand-ins
that are real things — executables in temporary PATH directories, the fake NVML module, and the fake `vllm`
executable serving HTTP (tests/fakes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwendeploy.app import serve as use_case
from qwendeploy.app.ports import ServeEvent
from qwendeploy.app.serve import Prepared, ServeRequest
from qwendeploy.cli import wiring
from qwendeploy.core.checks import Check
from qwendeploy.errors import BadInput, PreflightFailed
from tests.fakes.fake_nvml import FakeNvml
from tests.fakes.serving import FAKE_VLLM, alive, free_port, server_pids


def _profile(tmp_path: Path, **sections: Any) -> Any:
    doc: dict[str, Any] = {
        "version": 1,
        "name": "t",
        "model": {"id": "m", "max_model_len": 4096},
        "engine": {"gpu_memory_utilization": 0.01},
        "server": {"port": free_port(), "ready_timeout_s": 20, "shutdown_grace_s": 2},
        "restart": {"policy": "never"},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    return wiring.read_profile(p)


def _executable(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _request(tmp_path: Path, profile: Any, env: dict[str, str], **kw: Any) -> ServeRequest:
    return ServeRequest(profile=profile, env=env, home=tmp_path / "home", **kw)


@dataclass
class Recorder:
    """``app.serve.ServeObserver`` that keeps what it is told."""

    checks_seen: list[Check] = field(default_factory=list)
    started: list[Prepared] = field(default_factory=list)
    events: list[ServeEvent] = field(default_factory=list)

    def checks(self, checks: Sequence[Check]) -> None:
        self.checks_seen += checks

    def supervising(self, prepared: Prepared) -> None:
        self.started.append(prepared)

    def event(self, event: ServeEvent) -> None:
        self.events.append(event)


# ------------------------------------------------------------------ the vLLM executable


def test_vllm_bin_option_beats_the_environment_which_beats_path(tmp_path: Path) -> None:
    on_path = _executable(tmp_path / "path-bin", "vllm")
    from_env = _executable(tmp_path / "env-bin", "my-vllm")
    from_option = _executable(tmp_path / "opt-bin", "vllm-nightly")
    prof = _profile(tmp_path)
    ports = wiring.serve_ports()
    env = {"PATH": str(on_path.parent)}

    def chosen(env: dict[str, str], option: str | None) -> str:
        prepared = use_case.prepare(_request(tmp_path, prof, env, vllm_bin=option), ports)
        (server,) = prepared.servers
        assert server.spec.argv[0] == prepared.executable  # what is shown is what runs
        return prepared.executable

    assert chosen(env, None) == str(on_path)
    assert chosen({**env, "QWENDEPLOY_VLLM_BIN": str(from_env)}, None) == str(from_env)
    assert chosen({**env, "QWENDEPLOY_VLLM_BIN": str(from_env)}, str(from_option)) == str(from_option)
    # a bare name is looked up on the PATH the request carries, not this process's
    assert chosen({"PATH": str(from_env.parent)}, "my-vllm") == str(from_env)


def test_a_missing_vllm_stops_a_launch_but_not_a_dry_run(tmp_path: Path) -> None:
    prof = _profile(tmp_path)
    ports = wiring.serve_ports()
    empty = {"PATH": str(tmp_path / "empty")}
    with pytest.raises(BadInput) as e:
        use_case.prepare(_request(tmp_path, prof, empty), ports)
    assert e.value.exit_code == 2 and "no `vllm` executable on PATH" in e.value.message
    assert "pip install 'qwendeploy[vllm]'" in (e.value.hint or "")
    assert use_case.prepare(_request(tmp_path, prof, empty, dry_run=True), ports).executable == "vllm"

    not_executable = tmp_path / "vllm.txt"
    not_executable.write_text("not a program")
    with pytest.raises(BadInput, match=r"--vllm-bin .* is not an executable file"):
        use_case.prepare(_request(tmp_path, prof, empty, vllm_bin=str(not_executable)), ports)
    shown = use_case.prepare(_request(tmp_path, prof, empty, vllm_bin=str(not_executable), dry_run=True), ports)
    assert shown.executable == str(not_executable)


# ------------------------------------------------------------------ the runtime


def test_docker_runtime_needs_docker_on_path_and_runs_the_image(tmp_path: Path) -> None:
    prof = _profile(tmp_path)
    ports = wiring.serve_ports()
    with pytest.raises(BadInput, match="--runtime docker: no `docker` executable on PATH"):
        use_case.prepare(_request(tmp_path, prof, {"PATH": str(tmp_path / "empty")}, runtime="docker"), ports)

    docker = _executable(tmp_path / "bin", "docker")
    prepared = use_case.prepare(_request(tmp_path, prof, {"PATH": str(docker.parent)}, runtime="docker"), ports)
    assert prepared.executable == "docker" and prepared.runtime == "docker"
    (server,) = prepared.servers
    assert server.docker is not None and server.docker.argv[:2] == ("docker", "run")
    assert server.shown["command"].startswith("docker run")
    # the Hugging Face cache mounted is the user's (HF_HOME unset), the image the profile's vLLM release
    assert f"{tmp_path / 'home' / '.cache' / 'huggingface'}:/root/.cache/huggingface" in server.docker.argv
    assert any(a.startswith("vllm/vllm-openai:") for a in server.docker.argv)


def test_the_docker_runtime_skips_the_hosts_shm_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    fake = FakeNvml.load(fixtures / "machines" / "8xh100-nvlink.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    prof = _profile(tmp_path, placement={"tensor_parallel_size": 2})
    ports = wiring.serve_ports()
    env = {**os.environ, "PATH": str(_executable(tmp_path / "bin", "docker").parent)}

    def names(runtime: use_case.Runtime) -> set[str]:
        prepared = use_case.prepare(_request(tmp_path, prof, env, runtime=runtime, dry_run=True), ports)
        return {c.name for c in use_case.preflight_checks(prepared, ports)}

    native, docker = names("native"), names("docker")
    assert "shm" in native  # TP 2: NCCL needs this host's /dev/shm
    assert docker == native - {"shm"}  # the container gets --ipc=host


# ------------------------------------------------------------------ the Ray cluster and the log directory


def test_a_multi_node_server_attaches_to_ray_address_else_the_local_head(tmp_path: Path) -> None:
    prof = _profile(
        tmp_path,
        placement={"tensor_parallel_size": 2, "nodes": 2, "distributed_executor_backend": "ray"},
        cluster={"ray_port": 6390},
    )
    ports = wiring.serve_ports()

    def address(env: dict[str, str]) -> str | None:
        (server,) = use_case.prepare(_request(tmp_path, prof, env, dry_run=True), ports).servers
        return server.spec.env_set.get("RAY_ADDRESS")

    assert address({}) == "127.0.0.1:6390"
    assert address({"RAY_ADDRESS": "10.0.0.5:6379"}) == "10.0.0.5:6379"
    single = _profile(tmp_path)
    (server,) = use_case.prepare(
        _request(tmp_path, single, {"RAY_ADDRESS": "10.0.0.5:6379"}, dry_run=True), ports
    ).servers
    assert "RAY_ADDRESS" not in server.spec.env_set  # one node: no cluster to attach to


def test_log_directory_option_then_qwendeploy_home_then_xdg_state_then_home(tmp_path: Path) -> None:
    prof = _profile(tmp_path)
    ports = wiring.serve_ports()

    def log_dir(env: dict[str, str], option: Path | None = None) -> Path:
        return use_case.prepare(_request(tmp_path, prof, env, dry_run=True, log_dir=option), ports).log_dir

    home = tmp_path / "home"
    assert log_dir({}) == home / ".local" / "state" / "qwendeploy" / "logs"
    assert log_dir({"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/qwendeploy/logs")
    assert log_dir({"XDG_STATE_HOME": "/x/state", "QWENDEPLOY_HOME": "/q"}) == Path("/q/logs")
    assert log_dir({"QWENDEPLOY_HOME": "/q"}, tmp_path / "mine") == tmp_path / "mine"


# ------------------------------------------------------------------ preflight and supervision


def test_a_failed_preflight_is_exit_2_and_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    fake = FakeNvml.load(fixtures / "machines" / "1xa10g-other-process.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    prof = _profile(tmp_path, engine={"gpu_memory_utilization": 0.9})
    env = {**os.environ, "FAKE_VLLM_STATE_DIR": str(tmp_path)}
    request = _request(tmp_path, prof, env, vllm_bin=str(FAKE_VLLM))
    prepared = use_case.prepare(request, wiring.serve_ports())
    seen = Recorder()
    with pytest.raises(PreflightFailed) as e:
        use_case.run(prepared, wiring.serve_ports(), seen)
    assert e.value.exit_code == 2
    failed = [c for c in seen.checks_seen if c.status == "fail"]
    assert failed and e.value.message.startswith(failed[0].detail)  # the checks were shown before the refusal
    assert "GPU 0 has" in e.value.message and "pid 777" in e.value.message
    assert seen.started == [] and seen.events == [] and server_pids(tmp_path) == []
    assert not prepared.log_dir.exists() or list(prepared.log_dir.iterdir()) == []
    # the locks were released: the same profile can be served again at once
    held = wiring.serve_locks(env, [prof.name], [prepared.servers[0].spec.port])
    held.release()


@pytest.mark.slow
def test_a_start_up_that_will_repeat_gives_up_with_exit_1_and_logs_in_the_default_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    fake = FakeNvml.load(fixtures / "machines" / "1xh100.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    prof = _profile(tmp_path)
    env = {**os.environ, "FAKE_VLLM_MODE": "oom_at_startup", "FAKE_VLLM_STATE_DIR": str(tmp_path)}
    env["QWENDEPLOY_HOME"] = str(tmp_path / "qhome")
    ports = wiring.serve_ports()
    prepared = use_case.prepare(_request(tmp_path, prof, env, vllm_bin=str(FAKE_VLLM)), ports)
    seen = Recorder()
    assert use_case.run(prepared, ports, seen) == 1
    kinds = [e.kind for e in seen.events]
    assert seen.started == [prepared] and "gave_up" in kinds and "restart" not in kinds
    assert kinds[-1] == "shutdown"
    (log,) = (tmp_path / "qhome" / "logs").glob("t.*.0.log")
    assert "CUDA out of memory" in log.read_text()
    # NVML answered the preflight, so the GPUs are checked after shutdown
    (gpu,) = [e for e in seen.events if e.kind == "gpu_check"]
    assert gpu.data["ok"] is True
    assert alive(server_pids(tmp_path)) == []


def test_without_nvml_no_gpu_check_follows_shutdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: FakeNvml.load(fixtures / "machines" / "no-driver.yaml"))
    prof = _profile(tmp_path)
    env = {**os.environ, "FAKE_VLLM_MODE": "oom_at_startup", "FAKE_VLLM_STATE_DIR": str(tmp_path)}
    ports = wiring.serve_ports()
    prepared = use_case.prepare(_request(tmp_path, prof, env, vllm_bin=str(FAKE_VLLM)), ports)
    seen = Recorder()
    assert use_case.run(prepared, ports, seen) == 1
    assert {c.name: c.status for c in seen.checks_seen}["gpus"] == "skip"
    assert "gpu_check" not in [e.kind for e in seen.events]
    assert alive(server_pids(tmp_path)) == []
