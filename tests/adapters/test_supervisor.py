"""The supervisor against the fake vLLM as a real process (real HTTP, signals, process groups)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qwendeploy.adapters.supervisor import Event, Launch, Supervisor
from qwendeploy.core.profile import EngineSection, ModelSection, Profile, ServerSection
from qwendeploy.core.restart import Policy
from qwendeploy.core.vllm_args import build_launch_specs
from tests.fakes.serving import FAKE_VLLM, alive, free_port, server_pids

pytestmark = pytest.mark.slow

RUN = "20260101T000000000000Z-1"
"""The run id the tests give the supervisor (it names the logs: <name>.<run id>.<n>.log)."""

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
        [Launch.native(s) for s in specs],
        policy,
        log_dir=tmp_path / "logs",
        on_event=on_event,
        run_id=RUN,
        profile=prof,
    )
    outcome = sup.run(handle_signals=False)
    return outcome.exit_code, events, sup


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events if e.kind != "line"]


def _all_pids(tmp_path: Path) -> list[int]:
    return server_pids(tmp_path)


def test_ready_then_clean_stop(tmp_path: Path) -> None:
    code, events, _ = _run(tmp_path, "healthy")
    kinds = _kinds(events)
    assert code == 0
    assert kinds[0] == "start" and "ready" in kinds and kinds[-1] == "shutdown"
    phases = [e.message for e in events if e.kind == "phase"]
    assert phases[:4] == ["loading weights", "profiling memory", "KV cache allocated", "capturing CUDA graphs"]
    assert (tmp_path / "logs" / f"t.{RUN}.0.log").exists()
    assert alive(_all_pids(tmp_path)) == []


def test_crash_restarts_with_backoff_then_gives_up(tmp_path: Path) -> None:
    code, events, sup = _run(tmp_path, "crash_after:0.3", stop_when_ready=False)
    assert code == 1
    delays = [e.data["delay"] for e in events if e.kind == "restart"]
    assert delays == [0.05, 0.1]  # doubling, capped at backoff_max_s
    assert _kinds(events).count("ready") == 3
    assert "gave_up" in _kinds(events)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        f"t.{RUN}.0.log",
        f"t.{RUN}.1.log",
        f"t.{RUN}.2.log",
    ]
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
    assert "unrecognized arguments" in (tmp_path / "logs" / f"t.{RUN}.0.log").read_text()


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
    code, events, _ = _run(tmp_path, "crash_after:0.3", policy, stop_when_ready=False)
    assert code == 1 and "restart" not in _kinds(events)


def test_exit_0_nobody_asked_for_is_a_failure_and_restarted(tmp_path: Path) -> None:
    """vLLM's API server exits 0 after its engine core died: that is a crash (systemd must see exit 1)."""
    code, events, sup = _run(tmp_path, "exit_after:0.3", stop_when_ready=False)
    assert code == 1
    assert _kinds(events).count("restart") == 2 and "gave_up" in _kinds(events)
    exits = [e for e in events if e.kind == "exited"]
    assert [e.data["exit_code"] for e in exits] == [0, 0, 0]
    assert "without being asked to stop" in exits[0].message
    assert sup.replicas[0].restarts == 2
    assert alive(_all_pids(tmp_path)) == []


def test_exit_0_under_policy_never_gives_up_with_exit_1(tmp_path: Path) -> None:
    policy = Policy(**{**FAST.__dict__, "restart": "never"})
    code, events, _ = _run(tmp_path, "exit_after:0.3", policy, stop_when_ready=False)
    assert code == 1 and "restart" not in _kinds(events) and "gave_up" in _kinds(events)


def test_restart_count_and_backoff_reset_after_a_stable_period(tmp_path: Path) -> None:
    """A server that crashes now and then over weeks is restarted every time, from the initial backoff."""
    policy = Policy(**{**FAST.__dict__, "max_restarts": 1, "reset_after_s": 0.1, "backoff_max_s": 10})
    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port()))
    base = dict(os.environ, FAKE_VLLM_MODE="crash_after:0.4", FAKE_VLLM_STATE_DIR=str(tmp_path))
    (spec,) = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []

    def on_event(e: Event) -> None:
        events.append(e)
        if sum(1 for x in events if x.kind == "start") == 4:
            sup.request_stop("test")

    sup = Supervisor([Launch.native(spec)], policy, log_dir=tmp_path / "logs", on_event=on_event, run_id=RUN)
    assert sup.run(handle_signals=False).exit_code == 0
    assert "gave_up" not in _kinds(events)
    assert [e.data["delay"] for e in events if e.kind == "restart"] == [0.05, 0.05, 0.05]
    assert _kinds(events).count("stable") == 2
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"t.{RUN}.{i}.log" for i in range(4)]
    assert alive(_all_pids(tmp_path)) == []


def test_oom_at_start_after_the_server_was_ready_is_retried(tmp_path: Path) -> None:
    """The same command reached ready before: an OOM at start-up now (e.g. the crashed server's workers still
    releasing memory) is not a failure that will repeat."""
    code, events, _ = _run(tmp_path, "oom_after_crash:0.3", stop_when_ready=False)
    assert code == 1
    assert _kinds(events).count("restart") == 2  # max_restarts used, not given up on the first OOM
    assert not any(e.data.get("deterministic") for e in events if e.kind == "gave_up")
    assert "CUDA out of memory" in (tmp_path / "logs" / f"t.{RUN}.1.log").read_text()


def test_deterministic_rules_use_real_categories_and_spare_transient_oom() -> None:
    from qwendeploy.core.diagnosis.rules import load_catalog
    from qwendeploy.core.restart import DETERMINISTIC_CATEGORIES, TRANSIENT_CATEGORIES, Finding
    from qwendeploy.core.restart import is_deterministic as deterministic

    known = {r.category for r in load_catalog().rules}
    assert known >= DETERMINISTIC_CATEGORIES | TRANSIENT_CATEGORIES
    oom = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.02 GiB."]
    assert deterministic(1, oom, [])
    for cat in sorted(TRANSIENT_CATEGORIES):
        top = Finding(category=cat, summary="held", confidence=0.9, phase="loading")
        assert not deterministic(1, oom, [top])
    assert deterministic(2, ["error: unrecognized arguments: --x"], [])


def test_gpu_check_ignores_pids_that_are_no_longer_ours(tmp_path: Path) -> None:
    """NVML lists pids; one of ours that ended may have been reused by another process: only the very
    processes seen (pid and start time) are reported."""
    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port()))
    base = dict(os.environ, FAKE_VLLM_STATE_DIR=str(tmp_path))
    (spec,) = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []
    asked: list[set[int]] = []

    def holders(pids: set[int]) -> list[tuple[int, int | None]]:
        asked.append(set(pids))
        return [(pid, 1 << 30) for pid in pids]  # a stale NVML answer: every pid it was asked about

    def on_event(e: Event) -> None:
        events.append(e)
        if e.kind == "ready":
            sup.request_stop("test")

    sup = Supervisor(
        [Launch.native(spec)], FAST, log_dir=tmp_path / "logs", on_event=on_event, run_id=RUN, gpu_holders=holders
    )
    assert sup.run(handle_signals=False).exit_code == 0
    assert asked and set(_all_pids(tmp_path)) <= asked[0]
    (check,) = [e for e in events if e.kind == "gpu_check"]
    assert check.data["ok"] is True, check.message


def test_docker_launch_skips_the_gpu_pid_check(tmp_path: Path) -> None:
    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port()))
    base = dict(os.environ, FAKE_VLLM_STATE_DIR=str(tmp_path))
    (spec,) = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []

    def on_event(e: Event) -> None:
        events.append(e)
        if e.kind == "ready":
            sup.request_stop("test")

    launch = Launch(spec=spec, argv=spec.argv, env=spec.env, display="docker run ...", container=("true", "c1"))
    sup = Supervisor(
        [launch], FAST, log_dir=tmp_path / "logs", on_event=on_event, run_id=RUN, gpu_holders=lambda pids: [(1, 1)]
    )
    assert sup.run(handle_signals=False).exit_code == 0
    (check,) = [e for e in events if e.kind == "gpu_check"]
    assert check.data["ok"] is None and "not applicable to docker" in check.message


def test_unwritable_log_dir_at_a_restart_gives_up_cleanly(tmp_path: Path) -> None:
    logs = tmp_path / "logs"

    def on_event(e: Event) -> None:
        events.append(e)
        if e.kind == "exited" and logs.is_dir():  # the log directory goes away and a file takes its place
            logs.rename(tmp_path / "old-logs")
            logs.write_text("not a directory")

    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port()))
    base = dict(os.environ, FAKE_VLLM_MODE="crash_after:0.3", FAKE_VLLM_STATE_DIR=str(tmp_path))
    (spec,) = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []
    sup = Supervisor([Launch.native(spec)], FAST, log_dir=logs, on_event=on_event, run_id=RUN)
    assert sup.run(handle_signals=False).exit_code == 1
    (gave_up,) = [e for e in events if e.kind == "gave_up"]
    assert "could not start" in gave_up.message and f"t.{RUN}.1.log" in gave_up.message
    assert alive(_all_pids(tmp_path)) == []


def test_stop_request_is_reported_before_the_servers_stop(tmp_path: Path) -> None:
    _, events, _ = _run(tmp_path, "healthy")
    kinds = _kinds(events)
    assert kinds.index("stopping") < kinds.index("stopped")
    (stopped,) = [e for e in events if e.kind == "stopped"]
    assert stopped.message.startswith("stopped (test)")


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
    log = (tmp_path / "logs" / f"t.{RUN}.0.log").read_text()
    assert "'api_key': ['***']" in log and "sk-very-secret" not in log
    assert 'VLLM_API_KEY="$QK"' in log


def test_api_key_reaches_vllm_through_its_environment_not_argv(tmp_path: Path) -> None:
    """What `ps` shows every local user: the server's command line holds no key; its environment does."""
    import psutil

    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port(), api_key_env="QK"))
    seen: dict[str, object] = {}

    def look(e: Event) -> None:
        if e.kind == "ready":
            proc = psutil.Process(e_pid[0])
            seen["cmdline"] = proc.cmdline()
            seen["environ"] = proc.environ()

    e_pid: list[int] = []
    base = dict(os.environ, FAKE_VLLM_STATE_DIR=str(tmp_path), QK="sk-env-only-secret")
    (spec,) = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []

    def on_event(e: Event) -> None:
        events.append(e)
        if e.kind == "start":
            e_pid.append(int(e.data["pid"]))
        look(e)
        if e.kind == "ready":
            sup.request_stop("test")

    sup = Supervisor([Launch.native(spec)], FAST, log_dir=tmp_path / "logs", on_event=on_event, run_id=RUN)
    assert sup.run(handle_signals=False).exit_code == 0
    assert "ready" in _kinds(events)  # the fake took the key from VLLM_API_KEY: /v1/models answered
    cmdline = " ".join(seen["cmdline"])  # type: ignore[arg-type]
    assert "sk-env-only-secret" not in cmdline and "--api-key" not in cmdline
    assert seen["environ"]["VLLM_API_KEY"] == "sk-env-only-secret"  # type: ignore[index]
    assert all("sk-env-only-secret" not in f"{e.message} {e.data}" for e in events)
    assert "sk-env-only-secret" not in (tmp_path / "logs" / f"t.{RUN}.0.log").read_text()


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

    sup = Supervisor([Launch.native(s) for s in specs], FAST, log_dir=tmp_path / "logs", on_event=on_event, run_id=RUN)
    assert sup.run(handle_signals=False).exit_code == 0
    assert sorted(e.name for e in events if e.kind == "ready") == ["t-0", "t-1"]
    assert alive(_all_pids(tmp_path)) == []


def test_backoff_is_exponential_and_capped() -> None:
    p = Policy(backoff_initial_s=2, backoff_max_s=60)
    assert [p.backoff(n) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]


def test_a_dead_engine_core_is_named_and_restarted(tmp_path: Path) -> None:
    """The fake prints what vLLM 0.26 printed on a real H100 after its engine core was killed, then exits 0: serve
    names the cause (engine-core-died, filed under category unknown) instead of "unknown", and restarts."""
    code, events, _ = _run(tmp_path, "exit_after:0.3", stop_when_ready=False)
    diags = [e for e in events if e.kind == "diagnosis"]
    assert diags and diags[0].message.startswith("engine-core-died: vLLM's engine-core process ended")
    assert diags[0].data["category"] == "unknown" and diags[0].data["rule_id"] == "engine-core-died"
    assert "restart" in _kinds(events) and code == 1  # the fake dies every time: gave up after max_restarts
