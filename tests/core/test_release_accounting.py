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


@pytest.mark.parametrize(
    ("version", "charged"),
    [("0.8.5", "custom"), ("0.10.2", "custom"), ("0.11.2", "none"), ("0.16.0", "none"), ("0.17", "fusion")],
)
def test_which_all_reduce_memory_each_release_charges(version: str, charged: str) -> None:
    assert accounting_for(version).all_reduce_buffers == charged


def _tp2_nvlink_non_torch(version: str) -> float:
    est = _plan(version, model="Qwen/Qwen2.5-7B-Instruct", tp=2, custom_all_reduce=True, nvlink=True)
    return est.per_gpu[0].non_torch_bytes / GiB


def test_all_reduce_buffers_at_tp2_over_nvlink_by_release() -> None:
    """0.11–0.16 take the snapshot after the distributed init and have no fusion workspace: base + NCCL growth
    (~0.54 GiB, as a published TP 2 log of about 0.14 shows); 0.17+ charge FlashInfer's all-reduce fusion workspace
    (2.06 GiB in the 0.19 H100 logs); 0.9–0.10 charge the custom all-reduce buffers, which are small."""
    none, custom = _tp2_nvlink_non_torch("0.13"), _tp2_nvlink_non_torch("0.10")
    fusion, later = _tp2_nvlink_non_torch("0.18"), _tp2_nvlink_non_torch("0.19")
    assert none == pytest.approx(0.54, abs=0.15)
    assert later == pytest.approx(2.06, abs=0.05)
    assert fusion == later
    assert custom - none == pytest.approx(DEFAULT_CALIBRATION.custom_all_reduce_bytes / GiB)


def test_single_gpu_non_torch_base_is_smaller_up_to_0_17() -> None:
    """llm-d version sweep, Qwen3-14B on one H100: non-torch 0.13 GiB on 0.15 and 0.17, 0.25 on 0.18."""
    assert _plan("0.17").per_gpu[0].non_torch_bytes / GiB == pytest.approx(0.13, abs=0.01)
    assert _plan("0.18").per_gpu[0].non_torch_bytes / GiB == pytest.approx(0.25, abs=0.015)


def test_pre_0_17_profile_peaks_of_other_models() -> None:
    """Out-of-sample: H100 runs on a pre-0.17 vllm-openai image (github-code-index:28022205292, 1024 sequences,
    block 128) log a 5.56 GiB peak for Qwen3-0.6B and 5.64 GiB for Qwen3-32B — the sorting sampler's rows × vocab,
    whatever the model size."""
    small = _plan("0.16", model="Qwen/Qwen3-0.6B", max_model_len=16000, gpu_memory_utilization=0.9, block_size=128)
    big = _plan("0.16", model="Qwen/Qwen3-32B", max_model_len=16000, gpu_memory_utilization=0.9, block_size=128)
    assert small.per_gpu[0].activation_bytes / GiB == pytest.approx(5.56, abs=0.1)
    assert big.per_gpu[0].activation_bytes / GiB == pytest.approx(5.64, abs=0.1)
    # "Available KV cache memory: 64.45 GiB" for Qwen3-0.6B
    assert small.per_gpu[0].kv_budget_bytes / GiB == pytest.approx(64.45, rel=0.01)


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
        assert not (acc.sampler_sorts_vocab or acc.context_in_budget or acc.small_non_torch_base)
        assert acc.all_reduce_buffers == "fusion"
