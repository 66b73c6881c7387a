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
from qwendeploy.core.machine_checks import run_checks
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
