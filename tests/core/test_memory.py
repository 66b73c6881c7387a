"""The memory estimator: KV formula against vLLM's own numbers (vllm.md §5), weight sharding, and properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.memory import (
    DEFAULT_CALIBRATION,
    EngineSettings,
    MemoryEstimate,
    accounting_for,
    estimate,
    kv_bytes_per_token,
    kv_plan,
    model_weight_bytes,
    pp_layer_counts,
    sampler_warmup_bytes,
    weight_shard,
)
from qwendeploy.core.models import ModelSpec, Moe, Quantization
from qwendeploy.core.units import GiB, MiB

QWEN25_7B = ModelSpec(
    id="Qwen/Qwen2.5-7B-Instruct",
    architecture="Qwen2ForCausalLM",
    num_hidden_layers=28,
    hidden_size=3584,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    head_dim=128,
    vocab_size=152064,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
    attention_bias=True,
    yarn_factor=4.0,
)
QWEN25_05B = replace(
    QWEN25_7B,
    id="Qwen/Qwen2.5-0.5B-Instruct",
    num_hidden_layers=24,
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=151936,
    tie_word_embeddings=True,
)
QWEN3_30B_A3B = ModelSpec(
    id="Qwen/Qwen3-30B-A3B",
    architecture="Qwen3MoeForCausalLM",
    num_hidden_layers=48,
    hidden_size=2048,
    intermediate_size=6144,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    vocab_size=151936,
    tie_word_embeddings=False,
    max_position_embeddings=40960,
    qk_norm=True,
    moe=Moe(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
)
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", 85_017_493_504, 85_017_493_504, (9, 0), memory_bandwidth_gbps=3350)


def kvt(spec: ModelSpec, tp: int, kv: str = "auto", layers: int | None = None) -> int:
    n = spec.num_hidden_layers if layers is None else layers
    return int(kv_bytes_per_token(spec, tp=tp, layers=n, kv_cache_dtype=kv, dtype="bfloat16").value)


@pytest.mark.parametrize(
    ("tp", "kv", "expected"),
    [(1, "auto", 57_344), (2, "auto", 28_672), (4, "auto", 14_336), (1, "fp8", 28_672), (4, "fp8", 7_168)],
)
def test_kv_bytes_per_token_match_vllm(tp: int, kv: str, expected: int) -> None:
    assert kvt(QWEN25_7B, tp, kv) == expected


def test_kv_heads_replicate_beyond_kv_head_count() -> None:
    # TP 28 > 4 KV heads: one head per rank, so per-GPU bytes stop shrinking at TP = 4.
    assert kvt(QWEN25_7B, 28) == kvt(QWEN25_7B, 4)


def test_pp_stage_holds_its_layers_only() -> None:
    # vllm.md: TP=2, PP=2 → 14 layers → 14,336 B/token/GPU.
    assert kvt(QWEN25_7B, 2, layers=14) == 14_336


@pytest.mark.parametrize(
    ("tp", "kv", "blocks", "tokens", "conc"),
    [
        (1, "auto", 23_405, 374_480, 11.43),
        (1, "fp8", 46_811, 748_976, 22.86),
        (2, "auto", 46_811, 748_976, 22.86),
        (2, "fp8", 93_622, 1_497_952, 45.71),
        (4, "auto", 93_622, 1_497_952, 45.71),
        (4, "fp8", 187_245, 2_995_920, 91.43),
    ],
)
def test_block_counts_match_vllm_table_for_20_gib(tp: int, kv: str, blocks: int, tokens: int, conc: float) -> None:
    p = kv_plan(20 * GiB, kvt(QWEN25_7B, tp, kv), 32768)
    assert (p.num_blocks, p.tokens, round(p.max_concurrency, 2)) == (blocks, tokens, conc)


@pytest.mark.parametrize(
    ("layers", "pp", "counts"),
    [(28, 2, (14, 14)), (3, 2, (2, 1)), (4, 3, (1, 2, 1)), (5, 3, (2, 2, 1)), (28, 3, (9, 10, 9)), (80, 1, (80,))],
)
def test_pp_split_follows_get_pp_indices(layers: int, pp: int, counts: tuple[int, ...]) -> None:
    assert pp_layer_counts(layers, pp) == counts


def test_qwen25_7b_bf16_weights_near_published_size() -> None:
    # 7.61B parameters × 2 bytes = 14.19 GiB (the card's shards sum to 14.2 GiB).
    assert model_weight_bytes(QWEN25_7B, dtype="bfloat16", quantization=None) / GiB == pytest.approx(14.19, abs=0.03)


def test_awq_int4_is_about_a_quarter_plus_bf16_embeddings() -> None:
    awq = Quantization(method="awq", bits=4, group_size=128, zero_point=True)
    full = model_weight_bytes(QWEN25_7B, dtype="float16", quantization=None)
    q = model_weight_bytes(QWEN25_7B, dtype="float16", quantization=awq)
    embed_and_head = 2 * 152064 * 3584 * 2
    linear = full - embed_and_head
    # 4 bits + fp16 scale and 4-bit zero per 128 weights = 0.5 + 2/128 + 0.5/128 bytes per weight.
    assert q - embed_and_head == pytest.approx(linear / 2 * (0.5 + 2.5 / 128), rel=0.01)


def test_fp8_block_weights_are_one_byte_plus_scales() -> None:
    fp8 = Quantization(method="fp8", bits=8, block_size=(128, 128))
    q = model_weight_bytes(QWEN3_30B_A3B, dtype="bfloat16", quantization=fp8)
    full = model_weight_bytes(QWEN3_30B_A3B, dtype="bfloat16", quantization=None)
    assert 0.5 * full < q < 0.53 * full


def _sum_shards(spec: ModelSpec, tp: int, pp: int) -> int:
    total = 0
    for stage in range(pp):
        total += tp * weight_shard(spec, tp=tp, pp_rank=stage, pp=pp, dtype="bfloat16", quantization=None).bytes
    return total


@settings(max_examples=40, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), pp=st.integers(1, 7))
def test_shards_sum_back_to_the_model_plus_replicated_parts(tp: int, pp: int) -> None:
    spec = QWEN25_7B
    whole = model_weight_bytes(spec, dtype="bfloat16", quantization=None)
    # Replicated on every TP rank: the layer norms (2 × hidden per layer) and the final norm.
    norms = (spec.num_hidden_layers * 2 * spec.hidden_size + spec.hidden_size) * 2
    assert _sum_shards(spec, tp, pp) == pytest.approx(whole + (tp - 1) * norms, abs=tp * pp * 2)


def test_tied_embeddings_get_a_second_copy_on_the_last_stage() -> None:
    one = _sum_shards(QWEN25_05B, 1, 1)
    two = _sum_shards(QWEN25_05B, 1, 2)
    assert two - one == 151936 * 896 * 2


def test_moe_experts_split_over_tp() -> None:
    s1 = weight_shard(QWEN3_30B_A3B, tp=1, pp_rank=0, pp=1, dtype="bfloat16", quantization=None)
    s2 = weight_shard(QWEN3_30B_A3B, tp=2, pp_rank=0, pp=1, dtype="bfloat16", quantization=None)
    assert s2.bytes == pytest.approx(s1.bytes / 2, rel=0.01)
    assert s1.bytes / GiB == pytest.approx(56.9, abs=0.3)  # 30.5B params in bf16


def _est(spec: ModelSpec = QWEN25_7B, tp: int = 1, pp: int = 1, **kw: object) -> MemoryEstimate:
    st_ = EngineSettings(**{"max_model_len": 32768, "max_num_seqs": 256, "max_num_batched_tokens": 2048, **kw})  # type: ignore[arg-type]
    return estimate(spec, (H100,) * (tp * pp), tp=tp, pp=pp, settings=st_)


def test_budget_is_never_exceeded_in_0_33_accounting() -> None:
    est = _est(tp=2)
    for m in est.per_gpu:
        inside = m.weights_bytes + m.activation_bytes + m.non_torch_bytes + m.cuda_graph_bytes + m.kv_cache_bytes
        assert m.graphs_in_budget and inside == m.in_budget_bytes <= m.capacity_bytes
        # what nvidia-smi shows: the context, everything held, and the working memory instead of the profiled peak
        held = m.weights_bytes + m.non_torch_bytes + m.cuda_graph_bytes + m.kv_cache_bytes
        assert m.footprint_bytes == m.cuda_context_bytes + held + m.working_bytes
        # total = weights + activation + overhead + KV, the in-budget sum
        assert m.total_bytes == m.weights_bytes + m.activation_bytes + m.overhead_bytes + m.kv_cache_bytes
        assert m.total_bytes == m.in_budget_bytes
        assert m.outside_budget_bytes == m.footprint_bytes - m.in_budget_bytes


def test_0_26_puts_cuda_graphs_on_top_of_the_budget() -> None:
    """0.26 and 0.29 profile a dense model alike (V2 runner); 0.29 also subtracts the graph estimate."""
    s = EngineSettings(max_model_len=32768, max_num_seqs=256, max_num_batched_tokens=2048)
    new = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=s, accounting=accounting_for("0.29"))
    old = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=s, accounting=accounting_for("0.26.0"))
    graphs = new.per_gpu[0].cuda_graph_bytes
    assert graphs > 0 and new.graphs_in_budget and not old.graphs_in_budget
    assert old.per_gpu[0].activation_bytes == new.per_gpu[0].activation_bytes
    assert old.per_gpu[0].kv_budget_bytes - new.per_gpu[0].kv_budget_bytes == graphs
    assert old.kv_cache_tokens > new.kv_cache_tokens
    # in 0.26 the graphs sit outside the budget, on top of it
    assert (
        old.per_gpu[0].outside_budget_bytes
        >= graphs + old.per_gpu[0].cuda_context_bytes - old.per_gpu[0].activation_bytes
    )


def test_0_33_profiles_the_sampler_warmup() -> None:
    # 1024 sequences (the H100 default): the fp32 warm-up pass outweighs the vocab-sized buffer
    s = EngineSettings(max_model_len=32768, max_num_seqs=1024, max_num_batched_tokens=8192)
    cur = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=s, accounting=accounting_for("0.33"))
    prev = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=s, accounting=accounting_for("0.32"))
    warm = sampler_warmup_bytes(QWEN25_7B, rows=1024, cal=DEFAULT_CALIBRATION)
    logits = 1024 * QWEN25_7B.vocab_size * 2
    assert cur.per_gpu[0].activation_bytes == pytest.approx(8192 * 3584 * 2 + logits + warm, abs=2)
    assert cur.per_gpu[0].activation_bytes > prev.per_gpu[0].activation_bytes + 2 * GiB
    # 64 sequences: the warm-up is small and the profile peak is 0.32's
    few = EngineSettings(max_model_len=32768, max_num_seqs=64, max_num_batched_tokens=2048)
    a = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=few, accounting=accounting_for("0.33"))
    b = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=few, accounting=accounting_for("0.32"))
    assert a.per_gpu[0].activation_bytes == b.per_gpu[0].activation_bytes


def test_runner_and_graph_rules_per_release() -> None:
    moe = QWEN3_30B_A3B
    table = {
        "0.19": ("v1", "v1", False, False, 0.9),
        "0.20": ("v1", "v1", True, True, 0.92),
        "0.26": ("v2", "v1", False, True, 0.92),
        "0.29": ("v2", "v2", True, True, 0.92),
        "0.33": ("v2", "v2", True, True, 0.92),
    }
    for version, (dense_runner, moe_runner, dense_graphs, moe_graphs, util) in table.items():
        acc = accounting_for(version)
        assert acc.runner(QWEN25_7B) == dense_runner, version
        assert acc.runner(moe) == moe_runner, version
        assert acc.graphs_subtracted(QWEN25_7B) == dense_graphs, version
        assert acc.graphs_subtracted(moe) == moe_graphs, version
        assert acc.default_gpu_memory_utilization == util, version


def test_enforce_eager_removes_cuda_graphs() -> None:
    est = _est(enforce_eager=True)
    assert est.per_gpu[0].cuda_graph_bytes == 0


def test_fp8_kv_doubles_tokens() -> None:
    a, b = _est(), _est(kv_cache_dtype="fp8")
    assert b.kv_cache_tokens // 16 in (2 * (a.kv_cache_tokens // 16), 2 * (a.kv_cache_tokens // 16) + 1)


def test_vllm_vocabulary_figures() -> None:
    est = _est(tp=4)
    assert est.kv_cache_tokens == est.num_blocks * 16
    assert est.max_concurrency == pytest.approx(est.kv_cache_tokens / 32768)
    assert est.max_model_len_fit == (est.num_blocks - 1) * 16


def test_auto_fit_length_reproduces_vllm_refusal_example() -> None:
    # vllm.md: TP=4 with a 200M KV budget, vLLM's auto-fit gives max_model_len 14608.
    p = kv_plan(209_715_200, 14_336, 32768)
    assert (p.num_blocks - 1) * 16 == 14608


@settings(max_examples=40, deadline=None)
@given(
    short=st.integers(1024, 60000),
    extra=st.integers(0, 60000),
    tp=st.sampled_from([1, 2, 4]),
    kv=st.sampled_from(["auto", "fp8"]),
)
def test_more_context_never_needs_less_memory(short: int, extra: int, tp: int, kv: str) -> None:
    def needed(length: int) -> int:
        est = _est(tp=tp, kv_cache_dtype=kv, max_model_len=length)
        m = est.per_gpu[0]
        fixed = m.capacity_bytes - m.kv_budget_bytes
        return fixed + -(-length // 16) * 16 * m.kv_bytes_per_token

    assert needed(short + extra) >= needed(short)
    est_short = _est(tp=tp, kv_cache_dtype=kv, max_model_len=short)
    est_long = _est(tp=tp, kv_cache_dtype=kv, max_model_len=short + extra)
    assert est_long.fits() <= est_short.fits()


@settings(max_examples=30, deadline=None)
@given(tp=st.sampled_from([1, 2, 4, 28]), layers=st.integers(1, 28))
def test_fp8_kv_halves_bytes_per_token(tp: int, layers: int) -> None:
    assert kvt(QWEN25_7B, tp, "fp8", layers) * 2 == kvt(QWEN25_7B, tp, "auto", layers)


def test_activation_grows_with_batched_tokens() -> None:
    small = _est(max_num_batched_tokens=2048).per_gpu[0].activation_bytes
    big = _est(max_num_batched_tokens=16384).per_gpu[0].activation_bytes
    assert big > small


def test_tp_adds_nccl_buffers() -> None:
    one = _est(tp=1).per_gpu[0].non_torch_bytes
    two = _est(tp=2).per_gpu[0].non_torch_bytes
    assert two - one >= 100 * MiB


def test_every_term_is_explained() -> None:
    est = _est(tp=2)
    names = {e.name for e in est.per_gpu[0].explanations}
    assert {"weights", "activation", "non_torch", "cuda_graphs", "kv_bytes_per_token", "kv_budget"} <= names
    assert all(e.formula and e.inputs for e in est.per_gpu[0].explanations)


def test_bad_version_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a vLLM version"):
        accounting_for("latest")


@pytest.mark.parametrize("version", ["0.19", "0.26", "0.33"])
def test_only_the_last_pipeline_stage_pays_for_logits_and_the_sampler(version: str) -> None:
    # Qwen2.5-7B's 28 layers split 14/14: both stages run the same forward pass; only the last computes logits
    # and runs the dummy sampler (and, while serving, the sampler warm-up).
    s = EngineSettings(max_model_len=32768, max_num_seqs=1024, max_num_batched_tokens=8192)
    est = estimate(QWEN25_7B, (H100, H100), tp=1, pp=2, settings=s, accounting=accounting_for(version))
    first, last = est.per_gpu
    assert first.layers == last.layers == 14
    assert first.activation_bytes < last.activation_bytes
    assert first.working_bytes < last.working_bytes
    act = next(e for e in first.explanations if e.name == "activation")
    assert act.inputs["last_stage"] is False and "not the last pipeline stage" in act.formula
    # A single stage is the last stage: unchanged from PP 1.
    single = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=s, accounting=accounting_for(version))
    assert single.per_gpu[0].activation_bytes >= last.activation_bytes


def test_safetensors_header_bytes_set_the_weight_term() -> None:
    s = EngineSettings(max_model_len=4096)
    derived = model_weight_bytes(QWEN25_7B, dtype="bfloat16", quantization=None)
    plain = estimate(QWEN25_7B, (H100, H100), tp=2, pp=1, settings=s)
    # A checkpoint whose headers say 5% more than the config implies (e.g. extra tensors): the headers win,
    # split over the ranks as the config says.
    spec = replace(QWEN25_7B, weight_bytes=int(derived * 1.05), weight_bytes_by_dtype={"BF16": int(derived * 1.05)})
    est = estimate(spec, (H100, H100), tp=2, pp=1, settings=s)
    for a, b in zip(plain.per_gpu, est.per_gpu, strict=True):
        assert b.weights_bytes == pytest.approx(a.weights_bytes * 1.05, rel=0.001)  # the rotary cache is tiny
    assert sum(m.weights_bytes for m in est.per_gpu) == pytest.approx(spec.weight_bytes, rel=0.01)
    w = next(e for e in est.per_gpu[0].explanations if e.name == "weights")
    assert w.inputs["checkpoint_bytes"] == spec.weight_bytes and "checkpoint_scale" in w.formula
    # Online FP8 or float32 loading changes the stored size: the headers do not apply.
    tiny = replace(QWEN25_7B, weight_bytes=76, weight_bytes_by_dtype={"BF16": 76})  # headers of something else
    one = estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=s).per_gpu[0].weights_bytes
    assert estimate(tiny, (H100,), tp=1, pp=1, settings=s).per_gpu[0].weights_bytes == one
    for changed in (replace(s, quantization="fp8"), replace(s, dtype="float32")):
        with_headers = estimate(spec, (H100,), tp=1, pp=1, settings=changed).per_gpu[0].weights_bytes
        assert with_headers == estimate(QWEN25_7B, (H100,), tp=1, pp=1, settings=changed).per_gpu[0].weights_bytes


def test_every_gpu_allocates_the_fewest_blocks_any_gpu_of_the_replica_holds() -> None:
    # Three stages of 9/10/9 layers, the middle one on a card 8 GiB smaller: each GPU's own budget holds a different
    # number of blocks; vLLM allocates the smallest count on every GPU, and the footprint counts that allocation.
    small = replace(H100, index=1, total_bytes=H100.total_bytes - 8 * GiB, free_bytes=H100.free_bytes - 8 * GiB)
    s = EngineSettings(max_model_len=32768)
    est = estimate(QWEN25_7B, (H100, small, replace(H100, index=2)), tp=1, pp=3, settings=s)
    assert [g.layers for g in est.per_gpu] == [9, 10, 9]
    own = [g.num_blocks for g in est.per_gpu]
    assert len(set(own)) == 3 and est.num_blocks == min(own) == own[1]
    for g in est.per_gpu:
        assert g.kv_cache_bytes == est.num_blocks * s.block_size * g.kv_bytes_per_token <= g.kv_budget_bytes
        footprint = next(e for e in g.explanations if e.name == "footprint")
        assert footprint.value == g.footprint_bytes
    assert est.kv_cache_tokens == est.num_blocks * s.block_size
