"""The supervisor against the fake vLLM as a real process (real HTTP, signals, process groups)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qwendeploy.adapters.supervisor import Event, Launch, Policy, Supervisor
from qwendeploy.core.profile import EngineSection, ModelSection, Profile, ServerSection
from qwendeploy.core.vllm_args import build_launch_specs
from tests.fakes.serving import FAKE_VLLM, alive, free_port

pytestmark = pytest.mark.slow

FAST = Policy(
    ready_timeout_s=10,
    health_interval_s=0.05,
    health_failures=2,
    grace_s=2,
    max_restarts=2,
    backoff_initial_s=0.05,
    backoff_max_s=0.1,
    ready_poll_s=0.02,
    tick_s=0.02,
    track_every_s=0.05,
)


def _run(
    tmp_path: Path,
    mode: str,
    policy: Policy = FAST,
    *,
    stop_when_ready: bool = True,
    profile: Profile | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, list[Event], Supervisor]:
    prof = profile or Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port()))
    base = dict(os.environ, FAKE_VLLM_MODE=mode, FAKE_VLLM_STATE_DIR=str(tmp_path), **(env or {}))
    specs = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []

    def on_event(e: Event) -> None:
        events.append(e)
        if e.kind == "ready" and stop_when_ready:
            sup.request_stop("test")

    sup = Supervisor(
        [Launch.native(s) for s in specs], policy, log_dir=tmp_path / "logs", on_event=on_event, profile=prof
    )
    outcome = sup.run(handle_signals=False)
    return outcome.exit_code, events, sup


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events if e.kind != "line"]


def _all_pids(tmp_path: Path) -> list[int]:
    import json

    return [pid for f in tmp_path.glob("*.json") for pid in json.loads(f.read_text()).values()]


def test_ready_then_clean_stop(tmp_path: Path) -> None:
    code, events, _ = _run(tmp_path, "healthy")
    kinds = _kinds(events)
    assert code == 0
    assert kinds[0] == "start" and "ready" in kinds and kinds[-1] == "shutdown"
    phases = [e.message for e in events if e.kind == "phase"]
    assert phases[:4] == ["loading weights", "profiling memory", "KV cache allocated", "capturing CUDA graphs"]
    assert (tmp_path / "logs" / "t.0.log").exists()
    assert alive(_all_pids(tmp_path)) == []


def test_crash_restarts_with_backoff_then_gives_up(tmp_path: Path) -> None:
    code, events, sup = _run(tmp_path, "crash_after:0.05", stop_when_ready=False)
    assert code == 1
    delays = [e.data["delay"] for e in events if e.kind == "restart"]
    assert delays == [0.05, 0.1]  # doubling, capped at backoff_max_s
    assert _kinds(events).count("ready") == 3
    assert "gave_up" in _kinds(events)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["t.0.log", "t.1.log", "t.2.log"]
    assert sup.replicas[0].restarts == 2
    assert alive(_all_pids(tmp_path)) == []  # crashed servers' workers were ended too


def test_transient_start_failure_is_restarted(tmp_path: Path) -> None:
    code, events, _ = _run(tmp_path, "crash_first:1")
    assert code == 0
    assert _kinds(events).count("start") == 2 and "ready" in _kinds(events)


@pytest.mark.parametrize("mode", ["oom_at_startup", "tp_heads"])
def test_deterministic_start_failure_is_not_restarted(tmp_path: Path, mode: str) -> None:
    code, events, _ = _run(tmp_path, mode)
    assert code == 1
    assert "restart" not in _kinds(events)
    (gave_up,) = [e for e in events if e.kind == "gave_up"]
    assert gave_up.data.get("deterministic") is True
    assert alive(_all_pids(tmp_path)) == []


def test_unrecognized_argument_is_not_restarted(tmp_path: Path) -> None:
    prof = Profile(
        name="t",
        model=ModelSection(id="m"),
        engine=EngineSection(extra_args=["--no-such-flag"]),
        server=ServerSection(port=free_port()),
    )
    code, events, _ = _run(tmp_path, "healthy", profile=prof)
    assert code == 1 and "restart" not in _kinds(events)
    assert any(e.kind == "exited" and e.data["exit_code"] == 2 for e in events)
    assert "unrecognized arguments" in (tmp_path / "logs" / "t.0.log").read_text()


def test_readiness_timeout_is_a_failure(tmp_path: Path) -> None:
    policy = Policy(**{**FAST.__dict__, "ready_timeout_s": 0.5, "restart": "never"})
    code, events, _ = _run(tmp_path, "never_ready", policy)
    assert code == 1
    assert "timeout" in _kinds(events) and "ready" not in _kinds(events)
    assert alive(_all_pids(tmp_path)) == []


def test_failed_health_probes_count_as_a_crash(tmp_path: Path) -> None:
    policy = Policy(**{**FAST.__dict__, "max_restarts": 0})
    code, events, _ = _run(tmp_path, "unhealthy_after:0.05", policy, stop_when_ready=False)
    assert code == 1
    assert [e.data["failures"] for e in events if e.kind == "unhealthy"] == [1, 2]
    assert alive(_all_pids(tmp_path)) == []


def test_policy_never_does_not_restart(tmp_path: Path) -> None:
    policy = Policy(**{**FAST.__dict__, "restart": "never"})
    code, events, _ = _run(tmp_path, "crash_after:0.05", policy, stop_when_ready=False)
    assert code == 1 and "restart" not in _kinds(events)


def test_clean_exit_on_failure_policy_ends_with_zero(tmp_path: Path) -> None:
    code, events, _ = _run(tmp_path, "exit_after:0.05", stop_when_ready=False)
    assert code == 0 and "restart" not in _kinds(events)


def test_sigterm_ignored_server_is_killed_at_shutdown(tmp_path: Path) -> None:
    policy = Policy(**{**FAST.__dict__, "grace_s": 0.2})
    code, events, _ = _run(tmp_path, "ignore_sigterm", policy)
    assert code == 0
    (stopped,) = [e for e in events if e.kind == "stopped"]
    assert stopped.data["killed"] is True
    assert alive(_all_pids(tmp_path)) == []


def test_api_key_never_in_events_or_logs(tmp_path: Path) -> None:
    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port(), api_key_env="QK"))
    code, events, _ = _run(tmp_path, "healthy", profile=prof, env={"QK": "sk-very-secret"})
    assert code == 0 and "ready" in _kinds(events)  # /v1/models answered with the key
    assert all("sk-very-secret" not in f"{e.message} {e.data}" for e in events)
    log = (tmp_path / "logs" / "t.0.log").read_text()
    assert "'api_key': ['***']" in log and "sk-very-secret" not in log


def test_data_parallel_servers_are_all_supervised(tmp_path: Path) -> None:
    from qwendeploy.core.profile import PlacementSection

    prof = Profile(
        name="t",
        model=ModelSection(id="m"),
        placement=PlacementSection(data_parallel_size=2),
        server=ServerSection(port=free_port()),
    )
    events: list[Event] = []
    base = dict(os.environ, FAKE_VLLM_STATE_DIR=str(tmp_path))
    specs = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)

    def on_event(e: Event) -> None:
        events.append(e)
        if sum(1 for x in events if x.kind == "ready") == 2:
            sup.request_stop("test")

    sup = Supervisor([Launch.native(s) for s in specs], FAST, log_dir=tmp_path / "logs", on_event=on_event)
    assert sup.run(handle_signals=False).exit_code == 0
    assert sorted(e.name for e in events if e.kind == "ready") == ["t-0", "t-1"]
    assert alive(_all_pids(tmp_path)) == []


def test_backoff_is_exponential_and_capped() -> None:
    p = Policy(backoff_initial_s=2, backoff_max_s=60)
    assert [p.backoff(n) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
