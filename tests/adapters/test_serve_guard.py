"""Issue #11's serve faults against the fake vLLM: a stranger on the port, two serves of one profile, SIGHUP,
earlier runs' logs, and locks that die with their process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwendeploy.adapters import serve_guard
from qwendeploy.adapters.supervisor import Event, Launch, Supervisor
from qwendeploy.core.profile import ModelSection, Profile, ServerSection
from qwendeploy.core.restart import Policy
from qwendeploy.core.vllm_args import build_launch_specs
from qwendeploy.errors import PreflightFailed
from tests.fakes.serving import FAKE_VLLM, alive, free_port, read_until, server_pids, wait_for

ROOT = Path(__file__).resolve().parents[2]

FAST = Policy(
    ready_timeout_s=20,
    health_interval_s=0.05,
    health_failures=2,
    grace_s=2,
    restart="never",
    ready_poll_s=0.02,
    tick_s=0.02,
    track_every_s=0.05,
)


class _Stranger:
    """A local process's HTTP server that answers like vLLM (/health 200, /v1/models with the name) and
    records every Authorization header it is sent."""

    def __init__(self, port: int, served: str) -> None:
        self.headers: list[str] = []
        self.paths: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                if self.headers.get("Authorization"):
                    outer.headers.append(self.headers["Authorization"])
                body = json.dumps({"data": [{"id": served}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), H, bind_and_activate=False)
        self.httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.httpd.server_bind()  # beside the server's bound-but-not-yet-listening socket, as in the issue
        self.httpd.server_activate()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_a_stranger_on_the_port_is_never_ready_and_never_gets_the_key(tmp_path: Path) -> None:
    port = free_port()
    prof = Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=port, api_key_env="QK"))
    base = dict(
        os.environ, QK="sk-never-to-a-stranger", FAKE_VLLM_MODE="never_ready", FAKE_VLLM_STATE_DIR=str(tmp_path)
    )
    (spec,) = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=base)
    events: list[Event] = []
    stranger: list[_Stranger] = []

    def on_event(e: Event) -> None:
        events.append(e)
        if e.kind == "line" and "API server version" in e.message and not stranger:
            stranger.append(_Stranger(port, "m"))  # the server has bound its port and is still loading
        if e.kind in ("stranger", "ready"):
            sup.request_stop("test")

    sup = Supervisor([Launch.native(spec)], FAST, log_dir=tmp_path / "logs", on_event=on_event, profile=prof)
    try:
        outcome = sup.run(handle_signals=False)
    finally:
        for s in stranger:
            s.close()
    kinds = [e.kind for e in events]
    assert stranger, "the fake never bound its port"
    assert "ready" not in kinds and "stranger" in kinds, kinds
    (note,) = [e for e in events if e.kind == "stranger"]
    assert f"pid {os.getpid()}" in note.message and note.data["port"] == port
    assert "/health" in stranger[0].paths  # it was probed…
    assert stranger[0].headers == [] and "/v1/models" not in stranger[0].paths  # …but never sent the key
    assert outcome.exit_code == 0


def _profile(tmp_path: Path, name: str = "t", port: int | None = None) -> Path:
    doc = {
        "version": 1,
        "name": name,
        "model": {"id": "m", "max_model_len": 4096},
        "engine": {"gpu_memory_utilization": 0.01},
        "server": {"port": port or free_port(), "ready_timeout_s": 20, "shutdown_grace_s": 2},
        "restart": {"policy": "never"},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _serve(tmp_path: Path, profile: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qwendeploy", "serve", str(profile), "--log-dir", str(tmp_path / "logs"), *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        FAKE_VLLM_MODE="healthy",
        FAKE_VLLM_STATE_DIR=str(tmp_path),
        QWENDEPLOY_VLLM_BIN=str(FAKE_VLLM),
        PYTHONUNBUFFERED="1",
    )


@pytest.mark.slow
def test_one_serve_per_profile_and_port_and_sighup_stops_cleanly(tmp_path: Path) -> None:
    prof = _profile(tmp_path)
    env = _env(tmp_path)
    first = subprocess.Popen(
        _serve(tmp_path, prof), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    try:
        read_until(first, "ready after")
        second = subprocess.run(_serve(tmp_path, prof), env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"Another qwendeploy serve (pid {first.pid}) is already running the profile named 't'" in second.stderr
        assert "Traceback" not in second.stderr
        # another name on the same port is refused too
        port = yaml.safe_load(prof.read_text())["server"]["port"]
        other = _profile(tmp_path, name="u", port=port)
        third = subprocess.run(_serve(tmp_path, other), env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert third.returncode == 2 and f"a server on port {port}" in third.stderr, third.stderr
        assert len(list((tmp_path / "logs").glob("*.log"))) == 1  # the losers started nothing, wrote no log
        # SIGHUP (the terminal went away) is a clean stop: exit 0, nothing left behind
        first.send_signal(signal.SIGHUP)
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.stdout is not None
    rest = first.stdout.read()
    assert "received SIGHUP" in rest
    assert alive(server_pids(tmp_path)) == []
    # the lock died with the process: the profile serves again
    again = subprocess.Popen(
        _serve(tmp_path, prof), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    try:
        read_until(again, "ready after")
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    logs = sorted(p.name for p in (tmp_path / "logs").glob("t.*.log"))
    assert len(logs) == 2 and logs[0] != logs[1]  # the second run did not overwrite the first run's log


def test_locks_die_with_their_process(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from qwendeploy.adapters import serve_guard as g; "
        "g.acquire(Path(sys.argv[1]), names=['t'], ports=[8000]); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(PreflightFailed, match=f"pid {holder.pid}"):
            serve_guard.acquire(tmp_path, names=["t"], ports=[9000])
        with pytest.raises(PreflightFailed, match="port 8000"):
            serve_guard.acquire(tmp_path, names=["u"], ports=[8000])
        holder.send_signal(signal.SIGKILL)  # no clean-up runs
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert wait_for(lambda: _can_lock(tmp_path))


def _can_lock(d: Path) -> bool:
    try:
        serve_guard.acquire(d, names=["t"], ports=[8000]).release()
        return True
    except PreflightFailed:
        return False


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "t.lock").symlink_to(victim)
    with pytest.raises(PreflightFailed, match="symbolic link"):
        serve_guard.acquire(tmp_path, names=["t"], ports=[])
    assert victim.read_text() == "keep"


def test_retention_keeps_the_newest_runs_and_nothing_else_is_touched(tmp_path: Path) -> None:
    runs = [serve_guard.new_run_id(now=1_700_000_000 + i, pid=100 + i) for i in range(25)]
    for r in runs:
        for n in range(2):
            (tmp_path / serve_guard.log_name("t", r, n)).write_text(r)
    (tmp_path / serve_guard.log_name("t-0", runs[0], 0)).write_text("other server")
    (tmp_path / "t.0.log").write_text("an older qwendeploy's log")
    (tmp_path / "notes.txt").write_text("mine")
    removed = serve_guard.prune_logs(tmp_path, ["t"], keep_runs=20, current=runs[1])
    gone = {p.name for p in removed}
    assert gone == {serve_guard.log_name("t", r, n) for r in (runs[0], *runs[2:5]) for n in range(2)}
    left = {p.name for p in tmp_path.iterdir()}
    assert serve_guard.log_name("t", runs[1], 0) in left  # the current run is kept even if old
    assert {"t.0.log", "notes.txt", serve_guard.log_name("t-0", runs[0], 0)} <= left
    assert all(serve_guard.log_name("t", r, 1) in left for r in runs[5:])


def test_run_ids_sort_by_time_and_never_repeat() -> None:
    a = serve_guard.new_run_id(now=1_700_000_000.25, pid=7)
    b = serve_guard.new_run_id(now=1_700_000_000.5, pid=7)
    c = serve_guard.new_run_id(now=1_700_000_001.0, pid=3)
    assert a < b < c and len({a, b, c}) == 3
    assert a == "20231114T221320250000Z-7"


def test_a_lock_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PreflightFailed, match="only this user can write"):
        serve_guard.acquire(shared, names=["t"], ports=[8000])
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "private", target_is_directory=True)
    (tmp_path / "private").mkdir(mode=0o700)
    with pytest.raises(PreflightFailed):
        serve_guard.acquire(link, names=["t"], ports=[8000])


@pytest.mark.slow
def test_printed_examples_quote_a_hostile_served_name(tmp_path: Path) -> None:
    import ast
    import shlex

    name = 'it\'s "x" $(touch pwned)'
    prof = _profile(tmp_path)
    doc = yaml.safe_load(prof.read_text())
    doc["server"]["served_model_name"] = name
    prof.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen(
        _serve(tmp_path, prof),
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        out = read_until(proc, "python:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    curl = next(line for line in out.splitlines() if "curl:" in line).split("curl:", 1)[1].strip()
    words = shlex.split(curl)  # what a shell would pass to curl: the body is one word, nothing runs
    assert words[0] == "curl" and json.loads(words[words.index("-d") + 1])["model"] == name
    py = next(line for line in out.splitlines() if "python:" in line).split("python:", 1)[1].strip()
    call = next(
        n for n in ast.walk(ast.parse(py)) if isinstance(n, ast.Call) and n.keywords and n.keywords[0].arg == "model"
    )
    assert ast.literal_eval(call.keywords[0].value) == name
    assert not (ROOT / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_a_log_that_cannot_be_written_is_reported_and_the_pipe_still_drained(tmp_path: Path) -> None:
    import queue

    from qwendeploy.adapters import process

    r, w = os.pipe()
    lines = [f"line {i} " + "x" * 100 for i in range(2000)]  # more than a pipe buffer holds
    writer = threading.Thread(target=lambda: (os.write(w, "\n".join(lines).encode() + b"\n"), os.close(w)))
    writer.start()
    sp = process.ServerProcess(
        popen=None,  # type: ignore[arg-type]  # the pump only needs the queue, tail and log path
        log_path=Path("/dev/full"),
        started_at=0.0,
        lines=queue.SimpleQueue(),
    )
    with open(r, "rb") as stream, open("/dev/full", "w", encoding="utf-8") as full:
        process._pump(stream, full, sp)  # returns at end of file: the writer was never blocked
    writer.join(timeout=10)
    assert not writer.is_alive()
    got = []
    while not sp.lines.empty():
        got.append(sp.lines.get_nowait())
    (note,) = [g for g in got if g.startswith("# qwendeploy:")]  # said once, at the first failed write
    assert "ERROR: cannot write the log file /dev/full: No space left on device" in note
    assert [g for g in got if g != note] == lines  # every line still reached the supervisor
