"""`doctor` and `plan --gpus auto` on the fake built from the real H100's NVML answers, against what the real
commands printed on that machine (tests/fixtures/gpu-runs/h100-nvml/: doctor.json, facts.json, plan.json,
p7-131k.yaml).

NVML-derived checks must agree exactly. Checks about the host (its torch, /dev/shm, NCCL variables, memlock,
installed versions, container) describe the machine the test runs on: the CLI test only requires them to be
there, and the core test pins the host to the real machine's system facts, where every check agrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.fake_nvml import FakeNvml
from typer.testing import CliRunner

from qwendeploy.adapters import nvml
from qwendeploy.cli import app, wiring
from qwendeploy.core.checks.machine import run_checks
from qwendeploy.core.machine_facts import MachineFacts, SystemFacts

FIXTURES = Path(__file__).parent.parent / "fixtures"
REAL = FIXTURES / "gpu-runs" / "h100-nvml"
MACHINE = FIXTURES / "machines" / "1xh100-real.yaml"
runner = CliRunner()

HOST_CHECKS = {"driver", "shm", "container", "cuda_visible_devices", "nccl_env", "infiniband", "memlock", "versions"}
"""Checks whose answer depends on the host running the test (torch build, /dev/shm, env, limits, packages)."""
REWORDED = {"nvlink"}
"""Same status as on the real machine; the detail now says "One GPU" instead of "talk over PCIe" for a lone card."""


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _covers(got: Any, real: Any) -> bool:
    """``got`` has every key ``real`` has, with equal values (keys added since the real run are allowed)."""
    if isinstance(real, dict):
        return isinstance(got, dict) and all(k in got and _covers(got[k], v) for k, v in real.items())
    if isinstance(real, list):
        return isinstance(got, list) and len(got) == len(real) and all(map(_covers, got, real))
    return bool(got == real)


@pytest.fixture
def real_h100(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml.load(MACHINE)
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    return fake


def test_checks_with_the_real_host_facts_are_the_real_doctor() -> None:
    fake = FakeNvml.load(MACHINE)
    facts = MachineFacts(
        nvml=nvml.probe(fake, processes=fake.process_lookup),
        system=SystemFacts.from_dict(_json(REAL / "facts.json")["system"]),
    )
    got = [c.to_dict() for c in run_checks(facts)]
    real = _json(REAL / "doctor.json")["checks"]
    assert [(c["name"], c["status"]) for c in got] == [(c["name"], c["status"]) for c in real]
    assert [c for c in got if c["name"] not in REWORDED] == [c for c in real if c["name"] not in REWORDED]
    (nvlink,) = [c for c in got if c["name"] == "nvlink"]
    assert nvlink["detail"] == "One GPU: no NVLink peers (NVML: NotSupported)."


def test_doctor_json_on_the_real_h100_answers(real_h100: FakeNvml) -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    got = json.loads(result.stdout)
    real = _json(REAL / "doctor.json")
    assert [c["name"] for c in got["checks"]] == [c["name"] for c in real["checks"]]
    assert got["diagnoses"] == real["diagnoses"] == []
    real_by_name = {c["name"]: c for c in real["checks"]}
    for c in got["checks"]:
        if c["name"] in HOST_CHECKS:
            assert c["status"] in ("ok", "warn", "fail", "skip")
            continue
        want = real_by_name[c["name"]]
        assert c["status"] == want["status"], c["name"]
        if c["name"] not in REWORDED:
            assert c == want
    nvml_failed = any(c["status"] == "fail" for c in got["checks"] if c["name"] not in HOST_CHECKS)
    assert not nvml_failed and "CUDA sees 79.18 GiB; 480.0 MiB driver reserve" in result.stdout


def test_plan_gpus_auto_sees_the_real_inventory(real_h100: FakeNvml) -> None:
    """Inventory and capacity as on the card; KV figures are the estimator's (recalibrated separately)."""
    result = runner.invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "auto", "--json"])
    assert result.exit_code == 0, result.output
    got, real = json.loads(result.stdout), _json(REAL / "plan.json")
    assert set(real) <= set(got) and set(real["per_gpu"][0]) <= set(got["per_gpu"][0])
    assert _covers(got["inventory"], real["inventory"])
    assert got["inventory"]["gpus"][0]["total_bytes"] == 85017493504  # torch.cuda total_memory on that card
    assert _covers(got["placement"], real["placement"])
    assert got["fits"] is real["fits"] is True
    g, r = got["per_gpu"][0], real["per_gpu"][0]
    assert (
        (g["name"], g["gpu_total_bytes"]) == (r["name"], r["gpu_total_bytes"]) == ("NVIDIA H100 80GB HBM3", 85017493504)
    )
    util = got["engine"]["gpu_memory_utilization"]
    # utilisation × CUDA total (rounding is the estimator's: the real run floored, 78216094023 at 0.92)
    assert abs(g["capacity_bytes"] - util * g["gpu_total_bytes"]) <= 1
    assert abs(r["capacity_bytes"] - real["engine"]["gpu_memory_utilization"] * r["gpu_total_bytes"]) <= 1


def test_profile_written_there_has_the_same_hardware_section(real_h100: FakeNvml, tmp_path: Path) -> None:
    out = tmp_path / "p7-131k.yaml"
    args = ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "0", "--context", "131072", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    got, real = yaml.safe_load(out.read_text()), yaml.safe_load((REAL / "p7-131k.yaml").read_text())
    assert _covers(got["hardware"], real["hardware"])  # fingerprint: names, CUDA totals, interconnect
    assert got["placement"]["gpus"] == real["placement"]["gpus"] == ["GPU-7202b0ca-9c79-6baa-b24a-9ad0f2029620"]
    assert got["model"]["hf_overrides"] == real["model"]["hf_overrides"]
    assert got["model"]["max_model_len"] == real["model"]["max_model_len"] == 131072


def test_doctor_log_on_the_real_vllm_failure(real_h100: FakeNvml) -> None:
    log = FIXTURES / "gpu-runs" / "h200-vllm0.26" / "q7_fail" / "vllm.log"
    result = runner.invoke(app, ["doctor", "--log", str(log), "--json"])
    assert result.exit_code == 1
    top = json.loads(result.stdout)["diagnoses"][0]
    assert top["category"] == "max_model_len_exceeds_kv_cache" and "--max-model-len 100416" in top["fix"]
    clean = FIXTURES / "gpu-runs" / "h200-vllm0.26" / "q7_u90" / "vllm.log"
    result = runner.invoke(app, ["doctor", "--log", str(clean), "--json"])
    assert json.loads(result.stdout)["diagnoses"] == []


def test_ecc_pending_mode_is_a_mode_not_a_pending_change() -> None:
    """Real NVML answered ECC mode [1, 1] (on, and on after reboot): healthy. Only a differing mode warns."""
    real = yaml.safe_load(MACHINE.read_text())
    host = SystemFacts.from_dict(_json(REAL / "facts.json")["system"])

    def ecc(pending: bool) -> Any:
        desc = json.loads(json.dumps(real))
        desc["gpus"][0]["ecc_pending"] = pending
        fake = FakeNvml.from_report_dict(desc)
        facts = MachineFacts(nvml=nvml.probe(fake, processes=fake.process_lookup), system=host)
        return next(c for c in run_checks(facts) if c.name == "ecc")

    assert ecc(True).status == "ok"
    off = ecc(False)
    assert off.status == "warn" and "turns off at the next reboot" in off.detail
