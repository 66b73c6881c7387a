"""Families beyond the plain decoder (issue #14): the architecture list, hybrid attention, vision towers, pooling
models and dual-chunk attention — each estimated the way vLLM allocates it, or refused with the reason."""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qwendeploy.core import family_rules
from qwendeploy.core.families import architectures, vision_params
from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.hardware import Machine
from qwendeploy.core.hybrid_attention import hybrid_layout
from qwendeploy.core.memory import EngineSettings, accounting_for, estimate, model_weight_bytes
from qwendeploy.core.models import ModelSpec, find_model, spec_from_hf_config
from qwendeploy.core.params import param_breakdown
from qwendeploy.core.planner import PlanRequest, plan
from qwendeploy.core.units import GiB
from qwendeploy.errors import BadInput

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf_configs"
ARCH_FILE = Path(__file__).parents[2] / "qwendeploy" / "data" / "architectures.yaml"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def spec_of(name: str) -> ModelSpec:
    return spec_from_hf_config(load(name), id=f"Qwen/{name}", source="test")


def h100(n: int = 1) -> Machine:
    return parse_inventory(f"{n}xH100")


# ------------------------------------------------------------------------------------------ the architecture list


def _config_for(name: str, family: str) -> dict[str, Any]:
    """A small config.json naming ``name``, shaped like its family (so a modelled one can be estimated)."""
    base = {k: v for k, v in load("Qwen3-Embedding-0.6B").items() if k != "architectures"}
    base["architectures"] = [name]
    if family == "moe":
        base.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256)
    if family == "hybrid":
        cfg = load("Qwen3-Next-8-layers")
        cfg["architectures"] = [name]
        return cfg
    if family == "vision":
        cfg = load("Qwen3-VL-8B-Instruct") if "Qwen3" in name else load("Qwen2.5-VL-7B-Instruct")
        cfg["architectures"] = [name]
        if name.startswith("Qwen2VL"):
            cfg["vision_config"] = {
                "depth": 32,
                "embed_dim": 1280,
                "mlp_ratio": 4,
                "num_heads": 16,
                "hidden_size": 3584,
            }
            cfg["model_type"] = "qwen2_vl"
        return cfg
    return base


@pytest.mark.parametrize("entry", list(architectures().values()), ids=lambda e: e.name)
def test_every_listed_architecture_is_estimated_or_refused(entry: Any) -> None:
    config = _config_for(entry.name, entry.family)
    if entry.status == "refused":
        with pytest.raises(BadInput) as caught:
            spec_from_hf_config(config, id="some/checkpoint", source="test")
        assert entry.name in caught.value.message and entry.reason in caught.value.message
        assert caught.value.exit_code == 2
        return
    spec = spec_from_hf_config(config, id="some/checkpoint", source="test")
    est = estimate(spec, h100().gpus, tp=1, pp=1, settings=EngineSettings(max_model_len=4096))
    assert est.num_blocks > 0 and est.per_gpu[0].weights_bytes > 0
    assert spec.task == entry.task


def test_the_list_names_every_qwen_architecture_of_the_installed_vllm() -> None:
    """With an oracle venv (QWENDEPLOY_VLLM_PYTHON, see ../shared/tools/setup-vllm-oracle.sh), the list holds every
    registry key containing 'qwen' — a new vLLM architecture cannot slip through unlisted."""
    python = os.environ.get("QWENDEPLOY_VLLM_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("no vLLM oracle venv (set QWENDEPLOY_VLLM_PYTHON)")
    code = (
        "from vllm.model_executor.models import registry as r\n"
        "print('\\n'.join(sorted(k for k in r._VLLM_MODELS if 'qwen' in k.lower())))\n"
    )
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=300)
    names = set(out.stdout.split())
    assert names, out.stderr[-2000:]
    listed = {n for n, e in architectures().items() if e.via != "convert"}
    assert names - set(architectures()) == set()
    assert listed - names <= {"QWenLMHeadModel", "QwenVLForConditionalGeneration"}  # previously supported


def test_a_refused_architecture_exits_2_on_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qwendeploy.cli import app

    folder = tmp_path
    cfg = _config_for("Qwen3OmniMoeForConditionalGeneration", "omni")
    (folder / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, ["plan", str(folder), "--gpus", "1xH100"])
    assert r.exit_code == 2
    assert "not modelled" in r.output and "audio encoder" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------------ hybrid


def test_qwen3_next_fixture_matches_the_catalog() -> None:
    entry = find_model("Qwen/Qwen3-Next-80B-A3B-Instruct")
    assert entry is not None
    spec = spec_of("Qwen3-Next-80B-A3B-Instruct")
    for name in ("layer_kinds", "linear_attention", "num_key_value_heads", "head_dim", "moe", "hidden_size"):
        assert getattr(spec, name) == getattr(entry, name), name
    assert spec.full_attention_layers == 12 and spec.layer_kinds[3] == "full_attention"
    assert spec.layer_kinds[:3] == ("linear_attention",) * 3


@pytest.mark.parametrize(
    ("tp", "mamba_page", "attn_per_token", "block"),
    # vLLM 0.33's own MambaSpec / FullAttentionSpec page sizes for Qwen3-Next (MambaStateShapeCalculator
    # .gated_delta_net_state_shape, bf16), and the attention block HybridAttentionMambaModelConfig derives.
    [(1, 1_097_728, 2048, 544), (2, 548_864, 1024, 544), (4, 274_432, 1024, 272)],
)
def test_hybrid_pages_match_vllm(tp: int, mamba_page: int, attn_per_token: int, block: int) -> None:
    spec = spec_of("Qwen3-Next-80B-A3B-Instruct")
    layout = hybrid_layout(spec, tp=tp, kinds=spec.layer_kinds, kv_bytes=2, dtype_bytes=2)
    assert layout.mamba_page_bytes == mamba_page
    assert layout.attention_bytes_per_token == attn_per_token
    assert layout.block_size == block
    assert layout.page_bytes >= mamba_page and layout.page_bytes - mamba_page < 16 * attn_per_token
    assert (layout.group_size, layout.attention_groups, layout.linear_groups) == (12, 1, 3)


def test_hybrid_kv_counts_only_full_attention_layers() -> None:
    spec = spec_of("Qwen3-Next-80B-A3B-Instruct")
    est = estimate(spec, h100(4).gpus, tp=4, pp=1, settings=EngineSettings(max_model_len=262144))
    dense_view = replace(spec, layer_kinds=(), linear_attention=None)
    est_dense = estimate(dense_view, h100(4).gpus, tp=4, pp=1, settings=EngineSettings(max_model_len=262144))
    # Whole model at TP1 would be 12 × 2 × 2 × 256 × 2 = 24,576 B/token; every layer charged: 98,304.
    assert est.per_gpu[0].kv_bytes_per_token * 4 == est_dense.per_gpu[0].kv_bytes_per_token
    assert est.hybrid is not None and est.settings.block_size == 272
    blocks_per_request = math.ceil(262144 / 272) + 3 * 2  # attention blocks + two state blocks per linear group
    assert est.max_concurrency == pytest.approx(est.num_blocks / blocks_per_request)
    assert est.fits(int(est.max_concurrency)) and not est.fits(int(est.max_concurrency) + 1)


def test_hybrid_bf16_tp4_fits_256k_for_8_requests() -> None:
    """The issue's case: every layer charged as attention forced an fp8 KV cache and called TP4 'shorter'."""
    spec = find_model("Qwen/Qwen3-Next-80B-A3B-Instruct")
    assert spec is not None
    p = plan(PlanRequest(spec=spec, machine=h100(4), max_model_len=262144, concurrency=8, tp=4, vllm_version="0.26"))
    assert p.fits and p.chosen is not None and p.chosen.kv_cache_dtype == "auto"
    assert any("Hybrid attention: 12 of 48 layers" in n for n in p.notes)


def test_older_releases_log_hybrid_tokens_per_group() -> None:
    spec = spec_of("Qwen3-Next-8-layers")
    settings = EngineSettings(max_model_len=32768)
    old = estimate(spec, h100().gpus, tp=1, pp=1, settings=settings, accounting=accounting_for("0.20"))
    new = estimate(spec, h100().gpus, tp=1, pp=1, settings=settings, accounting=accounting_for("0.26"))
    assert old.hybrid is not None and new.hybrid is not None
    assert old.kv_cache_tokens == old.num_blocks // 4 * 544
    assert new.kv_cache_tokens == int(new.max_concurrency * 32768)


# ------------------------------------------------------------------------------------------- vision-language


@pytest.mark.parametrize(
    ("name", "low", "high"), [("Qwen2.5-VL-7B-Instruct", 0.67e9, 0.69e9), ("Qwen3-VL-8B-Instruct", 0.57e9, 0.59e9)]
)
def test_vision_tower_parameters(name: str, low: float, high: float) -> None:
    spec = spec_of(name)
    assert spec.vision is not None and spec.is_multimodal
    assert low <= vision_params(spec.vision) <= high
    text_only = replace(spec, vision=None)
    extra = model_weight_bytes(spec, dtype="bfloat16", quantization=None) - model_weight_bytes(
        text_only, dtype="bfloat16", quantization=None
    )
    assert extra == pytest.approx(2 * vision_params(spec.vision), rel=1e-6)


def test_vl_catalog_counts_match_the_cards() -> None:
    for model_id in ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen2.5-VL-72B-Instruct"):
        spec = find_model(model_id)
        assert spec is not None and spec.published_params is not None
        assert param_breakdown(spec).total() == pytest.approx(spec.published_params, rel=0.01), model_id


def test_the_encoder_profile_raises_the_activation_and_the_plan_says_multimodal() -> None:
    spec = spec_of("Qwen2.5-VL-7B-Instruct")
    settings = EngineSettings(max_model_len=32768, max_num_batched_tokens=8192)
    with_vision = estimate(spec, h100().gpus, tp=1, pp=1, settings=settings).per_gpu[0]
    without = estimate(replace(spec, vision=None), h100().gpus, tp=1, pp=1, settings=settings).per_gpu[0]
    assert with_vision.activation_bytes > without.activation_bytes
    # 0.26's V2 runner does not run the encoder in its profile: the peak comes at the first image, outside the budget.
    old = accounting_for("0.26")
    v26 = estimate(spec, h100().gpus, tp=1, pp=1, settings=settings, accounting=old).per_gpu[0]
    v26_text = estimate(replace(spec, vision=None), h100().gpus, tp=1, pp=1, settings=settings, accounting=old)
    assert v26.activation_bytes == v26_text.per_gpu[0].activation_bytes
    assert v26.working_bytes > v26_text.per_gpu[0].working_bytes
    p = plan(PlanRequest(spec=spec, machine=h100(), max_model_len=32768))
    assert any(n.startswith("Multimodal") and "--limit-mm-per-prompt" in n for n in p.notes)


# ------------------------------------------------------------------------------------------------- pooling


def test_pooling_model_has_no_lm_head_no_sampler_and_the_pooling_runner(tmp_path: Path) -> None:
    spec = find_model("Qwen/Qwen3-Embedding-8B")
    assert spec is not None and spec.task == "embed"
    chat = replace(spec, task="generate")
    settings = EngineSettings(max_model_len=32768, max_num_seqs=1024, max_num_batched_tokens=8192)
    pooled = estimate(spec, h100().gpus, tp=1, pp=1, settings=settings).per_gpu[0]
    generated = estimate(chat, h100().gpus, tp=1, pp=1, settings=settings).per_gpu[0]
    assert generated.weights_bytes - pooled.weights_bytes == pytest.approx(151665 * 4096 * 2, rel=0.01)
    assert pooled.activation_bytes < generated.activation_bytes
    assert pooled.working_bytes < generated.working_bytes
    p = plan(PlanRequest(spec=spec, machine=h100(), max_model_len=32768))
    assert p.fits and not any("tok/s" in line for line in p.why)
    assert family_rules.runner_args(spec) == ["--runner", "pooling", "--convert", "embed"]
    from qwendeploy.core.profile_builder import profile_from_plan

    assert profile_from_plan(p).engine.extra_args[:2] == ["--runner", "pooling"]


def test_reranker_is_served_as_a_classifier() -> None:
    spec = find_model("Qwen/Qwen3-Reranker-0.6B")
    assert spec is not None
    p = plan(PlanRequest(spec=spec, machine=h100(), max_model_len=8192))
    assert p.hf_overrides is not None and p.hf_overrides["architectures"] == ["Qwen3ForSequenceClassification"]
    assert family_rules.runner_args(spec)[-1] == "classify"


def test_a_local_sentence_transformers_folder_is_an_embedding_model(tmp_path: Path) -> None:
    from qwendeploy.adapters.hub import load_local_dir

    (tmp_path / "config.json").write_text(json.dumps(load("Qwen3-Embedding-0.6B")))
    assert load_local_dir(tmp_path).task == "generate"
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    assert load_local_dir(tmp_path).task == "embed"


# ------------------------------------------------------------------------------------ dual-chunk attention


def test_dca_model_stays_within_the_trained_window_unless_allowed() -> None:
    spec = spec_of("Qwen2.5-7B-Instruct-1M")
    assert spec.dual_chunk_trained_length == 262144 and spec.max_position_embeddings == 1010000
    default = plan(PlanRequest(spec=spec, machine=h100()))
    assert default.max_model_len == 262144
    with pytest.raises(BadInput, match="dual-chunk attention"):
        plan(PlanRequest(spec=spec, machine=h100(), max_model_len=1010000))
    allowed = plan(PlanRequest(spec=spec, machine=h100(2), max_model_len=1010000, allow_untrained_context=True))
    assert allowed.hf_overrides is None  # no YaRN on top of a DCA config
    assert any("--allow-untrained-context" in n for n in allowed.notes)


# -------------------------------------------------------------------------------------------- silent keys


def test_a_memory_key_that_is_not_modelled_gives_a_note() -> None:
    cfg = load("Qwen3-Embedding-0.6B")
    cfg.update(use_sliding_window=True, sliding_window=4096, max_window_layers=14)
    spec = spec_from_hf_config(cfg, id="x/sw", source="test")
    assert "use_sliding_window" in spec.unmodelled_keys
    p = plan(PlanRequest(spec=spec, machine=h100(), max_model_len=8192))
    assert any("use_sliding_window" in n and "does not model" in n for n in p.notes)
    plain = spec_of("Qwen3-Embedding-0.6B")
    assert plain.unmodelled_keys == ()


def test_mtp_layers_are_noted() -> None:
    cfg = load("Qwen3-Next-8-layers")
    cfg["num_nextn_predict_layers"] = 1
    spec = spec_from_hf_config(cfg, id="x/next", source="test")
    p = plan(PlanRequest(spec=spec, machine=h100(), max_model_len=8192))
    assert any("multi-token-prediction" in n for n in p.notes)


def test_catalog_weights_of_the_new_families_are_in_range() -> None:
    for model_id, gib in (
        ("Qwen/Qwen3-Next-80B-A3B-Instruct", 148.4),
        ("Qwen/Qwen3-VL-8B-Instruct", 16.3),
        ("Qwen/Qwen3-Embedding-0.6B", 1.11),
    ):
        spec = find_model(model_id)
        assert spec is not None
        assert model_weight_bytes(spec, dtype="bfloat16", quantization=None) / GiB == pytest.approx(gib, rel=0.01)


# ------------------------------------------------------------------------------------ custom all-reduce


def test_custom_all_reduce_buffers_only_where_vllm_enables_it() -> None:
    spec = find_model("Qwen/Qwen3-8B")
    assert spec is not None
    machine = h100(2)
    on = plan(PlanRequest(spec=spec, machine=machine, max_model_len=32768, tp=2))
    off = plan(PlanRequest(spec=spec, machine=machine, max_model_len=32768, tp=2, disable_custom_all_reduce=True))
    assert on.chosen is not None and on.chosen.estimate is not None
    assert off.chosen is not None and off.chosen.estimate is not None
    nt_on, nt_off = on.chosen.estimate.per_gpu[0].non_torch_bytes, off.chosen.estimate.per_gpu[0].non_torch_bytes
    assert nt_on - nt_off == 1568 * 1024 * 1024  # the NVLink workspaces
    assert off.chosen.estimate.kv_cache_tokens > on.chosen.estimate.kv_cache_tokens
    from qwendeploy.core.profile_builder import profile_from_plan

    assert profile_from_plan(off).engine.disable_custom_all_reduce
    # NVLink bridged but no CUDA peer access (containers): no custom all-reduce either.
    from qwendeploy.core.hardware import Link

    no_p2p = replace(machine, links=(Link(0, 1, "nvlink", nvlinks=18, p2p=False),))
    denied = plan(PlanRequest(spec=spec, machine=no_p2p, max_model_len=32768, tp=2))
    assert denied.chosen is not None and denied.chosen.estimate is not None
    assert denied.chosen.estimate.per_gpu[0].non_torch_bytes == nt_off
