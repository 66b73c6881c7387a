"""vLLM 0.8–0.18: the accounting differences read in each release's sources (docs/memory-model.md, per-release table).

Each test plans the same deployment with two releases and checks the term that the release changes, with the size
the published logs show; the rest of the estimate must not move.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.memory import DEFAULT_CALIBRATION, EngineSettings, MemoryEstimate, accounting_for, estimate
from qwendeploy.core.models import ModelSpec, find_model
from qwendeploy.core.units import GiB

H100 = Gpu(0, "NVIDIA H100 80GB HBM3", int(79.19 * GiB), int(79.19 * GiB), (9, 0))
L40S = Gpu(0, "NVIDIA L40S", int(44.42 * GiB), int(44.42 * GiB), (8, 9))


def _spec(model_id: str) -> ModelSpec:
    spec = find_model(model_id)
    assert spec is not None
    return spec


def _plan(version: str, *, model: str = "Qwen/Qwen3-14B", gpu: Gpu = H100, tp: int = 1, **kw: object) -> MemoryEstimate:
    defaults: dict[str, object] = {
        "max_model_len": 8192,
        "max_num_seqs": 1024,
        "max_num_batched_tokens": 8192,
        "gpu_memory_utilization": 0.95,
    }
    defaults.update(kw)
    settings = EngineSettings(**defaults)  # type: ignore[arg-type]
    gpus = tuple(replace(gpu, index=i) for i in range(tp))
    return estimate(_spec(model), gpus, tp=tp, pp=1, settings=settings, accounting=accounting_for(version))


@pytest.mark.parametrize(("version", "sorts"), [("0.8.5", True), ("0.11.2", True), ("0.16.0", True), ("0.17", False)])
def test_sampler_sorts_the_vocabulary_before_0_17(version: str, sorts: bool) -> None:
    assert accounting_for(version).sampler_sorts_vocab is sorts


def test_sort_sampler_profile_peak_matches_the_0_15_log() -> None:
    """llm-d version sweep, Qwen3-14B on one H100, 1024 sequences: 5.64 GiB peak on 0.15/0.16, 2.23 GiB on 0.17."""
    old, new = _plan("0.15.0"), _plan("0.17.0")
    assert old.per_gpu[0].activation_bytes / GiB == pytest.approx(5.64, abs=0.1)
    assert new.per_gpu[0].activation_bytes / GiB == pytest.approx(2.23, abs=0.05)
    assert old.per_gpu[0].weights_bytes == new.per_gpu[0].weights_bytes
    assert old.kv_cache_tokens < new.kv_cache_tokens


def test_sort_sampler_scales_with_max_num_seqs() -> None:
    """The sampler term is rows × vocab: at 64 sequences the forward pass dominates and 0.15 equals 0.17."""
    few_old, few_new = _plan("0.15", max_num_seqs=64), _plan("0.17", max_num_seqs=64)
    assert few_old.per_gpu[0].activation_bytes == few_new.per_gpu[0].activation_bytes


@pytest.mark.parametrize(("version", "in_baseline"), [("0.10.2", False), ("0.11.2", True), ("0.18.0", True)])
def test_distributed_buffers_before_the_snapshot_from_0_11_to_0_18(version: str, in_baseline: bool) -> None:
    assert accounting_for(version).distributed_in_baseline is in_baseline
    assert accounting_for("0.19").distributed_in_baseline is False


def test_nccl_and_all_reduce_buffers_are_not_charged_on_0_11_to_0_18() -> None:
    """0.11–0.18 take the worker's snapshot after init_worker_distributed_environment: at TP 2 over NVLink the
    non-torch term is the single-GPU base, where 0.19 charges the NCCL and all-reduce workspaces (2.06 GiB)."""
    kw = {"custom_all_reduce": True, "nvlink": True}
    old = _plan("0.17", model="Qwen/Qwen2.5-7B-Instruct", tp=2, **kw)
    new = _plan("0.19", model="Qwen/Qwen2.5-7B-Instruct", tp=2, **kw)
    assert old.per_gpu[0].non_torch_bytes == DEFAULT_CALIBRATION.non_torch_bytes
    assert new.per_gpu[0].non_torch_bytes / GiB == pytest.approx(2.06, abs=0.05)
    assert old.kv_cache_tokens > new.kv_cache_tokens


def test_issue_example_0_11_reserves_more_than_0_19_on_two_l40s() -> None:
    """Issue 14: Qwen3-8B TP 2 on two L40S logs fewer KV tokens on 0.11.2 than on 0.19.1; the plan must too."""
    old = _plan("0.11.2", model="Qwen/Qwen3-8B", gpu=L40S, tp=2, gpu_memory_utilization=0.9, custom_all_reduce=False)
    new = _plan("0.19.1", model="Qwen/Qwen3-8B", gpu=L40S, tp=2, gpu_memory_utilization=0.9, custom_all_reduce=False)
    assert old.kv_cache_tokens < new.kv_cache_tokens


def test_0_8_charges_the_cuda_context_to_the_budget() -> None:
    """0.8.5's determine_available_memory counts total − free − torch memory (the context included) as non-torch."""
    assert accounting_for("0.8.5").context_in_budget
    assert not accounting_for("0.9.2").context_in_budget
    old, new = _plan("0.8.5"), _plan("0.9.2")
    taken = new.per_gpu[0].kv_budget_bytes - old.per_gpu[0].kv_budget_bytes
    assert taken == DEFAULT_CALIBRATION.cuda_context_bytes


def test_0_19_and_later_are_unchanged_by_the_older_rules() -> None:
    for version in ("0.19", "0.20", "0.26", "0.33"):
        acc = accounting_for(version)
        assert not (acc.sampler_sorts_vocab or acc.distributed_in_baseline or acc.context_in_budget)
