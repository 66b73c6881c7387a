"""What reads a plan's estimate: free memory must cover the process footprint, not only vLLM's budget.

``estimate.per_gpu[].total_bytes`` is the in-budget sum; ``footprint_bytes`` is the whole process. Doctor's
profile check and serve's preflight compare free memory with the footprint (``total_bytes`` for profiles written
before ``footprint_bytes`` existed, when it was the footprint).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes.fake_nvml import FakeNvml
from typer.testing import CliRunner

from qwendeploy.adapters import nvml
from qwendeploy.adapters.preflight import check_gpus
from qwendeploy.cli import app
from qwendeploy.core.checks.machine import run_checks
from qwendeploy.core.machine_facts import MachineFacts, SystemFacts
from qwendeploy.core.profile import EngineSection, EstimateSection, GpuEstimate, ModelSection, PlacementSection, Profile
from qwendeploy.core.units import GiB
from qwendeploy.core.vllm_args import LaunchSpec

H100 = Path(__file__).parent.parent / "fixtures" / "machines" / "1xh100.yaml"


def _profile(total: int, footprint: int) -> Profile:
    return Profile(
        model=ModelSection(id="Qwen/Qwen2.5-7B-Instruct"),
        placement=PlacementSection(tensor_parallel_size=1, gpus=["0"]),
        engine=EngineSection(gpu_memory_utilization=0.5),
        estimate=EstimateSection(per_gpu=[GpuEstimate(total_bytes=total, footprint_bytes=footprint)]),
    )


def _doctor_memory(fake: FakeNvml, prof: Profile) -> str:
    host = SystemFacts(
        shm_total_bytes=16 * GiB, shm_free_bytes=16 * GiB, in_container=False, memlock_soft=-1, memlock_hard=-1
    )
    facts = MachineFacts(nvml=nvml.probe(fake, processes=fake.process_lookup), system=host)
    return next(c for c in run_checks(facts, prof) if c.name == "profile.memory").status


def _preflight_memory(fake: FakeNvml, prof: Profile) -> str:
    spec = LaunchSpec(
        argv=(), env={}, host="127.0.0.1", port=8000, served_model_name="q", gpus=("0",), replica=0, name="q"
    )
    checks = check_gpus(prof, [spec], strict=True, probe=lambda: nvml.probe(fake, processes=fake.process_lookup))
    return next(c for c in checks if c.name == "gpu memory").status


def test_free_memory_is_compared_with_the_footprint() -> None:
    fake = FakeNvml.load(H100)
    # Budget (total) fits in the H100's ~79 GiB free, the whole process does not.
    over = _profile(total=60 * GiB, footprint=90 * GiB)
    assert _doctor_memory(fake, over) == "fail"
    assert _preflight_memory(fake, over) == "fail"
    ok = _profile(total=60 * GiB, footprint=70 * GiB)
    assert _doctor_memory(fake, ok) == "ok"
    assert _preflight_memory(fake, ok) == "ok"


def test_profiles_without_a_footprint_fall_back_to_total() -> None:
    fake = FakeNvml.load(H100)
    old = _profile(total=90 * GiB, footprint=0)  # written when total_bytes was the footprint
    assert _doctor_memory(fake, old) == "fail"
    assert _preflight_memory(fake, old) == "fail"


def test_a_mig_gpu_is_refused_not_planned_as_the_whole_card(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwendeploy.cli import wiring

    fake = FakeNvml.load(Path(__file__).parent.parent / "fixtures" / "machines" / "1xa100-mig.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    res = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "auto"])
    assert res.exit_code == 2
    assert "MIG enabled" in res.output and "MIG instance(s)" in res.output and "Traceback" not in res.output


def test_gpus_held_by_other_processes_name_them_instead_of_asking_for_more_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen on the lent H100 while a vLLM server ran: `plan --gpus auto` said "more GPUs: 2× H100". The cause is
    the memory others hold: say so, name them, and what fits once they are gone."""
    from qwendeploy.cli import wiring

    fake = FakeNvml.load(Path(__file__).parent.parent / "fixtures" / "machines" / "1xa10g-other-process.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    res = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "auto", "--context", "32768"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "other processes hold 16.0 GiB of GPU 0" in text
    assert "free the GPUs: GPU 0 has" in text and "PID 777 (python train.py --epochs 3) 12.0 GiB" in text
    assert "vLLM server is among them" not in text  # only a vLLM process gets that remark
    assert "empty, it fits with TP1" in text
    assert "more GPUs" not in text and "Traceback" not in text
    # planned for an empty card of the same kind (a simulated inventory), the same request fits
    sim = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "1xA10G", "--context", "32768"])
    assert sim.exit_code == 0, sim.output


def test_a_running_vllm_holding_the_gpu_is_called_that(monkeypatch: pytest.MonkeyPatch) -> None:
    """The orphaned vLLM engine cores of the 2×A100 machine: the suggestion says a vLLM server holds the memory."""
    from qwendeploy.cli import wiring

    fake = FakeNvml.load(Path(__file__).parent.parent / "fixtures" / "machines" / "2xa100-orphan.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    res = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-32B-Instruct", "--gpus", "auto", "--context", "32768"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "PID 4242 (VLLM::EngineCore)" in text and "vLLM server is among them" in text
    assert "more GPUs" not in text
