"""`qwendeploy serve`: dry-run, preflight refusals (exit 2) and full runs against the fake vLLM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from qwendeploy.cli import app, wiring
from tests.fakes.fake_nvml import FakeNvml
from tests.fakes.serving import FAKE_VLLM, alive, free_port, read_until, server_pids, wait_for

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _profile(tmp_path: Path, **server: object) -> Path:
    doc = {
        "version": 1,
        "name": "t",
        "model": {"id": "m", "max_model_len": 4096},
        "engine": {"gpu_memory_utilization": 0.01},
        "server": {"port": free_port(), "ready_timeout_s": 20, "shutdown_grace_s": 2, **server},
        "restart": {"policy": "never"},
    }
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch, fixtures: Path) -> None:
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: FakeNvml.load(fixtures / "machines" / "no-driver.yaml"))


@pytest.fixture
def no_vllm_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("QWENDEPLOY_VLLM_BIN", raising=False)


def test_dry_run_json_works_without_vllm(tmp_path: Path, no_vllm_on_path: None) -> None:
    res = runner.invoke(app, ["serve", str(_profile(tmp_path)), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    (server,) = doc["servers"]
    assert server["argv"][:3] == ["vllm", "serve", "m"]
    assert server["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_dry_run_text_redacts_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QK", "sk-dry-secret")
    p = _profile(tmp_path, api_key_env="QK")
    for extra in ([], ["--json"], ["--runtime", "docker"]):
        res = runner.invoke(app, ["serve", str(p), "--dry-run", "--host", "0.0.0.0", "--port", "9999", *extra])
        assert res.exit_code == 0, res.output
        assert "sk-dry-secret" not in res.output
        assert "9999" in res.output
    text = runner.invoke(app, ["serve", str(p), "--dry-run"]).output
    assert 'VLLM_API_KEY="$QK" ' in text and "--api-key" not in text and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in text


def test_secret_in_profile_env_is_hidden_natively_and_in_docker(tmp_path: Path) -> None:
    doc = yaml.safe_load(_profile(tmp_path).read_text())
    doc["env"] = {"HF_TOKEN": "hf_profile_secret"}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(doc))
    for extra in ([], ["--json"], ["--runtime", "docker"], ["--runtime", "docker", "--json"]):
        res = runner.invoke(app, ["serve", str(p), "--dry-run", *extra])
        assert res.exit_code == 0, res.output
        assert "hf_profile_secret" not in res.output and "HF_TOKEN" in res.output


def test_multi_node_dry_run_names_the_ray_cluster_for_gpus(tmp_path: Path) -> None:
    doc = yaml.safe_load(_profile(tmp_path).read_text())
    doc["placement"] = {"tensor_parallel_size": 2, "nodes": 2, "distributed_executor_backend": "ray"}
    p = tmp_path / "mn.yaml"
    p.write_text(yaml.safe_dump(doc))
    res = runner.invoke(app, ["serve", str(p), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "GPUs  →" not in res.output and "GPUs from the Ray cluster (2 nodes) →" in res.output


def test_unwritable_log_dir_is_a_preflight_failure(tmp_path: Path, no_nvml: None) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    res = runner.invoke(
        app, ["serve", str(_profile(tmp_path)), "--vllm-bin", str(FAKE_VLLM), "--log-dir", str(blocker / "logs")]
    )
    assert res.exit_code == 2, res.output
    assert "Cannot write log files in" in res.output and "Traceback" not in res.output


def test_missing_vllm_is_exit_2_with_install_hint(tmp_path: Path, no_vllm_on_path: None) -> None:
    res = runner.invoke(app, ["serve", str(_profile(tmp_path))])
    assert res.exit_code == 2
    assert "pip install 'qwendeploy[vllm]'" in res.output


def test_vllm_bin_must_be_executable(tmp_path: Path) -> None:
    res = runner.invoke(app, ["serve", str(_profile(tmp_path)), "--vllm-bin", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not an executable" in res.output


def test_bad_profile_is_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nmodel: {id: m}\nplacement: {tensor_paralel_size: 2}\n")
    res = runner.invoke(app, ["serve", str(p), "--dry-run"])
    assert res.exit_code == 2 and "tensor_parallel_size" in res.output


def test_port_in_use_is_refused(tmp_path: Path, no_nvml: None) -> None:
    p = _profile(tmp_path)
    port = yaml.safe_load(p.read_text())["server"]["port"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        res = runner.invoke(app, ["serve", str(p), "--vllm-bin", str(FAKE_VLLM)])
    assert res.exit_code == 2
    assert f"Port {port}" in res.output and "already in use" in res.output


def test_non_loopback_without_key_is_refused(tmp_path: Path, no_nvml: None) -> None:
    res = runner.invoke(app, ["serve", str(_profile(tmp_path)), "--vllm-bin", str(FAKE_VLLM), "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert "without an API key" in res.output and "--insecure" in res.output


def test_strict_makes_missing_nvml_an_error(tmp_path: Path, no_nvml: None) -> None:
    res = runner.invoke(app, ["serve", str(_profile(tmp_path)), "--vllm-bin", str(FAKE_VLLM), "--strict"])
    assert res.exit_code == 2 and "GPU checks skipped" in res.output


def test_gpu_memory_held_by_another_process_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixtures: Path
) -> None:
    fake = FakeNvml.load(fixtures / "machines" / "1xa10g-other-process.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    doc = yaml.safe_load(_profile(tmp_path).read_text())
    doc["engine"]["gpu_memory_utilization"] = 0.9
    p = tmp_path / "p2.yaml"
    p.write_text(yaml.safe_dump(doc))
    res = runner.invoke(app, ["serve", str(p), "--vllm-bin", str(FAKE_VLLM)])
    assert res.exit_code == 2
    assert "GPU 0 has" in res.output and "pid 777 python" in res.output


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_dry_run_matches_golden(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_dryrun_goldens import GOLDEN, golden_for
    finally:
        sys.path.pop(0)
    golden = GOLDEN / f"{name}.json"
    assert golden.exists(), "run python scripts/gen_dryrun_goldens.py"
    assert golden_for(ROOT / "profiles" / f"{name}.yaml") == golden.read_text()
    # and the CLI prints exactly those servers
    prof = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())
    if prof.get("server", {}).get("api_key_env"):
        monkeypatch.setenv(prof["server"]["api_key_env"], "golden-placeholder-key")
    res = runner.invoke(app, ["serve", str(ROOT / "profiles" / f"{name}.yaml"), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    servers = json.loads(res.output)["servers"]
    for s in servers:
        s.pop("command")
        s["argv"][0] = "vllm"
    assert servers == json.loads(golden.read_text())["servers"]


# ------------------------------------------------------------------ the real command in a subprocess


def _spawn(tmp_path: Path, profile: Path, mode: str = "healthy", *extra: str, **env: str) -> subprocess.Popen[str]:
    full = dict(
        os.environ,
        FAKE_VLLM_MODE=mode,
        FAKE_VLLM_STATE_DIR=str(tmp_path),
        QWENDEPLOY_VLLM_BIN=str(FAKE_VLLM),
        PYTHONUNBUFFERED="1",
        **env,
    )
    cmd = [sys.executable, "-m", "qwendeploy", "serve", str(profile), "--log-dir", str(tmp_path / "logs"), *extra]
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


@pytest.mark.slow
def test_serve_runs_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    p = _profile(tmp_path, api_key_env="QK")
    proc = _spawn(tmp_path, p, QK="sk-run-secret")
    out = read_until(proc, "ready after")
    assert wait_for(lambda: len(server_pids(tmp_path)) == 2)
    cmdlines = [" ".join(psutil.Process(pid).cmdline()) for pid in server_pids(tmp_path)]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    # read through the same buffered reader: communicate() would skip what its read-ahead already holds
    assert proc.stdout is not None
    out += proc.stdout.read()
    assert proc.returncode == 0, out
    assert "curl http://127.0.0.1:" in out and "Authorization: Bearer $QK" in out
    (log,) = (tmp_path / "logs").glob("t.*.0.log")  # <name>.<run id>.<start>.log
    assert str(log) in out
    assert "sk-run-secret" not in out
    assert "sk-run-secret" not in log.read_text()
    assert alive(server_pids(tmp_path)) == []
    # what `ps` showed: no key on the server's or its worker's command line
    assert cmdlines and all("sk-run-secret" not in c and "--api-key" not in c for c in cmdlines)


@pytest.mark.slow
def test_serve_gives_up_with_diagnosis_on_oom(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, _profile(tmp_path), "oom_at_startup", "--json")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert "gave_up" in kinds and "restart" not in kinds
    assert alive(server_pids(tmp_path)) == []


@pytest.mark.slow
def test_supervisor_killed_server_does_not_live_on(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, _profile(tmp_path), "ignore_sigterm")
    read_until(proc, "ready after")
    assert wait_for(lambda: len(server_pids(tmp_path)) == 2)
    proc.kill()
    proc.communicate(timeout=10)
    # shutdown_grace_s is 2: the watchdog SIGTERMs, waits, then SIGKILLs the group
    assert wait_for(lambda: alive(server_pids(tmp_path)) == [], timeout=8)


@pytest.mark.slow
def test_engine_death_with_exit_0_ends_serve_with_exit_1(tmp_path: Path) -> None:
    """vLLM's API server exits 0 after its engine core died; systemd's Restart=on-failure must see a failure."""
    proc = _spawn(tmp_path, _profile(tmp_path), "exit_after:0.2", "--json")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["exit_code"] for e in events if e["event"] == "exited"] == [0]
    assert any(e["event"] == "gave_up" for e in events)
    assert alive(server_pids(tmp_path)) == []


@pytest.mark.slow
def test_sigint_is_reported_before_the_servers_stop(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, _profile(tmp_path), "healthy", "--json")
    read_until(proc, '"event": "ready"')
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    assert proc.stdout is not None
    kinds = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    names = [e["event"] for e in kinds]
    assert names.index("stopping") < names.index("stopped"), names
    assert "received SIGINT" in kinds[names.index("stopped")]["message"]
    assert proc.returncode == 0
