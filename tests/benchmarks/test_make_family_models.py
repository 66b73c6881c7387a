"""benchmarks/gpu/make_family_models.py: the random-weight checkpoints' layouts, checked on the CPU.

The full-size layouts must add up to the published parameter counts (so every tensor the real checkpoint has is
there, at its shape); the reduced-layer ones keep the per-layer shapes and the layer pattern; the safetensors writer
produces files whose headers describe exactly the layout (numpy only, skipped without it).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "make_family_models.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_family_models", PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


M = _load()

# Published totals: the safetensors parameter counts of the Hugging Face repositories (the MTP layer of Qwen3-Next
# excluded: vLLM skips ``mtp.*`` unless it speculates with it, and the builder does not write it).
PUBLISHED = {
    "QWEN3_NEXT_80B_A3B": 79_674_391_296,
    "QWEN3_30B_A3B": 30_532_122_624,
    "QWEN2_5_VL_7B": 8_292_166_656,
    "QWEN3_EMBEDDING_0_6B": 595_776_512,
    "QWEN2_5_7B": 7_615_616_512,
    "QWEN2_5_0_5B": 494_032_768,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_layout_has_the_published_parameter_count(name: str) -> None:
    cfg = dict(getattr(M, name))
    if name == "QWEN3_EMBEDDING_0_6B":
        cfg["is_embedding"] = True
    assert M.parameter_count(M.layout(cfg)) == PUBLISHED[name]


def test_reduced_qwen3_next_keeps_the_pattern_and_the_per_layer_shapes() -> None:
    full = M.layout(dict(M.QWEN3_NEXT_80B_A3B))
    small_cfg = M.config_for("qwen3-next-80b-a3b-l8")
    small = M.layout(small_cfg)
    assert M.config_json(small_cfg)["layer_types"] == (["linear_attention"] * 3 + ["full_attention"]) * 2
    full_attn = sorted({k.split(".")[2] for k in small if ".self_attn." in k}, key=int)
    assert full_attn == ["3", "7"]
    for name, shape in small.items():
        assert full[name] == shape  # every tensor exists in the real model at the same shape
    per_layer = {k for k in full if k.startswith("model.layers.3.")}
    assert per_layer == {k for k in small if k.startswith("model.layers.3.")}
    assert sum(1 for k in small if k.startswith("model.layers.0.mlp.experts.")) == 512 * 3
    assert small["model.layers.3.self_attn.q_proj.weight"] == (2 * 16 * 256, 2048)  # gated attention output
    assert small["model.layers.0.linear_attn.conv1d.weight"] == (2 * 2048 + 4096, 1, 4)


def test_vl_and_embedding_names_are_the_published_ones() -> None:
    vl = M.layout(M.config_for("qwen2.5-vl-7b-instruct"))
    assert vl["visual.patch_embed.proj.weight"] == (1280, 3, 2, 14, 14)
    assert vl["visual.merger.mlp.2.weight"] == (3584, 5120)
    assert sum(1 for k in vl if k.startswith("visual.blocks.") and k.endswith(".attn.qkv.weight")) == 32
    assert "lm_head.weight" in vl and "model.embed_tokens.weight" in vl
    emb = M.layout(M.config_for("qwen3-embedding-0.6b"))
    assert "embed_tokens.weight" in emb and "lm_head.weight" not in emb
    assert not any(k.startswith("model.") for k in emb)


def _tiny(name: str) -> dict[str, Any]:
    t: dict[str, Any] = dict(M.config_for(name))
    t.update(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4)
    t.update(num_key_value_heads=2, head_dim=16)
    if "num_experts" in t:
        t.update(num_experts=4, moe_intermediate_size=32)
    if "shared_expert_intermediate_size" in t:
        t.update(shared_expert_intermediate_size=32)
    if "linear_num_key_heads" in t:
        t.update(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
    if "vision_config" in t:
        t["vision_config"] = dict(t["vision_config"], depth=2, hidden_size=32, intermediate_size=48, out_hidden_size=64)
    return t


@pytest.mark.parametrize("name", ["qwen3-next-80b-a3b-l8", "qwen3-30b-a3b-l12", "qwen2.5-vl-7b-instruct"])
def test_written_safetensors_describe_the_layout(name: str, tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    cfg = _tiny(name)
    lay = M.layout(cfg)
    names = list(lay)
    pool = M.random_pool(4096)
    path = tmp_path / "model.safetensors"
    written = M.write_safetensors(str(path), lay, names, pool)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__")
    assert {k: tuple(v["shape"]) for k, v in header.items()} == lay
    assert all(v["dtype"] == "BF16" for v in header.values())
    assert written == 2 * M.parameter_count(lay) == len(raw) - 8 - n
    # norms are 1.0 (bf16 0x3F80), biases 0, weights random
    norm = next(k for k in names if k.endswith("input_layernorm.weight"))
    lo, hi = header[norm]["data_offsets"]
    assert set(struct.unpack(f"<{(hi - lo) // 2}H", raw[8 + n + lo : 8 + n + hi])) == {0x3F80}
    w = next(k for k in names if k.endswith("down_proj.weight"))
    lo, hi = header[w]["data_offsets"]
    assert len(set(raw[8 + n + lo : 8 + n + hi])) > 50
