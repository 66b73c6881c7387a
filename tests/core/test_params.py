"""Parameter counting against published counts and hand-computed shapes."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from importlib import resources
from typing import Any

import pytest
import yaml

from qwendeploy.core.models import ModelSpec, catalog, find_model, spec_from_hf_config
from qwendeploy.core.params import is_moe_layer, param_breakdown


def _published_strings() -> dict[str, str]:
    """Published counts as the catalog writes them ("1.7B"), inherited through `from`."""
    doc = yaml.safe_load(resources.files("qwendeploy").joinpath("data/models.yaml").read_text())
    out: dict[str, str] = {}
    for entry in doc["models"]:
        value = entry.get("published_params", out.get(entry.get("from", "")))
        if value is not None:
            out[entry["id"]] = str(value)
    return out


def _rounding_half_unit(published: str) -> float:
    """Half a unit of the last digit the card prints: "1.7B" stands for anything in [1.65B, 1.75B)."""
    m = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?([KMBT])", published)
    assert m, published
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(3)]
    decimals = len(m.group(2) or "")
    return 0.5 * scale * 10.0**-decimals


PUBLISHED = _published_strings()


@pytest.mark.parametrize("spec", catalog(), ids=lambda s: s.id)
def test_every_catalog_entry_matches_its_published_count(spec: ModelSpec) -> None:
    """Within 1% of the card's figure; quantized variants are compared with their base model's count.

    A card that prints only two significant digits ("1.7B" for Qwen3-1.7B, whose config gives 1.72B) cannot be
    held to 1%: there the count must lie inside the rounding interval of the printed figure instead.
    """
    assert spec.published_params is not None, f"{spec.id} has no published_params"
    total = param_breakdown(spec).total()
    tolerance = max(0.01 * spec.published_params, _rounding_half_unit(PUBLISHED[spec.id]))
    assert abs(total - spec.published_params) <= tolerance, (spec.id, total, spec.published_params)


def test_only_two_digit_cards_need_the_rounding_interval() -> None:
    loose = [
        s.id
        for s in catalog()
        if s.published_params and abs(param_breakdown(s).total() / s.published_params - 1) > 0.01
    ]
    assert loose == ["Qwen/Qwen3-1.7B", "Qwen/Qwen3-1.7B-FP8"]


def _spec(model_id: str) -> ModelSpec:
    spec = find_model(model_id)
    assert spec is not None
    return spec


@pytest.mark.parametrize(
    ("model_id", "total"),
    [
        # Exact element counts from the config shapes (they agree with qwen_models.yaml's params_total_computed).
        ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768),
        ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
        ("Qwen/Qwen2.5-72B-Instruct", 72_706_203_648),
        ("Qwen/Qwen3-0.6B", 596_049_920),
        ("Qwen/Qwen3-8B", 8_190_735_360),
        ("Qwen/Qwen3-30B-A3B", 30_532_122_624),
        ("Qwen/Qwen3-235B-A22B", 235_093_634_560),
    ],
)
def test_exact_totals(model_id: str, total: int) -> None:
    assert param_breakdown(_spec(model_id)).total() == total


def test_moe_active_params() -> None:
    assert param_breakdown(_spec("Qwen/Qwen3-30B-A3B")).active() == 3_353_032_704
    assert param_breakdown(_spec("Qwen/Qwen3-235B-A22B")).active() == 22_190_763_520


def test_dense_active_equals_total() -> None:
    b = param_breakdown(_spec("Qwen/Qwen2.5-7B-Instruct"))
    assert b.active() == b.total()


def test_qwen25_7b_layer_by_hand() -> None:
    b = param_breakdown(_spec("Qwen/Qwen2.5-7B-Instruct"))
    layer = b.layers[0]
    h, q_out, kv_out, inter = 3584, 28 * 128, 4 * 128, 18944
    assert layer.q == h * q_out + q_out  # Qwen2: q/k/v carry a bias
    assert layer.k == layer.v == h * kv_out + kv_out
    assert layer.o == q_out * h
    assert layer.qk_norm == 0
    assert (layer.mlp_gate_up, layer.mlp_down) == (2 * h * inter, inter * h)
    assert layer.experts_gate_up == layer.router == layer.shared_expert_gate == 0
    assert layer.norms == 2 * h
    assert b.embedding == b.lm_head == 152064 * h
    assert b.final_norm == h
    assert len(b.layers) == 28


def test_tied_embeddings_have_no_lm_head() -> None:
    b = param_breakdown(_spec("Qwen/Qwen2.5-0.5B-Instruct"))
    assert b.lm_head == 0 and b.embedding == 151936 * 896


def test_qwen3_layer_has_qk_norm_and_no_bias() -> None:
    layer = param_breakdown(_spec("Qwen/Qwen3-8B")).layers[0]
    assert layer.qk_norm == 2 * 128
    assert layer.q == 4096 * 32 * 128
    assert layer.k == 4096 * 8 * 128


def test_moe_layer_split() -> None:
    layer = param_breakdown(_spec("Qwen/Qwen3-30B-A3B")).layers[0]
    assert layer.mlp_gate_up == layer.mlp_down == 0
    assert layer.experts_gate_up == 128 * 2 * 2048 * 768
    assert layer.experts_down == 128 * 768 * 2048
    assert layer.router == 2048 * 128
    assert layer.shared_gate_up == layer.shared_down == layer.shared_expert_gate == 0


def test_quantized_variant_counts_like_its_base_except_72b_padding() -> None:
    assert param_breakdown(_spec("Qwen/Qwen2.5-7B-Instruct-AWQ")).total() == 7_615_616_512
    padded = param_breakdown(_spec("Qwen/Qwen2.5-72B-Instruct-AWQ")).total()
    assert padded - 72_706_203_648 == 80 * 3 * 8192 * (29696 - 29568)


QWEN15_MOE: dict[str, Any] = {
    # Qwen/Qwen1.5-MoE-A2.7B: 60 routed experts (top 4) plus a gated shared expert; card: 14.3B total, 2.7B active.
    "architectures": ["Qwen2MoeForCausalLM"],
    "model_type": "qwen2_moe",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "decoder_sparse_step": 1,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 151936,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_qwen2_moe_with_shared_expert() -> None:
    spec = spec_from_hf_config(QWEN15_MOE, id="Qwen/Qwen1.5-MoE-A2.7B", source="test")
    b = param_breakdown(spec)
    layer = b.layers[0]
    assert layer.shared_gate_up == 2 * 2048 * 5632 and layer.shared_expert_gate == 2048
    assert math.isclose(b.total(), 14.3e9, rel_tol=0.01)
    assert math.isclose(b.active(), 2.7e9, rel_tol=0.03)


def test_sparse_step_and_mlp_only_layers() -> None:
    base = _spec("Qwen/Qwen3-30B-A3B")
    assert base.moe is not None
    spec = replace(base, moe=replace(base.moe, decoder_sparse_step=2, mlp_only_layers=(1,)))
    flags = [is_moe_layer(spec, i) for i in range(4)]
    assert flags == [False, False, False, True]
    b = param_breakdown(spec)
    assert b.layers[0].mlp_gate_up == 2 * 2048 * 6144 and b.layers[0].experts_gate_up == 0
    assert b.layers[3].experts_gate_up > 0


def test_layer_totals_add_up() -> None:
    b = param_breakdown(_spec("Qwen/Qwen3-30B-A3B"))
    assert b.total() == b.embedding + b.lm_head + b.final_norm + sum(layer.total() for layer in b.layers)
