"""Supervise one or more vLLM servers: readiness, health, diagnosis on failure, bounded restarts, shutdown.

One loop drives every replica (no thread per server): each tick it drains the servers' output, polls their
exit status, and probes /health (every ``ready_poll_s`` while starting, every ``health_interval_s`` once
ready). ``clock`` and ``sleep`` are injected. What to do after a failure is decided in ``core/restart.py`` (pure),
the start-up phases named in ``core/serve_phases.py``; process groups are ``adapters/process.py``'s.

Per replica:
    starting --/health 200 and /v1/models lists the name--> ready
    starting --exit / readiness timeout--> failed attempt
    ready    --exit / health_failures consecutive failed probes--> failed attempt
    ready for reset_after_s --> restart count and backoff start again from zero
    failed attempt --> stop what is left of the group, diagnose the log tail, then core/restart.py's verdict:
        deterministic start-up failure (exit 2 before ready, "unrecognized arguments", a diagnosis of a
        start-up failure that will repeat: OOM while loading, TP not dividing heads, …) → give up
        policy never, or max_restarts used up → give up
        otherwise → restart after min(backoff_initial_s × 2^n, backoff_max_s)
Any exit serve did not ask for is a failed attempt, exit code 0 included: vLLM's API server shuts down
"normally" (exit 0) after its engine core died. A replica that gives up stops every replica (exit 1). A stop
request (SIGINT/SIGTERM) stops all (exit 0).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from qwendeploy.adapters import process, serve_guard
from qwendeploy.adapters.health import HttpHealth
from qwendeploy.core.diagnosis.startup import StartupReport, compare
from qwendeploy.core.diagnosis.startup import summary as startup_summary
from qwendeploy.core.docker_args import DockerSpec, render_docker
from qwendeploy.core.profile import Profile
from qwendeploy.core.restart import Policy, after_failure, diagnose_lines
from qwendeploy.core.serve_phases import PHASE_ORDER, phase_of
from qwendeploy.core.server_address import client_url
from qwendeploy.core.vllm_args import LaunchSpec, display_command
from qwendeploy.errors import LaunchFailed

EXIT_OK, EXIT_GAVE_UP = 0, 1


@dataclass(frozen=True)
class Launch:
    """What to run for one replica: the vLLM spec (host/port/name for probes) and the actual argv/env
    (the same for a native launch; ``docker run …`` for the docker runtime)."""

    spec: LaunchSpec
    argv: tuple[str, ...]
    env: Mapping[str, str]
    display: str
    """The command as printed (secrets redacted)."""
    after_stop: Callable[[], None] | None = None
    """Extra clean-up once the process group is gone (e.g. ``docker rm -f``)."""
    container: tuple[str, str] | None = None
    """Docker launches: (docker executable, container name). The watchdog removes the container if the
    supervisor dies, and the after-shutdown GPU check does not apply (the container's processes are not
    in our process tree)."""

    @classmethod
    def native(cls, spec: LaunchSpec) -> Launch:
        return cls(spec=spec, argv=spec.argv, env=spec.env, display=display_command(spec))

    @classmethod
    def docker(cls, d: DockerSpec) -> Launch:
        """``docker run …`` of one replica; the container is removed once stopped (and by the watchdog)."""
        return cls(
            spec=d.launch,
            argv=d.argv,
            env=d.env,
            display=render_docker(d)["command"],
            after_stop=_docker_rm(d.argv[0], d.container_name),
            container=(d.argv[0], d.container_name),
        )


def _docker_rm(docker: str, container: str) -> Callable[[], None]:
    def rm() -> None:
        subprocess.run(
            [docker, "rm", "-f", container],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )

    return rm


@dataclass(frozen=True)
class Event:
    kind: str
    """start, line, phase, startup (vLLM's start-up figures beside the plan), ready, stable, exited, unhealthy,
    timeout, stopping, stopped, diagnosis, restart, gave_up, shutdown, leftovers, gpu_check, stranger (a process not
    ours answers on the port)."""
    name: str
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    exit_code: int
    reason: str
    restarts: dict[str, int] = field(default_factory=dict)
    log_paths: list[Path] = field(default_factory=list)


@dataclass
class _Replica:
    launch: Launch
    health: HttpHealth
    state: Literal["starting", "ready", "backoff", "failed"] = "starting"
    proc: process.ServerProcess | None = None
    restarts: int = 0
    """Restarts since the server was last stable (the policy's count; reset after reset_after_s ready)."""
    starts: int = 0
    """Starts so far (names the log files: <name>.<run id>.<starts>.log)."""
    ever_ready: bool = False
    ready_at: float = 0.0
    started_at: float = 0.0
    next_probe: float = 0.0
    next_track: float = 0.0
    fails: int = 0
    restart_at: float = 0.0
    phase: str | None = None
    startup: StartupReport | None = None
    """vLLM's start-up figures of the current process (compared with the profile's estimate once logged)."""
    startup_of: object = None
    logs: list[Path] = field(default_factory=list)
    next_owner_check: float = 0.0
    """While a process outside the server answers on its port: when to look again (not every tick)."""
    stranger_reported: bool = False

    @property
    def name(self) -> str:
        return self.launch.spec.name


class Supervisor:
    """Runs the replicas until a stop request or a give-up (a server never finishes on its own)."""

    def __init__(
        self,
        launches: Sequence[Launch],
        policy: Policy,
        *,
        log_dir: Path,
        on_event: Callable[[Event], None] = lambda e: None,
        profile: Profile | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        use_watchdog: bool = True,
        gpu_holders: Callable[[set[int]], list[tuple[int, int | None]]] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.policy = policy
        self.run_id = run_id or serve_guard.new_run_id()
        """Names this run's logs (<name>.<run id>.<n>.log): a new run never overwrites an earlier one's."""
        self.log_dir = log_dir
        self.on_event = on_event
        self.profile = profile
        self.clock = clock
        self.sleep = sleep
        self.use_watchdog = use_watchdog
        self.gpu_holders = gpu_holders
        self._stop = threading.Event()
        self._stop_reason = ""
        self._watchdog: process.Watchdog | None = None
        self._pids_seen: dict[int, float] = {}
        """pid → create_time of every process of the servers seen (a pid alone could be reused)."""
        self.replicas = [
            _Replica(
                launch=lc,
                health=HttpHealth(lc.spec.host, lc.spec.port, api_key=lc.spec.api_key, timeout=policy.probe_timeout_s),
            )
            for lc in launches
        ]

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop every server and return exit 0 (safe from a signal handler)."""
        self._stop_reason = reason
        self._stop.set()

    def _emit(self, kind: str, name: str, message: str = "", **data: Any) -> None:
        self.on_event(Event(kind=kind, name=name, message=message, data=data))

    # ------------------------------------------------------------------ run

    def run(self, *, handle_signals: bool = True) -> Outcome:
        old: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            # SIGHUP (the terminal or the ssh session went away) is a stop request like SIGTERM: stop every
            # server cleanly and exit 0, rather than die and leave the watchdog to clean up.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old[sig] = signal.signal(sig, lambda s, f: self.request_stop(f"received {signal.Signals(s).name}"))
        if self.use_watchdog:
            self._watchdog = process.Watchdog(self.policy.grace_s)
        outcome = Outcome(exit_code=EXIT_GAVE_UP, reason="interrupted")
        serve_guard.prune_logs(self.log_dir, {r.name for r in self.replicas}, current=self.run_id)
        try:
            for r in self.replicas:
                self._start(r)
                if r.state == "failed":
                    break
            outcome = self._loop()
        finally:
            why = self._stop_reason if self._stop.is_set() else "shutdown"
            for r in self.replicas:
                if r.proc is not None:
                    self._stop_proc(r, reason=why)
            self._check_gpus()
            if self._watchdog is not None:
                self._watchdog.release()
            for signum, handler in old.items():
                signal.signal(signum, handler)
        outcome.restarts = {r.name: r.restarts for r in self.replicas}
        outcome.log_paths = [p for r in self.replicas for p in r.logs]
        self._emit("shutdown", "", outcome.reason, exit_code=outcome.exit_code)
        return outcome

    def _loop(self) -> Outcome:
        p = self.policy
        while True:
            if self._stop.is_set():
                reason = self._stop_reason or "stop requested"
                self._emit("stopping", "", f"{reason}: stopping every server", reason=reason)
                return Outcome(EXIT_OK, reason)
            now = self.clock()
            for r in self.replicas:
                self._drain(r)
                if r.state in ("starting", "ready"):
                    self._watch(r, now)
                elif r.state == "backoff" and now >= r.restart_at:
                    self._start(r)
                if r.state == "failed":
                    return Outcome(EXIT_GAVE_UP, f"{r.name}: gave up")
            self.sleep(p.tick_s)

    def _start(self, r: _Replica) -> None:
        spec = r.launch.spec
        log_path = self.log_dir / serve_guard.log_name(spec.name, self.run_id, r.starts)
        header = [
            f"start {r.starts} of {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
            f"command: {r.launch.display}",
        ]
        if self._watchdog is not None and r.launch.container is not None:
            self._watchdog.watch_container(*r.launch.container)
        try:
            r.proc = process.start(
                r.launch.argv,
                dict(r.launch.env),
                log_path=log_path,
                header=header,
                secrets=spec.secret_values,
                watchdog=self._watchdog,
            )
        except LaunchFailed as e:  # e.g. the log directory became unwritable, the executable vanished
            r.state = "failed"
            self._emit("gave_up", spec.name, f"could not start: {e.message}", log=str(log_path))
            return
        r.starts += 1
        r.logs.append(log_path)
        self._remember(r.proc.pid)
        r.state, r.fails, r.phase = "starting", 0, None
        r.started_at = self.clock()
        r.next_probe = r.started_at
        r.next_track = r.started_at + 0.2
        self._emit(
            "start",
            spec.name,
            f"started pid {r.proc.pid} (start {r.restarts}); log: {log_path}",
            pid=r.proc.pid,
            log=str(log_path),
            attempt=r.starts - 1,
            restarts=r.restarts,
            command=r.launch.display,
        )

    def _remember(self, pid: int, create_time: float | None = None) -> None:
        if create_time is None:
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.Error:
                return
        self._pids_seen[pid] = create_time

    def _drain(self, r: _Replica) -> None:
        if r.proc is None:
            return
        q = r.proc.lines
        while not q.empty():
            line = q.get_nowait()
            self._emit("line", r.name, line)
            self._startup_figures(r, line)
            if r.state == "starting":
                ph = phase_of(line)
                if ph and PHASE_ORDER[ph] > PHASE_ORDER.get(r.phase or "", -1):
                    r.phase = ph
                    self._emit("phase", r.name, ph, phase=ph)

    def _startup_figures(self, r: _Replica, line: str) -> None:
        """Once vLLM has logged its KV-cache figures, one ``startup`` event sets them beside the plan (issue 14)."""
        if r.startup is None or r.startup_of is not r.proc:
            r.startup, r.startup_of = StartupReport(), r.proc
        was = r.startup.kv_complete
        if r.startup.feed(0, line) and not was and r.startup.kv_complete and self.profile is not None:
            rows = compare(r.startup, self.profile.estimate)
            self._emit(
                "startup",
                r.name,
                startup_summary(rows),
                comparison=[x.to_dict() for x in rows],
                flagged=any(x.flagged for x in rows),
                reported=r.startup.to_dict(),
            )

    def _watch(self, r: _Replica, now: float) -> None:
        assert r.proc is not None
        p = self.policy
        if self._stop.is_set():  # a stop request (e.g. systemd's SIGTERM to the whole cgroup) is no failure
            return
        code = r.proc.poll()
        if code is not None:
            self._emit("exited", r.name, _describe_exit(code), exit_code=code)
            self._failed(r, "exited", code)
            return
        if now >= r.next_track:
            r.next_track = now + p.track_every_s
            for pid in r.proc.track():
                self._remember(pid, r.proc.known.get(pid))
        if r.state == "starting":
            if now >= r.next_probe:
                r.next_probe = now + p.ready_poll_s
                if r.health.health().status == 200 and self._answered_by_server(r, now):
                    ids = r.health.model_ids()  # sends the API key: only to our own server
                    if ids is not None and r.launch.spec.served_model_name in ids:
                        r.state, r.ever_ready, r.ready_at = "ready", True, now
                        r.next_probe = now + p.health_interval_s
                        took = now - r.started_at
                        spec = r.launch.spec
                        self._emit(
                            "ready",
                            r.name,
                            f"ready after {took:.1f}s at {client_url(spec.host, spec.port)}",
                            url=client_url(spec.host, spec.port),
                            seconds=took,
                            served_model_name=spec.served_model_name,
                            api_key_env=spec.api_key_env,
                        )
                        return
            if now - r.started_at > p.ready_timeout_s:
                self._emit("timeout", r.name, f"not ready after {p.ready_timeout_s:g}s (server.ready_timeout_s)")
                self._failed(r, "readiness timeout", None)
        elif now >= r.next_probe:
            if r.restarts and now - r.ready_at >= p.reset_after_s:
                self._emit(
                    "stable",
                    r.name,
                    f"ready for {p.reset_after_s:g}s: restart count {r.restarts} → 0 (restart.reset_after_s)",
                    restarts=r.restarts,
                )
                r.restarts = 0
            r.next_probe = now + p.health_interval_s
            probe = r.health.health()
            if probe.status == 200:
                r.fails = 0
                return
            r.fails += 1
            what = f"HTTP {probe.status}" if probe.status is not None else (probe.error or "no answer")
            self._emit("unhealthy", r.name, f"/health failed ({what}), {r.fails}/{p.health_failures}", failures=r.fails)
            if r.fails >= p.health_failures:
                self._failed(r, "unhealthy", None)

    def _answered_by_server(self, r: _Replica, now: float) -> bool:
        """Whether the process listening on the replica's port is the server we started (its process group or
        a descendant), and no other process listens there too. A local process that grabbed the port while vLLM
        was still loading (minutes on a real GPU) must never be taken for the server, nor be sent the API key.

        Docker launches are not checked: the port belongs to docker's proxy, not to a process of ours.
        """
        if r.launch.container is not None or r.proc is None:
            return True
        if now < r.next_owner_check:
            return False
        port = r.launch.spec.port
        owner = serve_guard.port_owner(port, {r.proc.pid, *r.proc.known})  # vLLM's API server is the leader
        if owner.foreign:  # maybe a descendant not tracked yet: look at the whole family before calling it foreign
            owner = serve_guard.port_owner(port, r.proc.family())
        foreign = owner.foreign
        if owner.ours and not foreign:
            return True
        r.next_owner_check = now + 1.0
        if foreign and not r.stranger_reported:
            r.stranger_reported = True
            who = ", ".join(
                "another user's process" if pid is None else f"pid {pid}"
                for pid in sorted(foreign, key=lambda x: -1 if x is None else x)
            )
            self._emit(
                "stranger",
                r.name,
                f"port {port} is answered by a process that is not this server ({who}); not treating it as ready "
                "and not sending it the API key",
                port=port,
                pids=[pid for pid in foreign if pid is not None],
            )
        return False

    def _stop_proc(self, r: _Replica, *, reason: str) -> process.StopResult | None:
        if r.proc is None:
            return None
        res = process.stop(r.proc, self.policy.grace_s)
        self._drain(r)
        self._emit(
            "stopped",
            r.name,
            f"stopped ({reason})" + ("; needed SIGKILL" if res.killed else ""),
            killed=res.killed,
            exit_code=res.exit_code,
            leftovers=list(res.leftovers),
        )
        if res.leftovers:
            self._emit("leftovers", r.name, f"processes still alive after SIGKILL: {list(res.leftovers)}")
        if r.launch.after_stop is not None:
            try:
                r.launch.after_stop()
            except Exception as e:  # clean-up is best effort; report it
                self._emit("leftovers", r.name, f"clean-up failed: {e}")
        if self._watchdog is not None and r.launch.container is not None:
            self._watchdog.unwatch_container(r.launch.container[1])
        r.proc = None
        return res

    def _failed(self, r: _Replica, why: str, code: int | None) -> None:
        assert r.proc is not None
        was_ready = r.state == "ready"
        proc = r.proc
        self._stop_proc(r, reason=why)
        tail = proc.tail(200)
        findings = diagnose_lines(tail, self.profile)
        for f in findings[:3]:
            self._emit(
                "diagnosis",
                r.name,
                f"{f.name}: {f.summary}",
                category=f.category,
                rule_id=f.rule_id,
                summary=f.summary,
                fix=f.fix,
                evidence=list(f.evidence),
                log=str(proc.log_path),
            )
        # Exit 0 is a failure too: serve did not ask for it (a stop request never gets here), and vLLM's API
        # server exits 0 after its engine core died.
        verdict = after_failure(
            self.policy, restarts=r.restarts, ever_ready=was_ready or r.ever_ready, code=code, tail=tail, found=findings
        )
        if verdict.give_up:
            r.state = "failed"
            extra = {"deterministic": True} if verdict.deterministic else {}
            self._emit("gave_up", r.name, verdict.message, **extra, log=str(proc.log_path))
            return
        r.restarts += 1
        r.state = "backoff"
        r.restart_at = self.clock() + verdict.delay
        self._emit("restart", r.name, verdict.message, delay=verdict.delay)

    def _check_gpus(self) -> None:
        if self.gpu_holders is None or not self._pids_seen:
            return
        if any(r.launch.container is not None for r in self.replicas):
            self._emit(
                "gpu_check",
                "",
                "GPU memory check not applicable to docker (the container's processes are not ours); "
                "docker rm -f removed the container",
                ok=None,
            )
            return
        try:
            holders = self.gpu_holders(set(self._pids_seen))
        except Exception as e:  # NVML trouble after shutdown is reported, not raised
            self._emit("gpu_check", "", f"GPU memory check skipped: {e}", ok=None)
            return
        holders = [(pid, used) for pid, used in holders if _same_process(pid, self._pids_seen.get(pid))]
        if holders:
            pids = " ".join(str(pid) for pid, _ in holders)
            self._emit(
                "gpu_check",
                "",
                f"processes of the server still hold GPU memory: {pids}; end them with: kill -9 {pids}",
                ok=False,
                pids=[pid for pid, _ in holders],
            )
        else:
            self._emit("gpu_check", "", "no process of the server holds GPU memory", ok=True)


def _same_process(pid: int, create_time: float | None) -> bool:
    """``pid`` is still the process we started or saw (not a later process that got the same pid)."""
    if create_time is None:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 0.01
    except psutil.Error:
        return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (SIGKILL often means the kernel's OOM killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if code == 0:
        return "exited with code 0 without being asked to stop (vLLM does this after its engine core died)"
    return f"exited with code {code}"
