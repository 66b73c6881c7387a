"""`doctor --log` input: a closed stdin is one clear error, a file is streamed (its age says how long a stalled
start-up has been silent), and what doctor knows of the machine (driver, GPU processes) reaches the diagnosis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.fake_nvml import FakeNvml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qwendeploy.cli import app, wiring

MACHINES = Path(__file__).parent.parent / "fixtures" / "machines"
CASES = Path(__file__).parent.parent / "fixtures" / "doctor-cases"
runner = CliRunner()


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml.load(MACHINES / "no-driver.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    return fake


def test_closed_stdin_is_one_clear_error_without_traceback() -> None:
    out = subprocess.run(  # the child starts with descriptor 0 closed, as `doctor --log - <&-` does
        [sys.executable, "-m", "qwendeploy", "doctor", "--log", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert out.returncode == 2
    assert "stdin is closed" in out.stderr and "Traceback" not in out.stderr + out.stdout


def test_a_stalled_log_says_how_long_the_file_has_been_silent(no_driver: FakeNvml, tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text((CASES / "startup_stalled_after_capture.log").read_text().partition("\n---\n")[2])
    old = time.time() - 3 * 3600
    os.utime(log, (old, old))
    result = runner.invoke(app, ["doctor", "--log", str(log), "--json"])
    top = json.loads(result.stdout)["diagnoses"][0]
    assert top["rule_id"] == "startup-stalled"
    assert "CUDA-graph capture for 30 s" in top["summary"] and "nothing was written for 3 h" in top["summary"]


def test_stdin_is_streamed_too(no_driver: FakeNvml) -> None:
    body = (CASES / "gloo_ifname_exclusion_syntax.log").read_text().partition("\n---\n")[2]
    result = runner.invoke(app, ["doctor", "--log", "-", "--json"], input=body)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["diagnoses"][0]["rule_id"] == "gloo-ifname-exclusion-syntax"


def test_machine_facts_say_whose_memory_and_which_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeNvml.load(MACHINES / "2xa100-orphan.yaml")  # pid 4242 VLLM::EngineCore, parent gone; driver 535
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    log = tmp_path / "oom.log"
    log.write_text(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "79.15 GiB of which 1.10 GiB is free. Process 4242 has 70.00 GiB memory in use. Of the allocated memory "
        "6.50 GiB is allocated by PyTorch, and 0.20 GiB is reserved by PyTorch but unallocated.\n"
        "RuntimeError: Error 803: system has unsupported display driver / cuda driver combination\n"
    )
    found = json.loads(runner.invoke(app, ["doctor", "--log", str(log), "--json"]).stdout)["diagnoses"]
    by_cat = {d["category"]: d for d in found}
    assert "orphaned_gpu_process" in by_cat and "kill -TERM 4242" in by_cat["orphaned_gpu_process"]["fix"]
    assert by_cat["driver_cuda_mismatch"]["rule_id"] == "driver-too-old"  # R535: the driver really is old


RUNS = Path(__file__).parent.parent / "fixtures" / "gpu-runs"


def test_log_with_profile_shows_predicted_vs_reported(no_driver: FakeNvml, tmp_path: Path) -> None:
    log = RUNS / "h100-vllm0.26" / "h100_q3_8b" / "vllm.log"
    profile = RUNS / "h100-serve-7b" / "q3_8b" / "profile.yaml"  # planned for this start-up: within 0.3%
    d = json.loads(runner.invoke(app, ["doctor", "--log", str(log), "--profile", str(profile), "--json"]).stdout)
    rows = {r["name"]: r for r in d["startup"]["comparison"]}
    assert rows["KV cache"]["predicted"] == 408_240 and rows["KV cache"]["reported"] == 408_256
    assert d["startup"]["flagged"] is False and not any(r["flagged"] for r in rows.values())
    # The same profile against another model's start-up parts by far more than 2%.
    other = RUNS / "h100-vllm0.26" / "h100_q7_32k" / "vllm.log"
    res = runner.invoke(app, ["doctor", "--log", str(other), "--profile", str(profile)])
    assert "Start-up vs plan" in res.stdout and "> 2%" in res.stdout and "estimate and vLLM part" in res.stdout
    d = json.loads(runner.invoke(app, ["doctor", "--log", str(other), "--profile", str(profile), "--json"]).stdout)
    assert d["startup"]["flagged"] is True
    # Without --profile the JSON keeps its two keys.
    assert set(json.loads(runner.invoke(app, ["doctor", "--log", str(log), "--json"]).stdout)) == {
        "checks",
        "diagnoses",
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_fuzz_any_log_file_gives_an_answer_never_a_traceback(no_driver: FakeNvml, tmp_path: Path, blob: bytes) -> None:
    log = tmp_path / "fuzz.log"
    log.write_bytes(blob)
    start = time.monotonic()
    result = runner.invoke(app, ["doctor", "--log", str(log), "--json"])
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert set(json.loads(result.stdout)) == {"checks", "diagnoses"}
    assert time.monotonic() - start < 10
