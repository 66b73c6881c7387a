#!/usr/bin/env python3
"""Random-weight checkpoints of the Qwen families vLLM 0.26 loads differently (device side, no network).

usage: make_family_models.py OUT_ROOT NAME [NAME ...]      (NAME in FAMILIES below; ``--list`` prints them)

Each checkpoint is written in the layout the published Hugging Face repository uses, tensor names and shapes as
vLLM 0.26's loaders read them (``vllm/model_executor/models/<family>.py``):

- ``qwen3-next-80b-a3b-l8``: Qwen3-Next-80B-A3B-Instruct's config.json with 8 of its 48 layers (the
  ``full_attention_interval`` of 4 kept: layers 3 and 7 are full attention, the rest Gated DeltaNet), every layer
  with the real shapes: ``linear_attn.{in_proj_qkvz,in_proj_ba,conv1d,dt_bias,A_log,norm,out_proj}``, gated
  full attention (``q_proj`` twice the heads, ``q_norm``/``k_norm``), 512 per-expert ``mlp.experts.E.*`` tensors,
  ``mlp.shared_expert.*`` and ``mlp.shared_expert_gate``. The MTP layer (``mtp.*``, skipped by vLLM unless used
  for speculative decoding) is not written.
- ``qwen3-30b-a3b-l12``: Qwen3-30B-A3B's config with 12 of its 48 layers, per-expert tensors.
- ``qwen2.5-vl-7b-instruct``: Qwen2.5-VL-7B-Instruct whole (``model.*`` text tower, ``visual.*`` vision tower),
  its preprocessor_config.json / chat template and a tokenizer whose special tokens sit at the real ids
  (``<|vision_start|>`` 151652 … ``<|video_pad|>`` 151656), so vLLM's multimodal processor runs its profiling.
- ``qwen3-embedding-0.6b``: Qwen3-Embedding-0.6B whole, saved as the published repo saves it (``Qwen3Model``:
  no ``model.`` prefix, no ``lm_head``), with sentence-transformers' ``modules.json`` + ``1_Pooling/config.json``
  (last-token pooling) + Normalize: vLLM 0.26 picks its pooling runner from ``modules.json``.

Values are bf16 drawn once from N(0, 0.02) into a 64 MiB pool and tiled; norms are 1, biases 0. The safetensors
files are written directly (8-byte header length, JSON header, raw bytes), so only numpy is needed; ``layout()``
and ``parameter_count()`` are pure and tested on the CPU (tests/benchmarks/test_make_family_models.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

Shape = tuple[int, ...]
Layout = dict[str, Shape]

SPECIAL_TOKENS: dict[int, str] = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
}
VL_SPECIAL_TOKENS: dict[int, str] = {
    151652: "<|vision_start|>",
    151653: "<|vision_end|>",
    151654: "<|vision_pad|>",
    151655: "<|image_pad|>",
    151656: "<|video_pad|>",
}

QWEN3_NEXT_80B_A3B: dict[str, Any] = {
    # Qwen/Qwen3-Next-80B-A3B-Instruct config.json (published 2025-09)
    "architectures": ["Qwen3NextForCausalLM"],
    "model_type": "qwen3_next",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_value_head_dim": 128,
    "max_position_embeddings": 262144,
    "mlp_only_layers": [],
    "moe_intermediate_size": 512,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "num_hidden_layers": 48,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "partial_rotary_factor": 0.25,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000000,
    "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 512,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN3_30B_A3B: dict[str, Any] = {
    # Qwen/Qwen3-30B-A3B config.json (tests/fixtures/hf_configs/Qwen3-30B-A3B.json)
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN2_5_VL_7B: dict[str, Any] = {
    # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}

QWEN2_5_VL_PREPROCESSOR: dict[str, Any] = {
    # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

QWEN3_EMBEDDING_0_6B: dict[str, Any] = {
    # Qwen/Qwen3-Embedding-0.6B config.json
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151669,
}


QWEN2_COMMON: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
}
QWEN2_5_7B: dict[str, Any] = {
    # Qwen/Qwen2.5-7B-Instruct config.json (tests/fixtures/hf_configs/Qwen2.5-7B-Instruct.json)
    **QWEN2_COMMON,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "sliding_window": 131072,
}
QWEN2_5_0_5B: dict[str, Any] = {
    # Qwen/Qwen2.5-0.5B-Instruct config.json
    **QWEN2_COMMON,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "sliding_window": 32768,
}


def _with_layers(cfg: dict[str, Any], layers: int) -> dict[str, Any]:
    out = dict(cfg)
    out["num_hidden_layers"] = layers
    if "max_window_layers" in out:
        out["max_window_layers"] = layers
    return out


FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3-next-80b-a3b-l8": _with_layers(QWEN3_NEXT_80B_A3B, 8),
    "qwen3-30b-a3b-l12": _with_layers(QWEN3_30B_A3B, 12),
    "qwen2.5-vl-7b-instruct": QWEN2_5_VL_7B,
    "qwen3-embedding-0.6b": QWEN3_EMBEDDING_0_6B,
    # the dense models of the earlier calibration (same configs as ../shared/tools/device-vllm/make_models.py)
    "qwen2.5-7b-instruct": QWEN2_5_7B,
    "qwen2.5-0.5b-instruct": QWEN2_5_0_5B,
}


def _dense_attention(p: str, c: dict[str, Any], q_mult: int = 1, qk_norm: bool = True, bias: bool = False) -> Layout:
    h, nq, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or h // nq
    out: Layout = {
        f"{p}.q_proj.weight": (nq * hd * q_mult, h),
        f"{p}.k_proj.weight": (nkv * hd, h),
        f"{p}.v_proj.weight": (nkv * hd, h),
        f"{p}.o_proj.weight": (h, nq * hd),
    }
    if bias:
        out.update({f"{p}.q_proj.bias": (nq * hd,), f"{p}.k_proj.bias": (nkv * hd,), f"{p}.v_proj.bias": (nkv * hd,)})
    if qk_norm:
        out.update({f"{p}.q_norm.weight": (hd,), f"{p}.k_norm.weight": (hd,)})
    return out


def _mlp(p: str, h: int, inter: int) -> Layout:
    return {f"{p}.gate_proj.weight": (inter, h), f"{p}.up_proj.weight": (inter, h), f"{p}.down_proj.weight": (h, inter)}


def _experts(p: str, h: int, inter: int, n: int) -> Layout:
    out: Layout = {f"{p}.gate.weight": (n, h)}
    for e in range(n):
        out.update(_mlp(f"{p}.experts.{e}", h, inter))
    return out


def _gated_deltanet(p: str, c: dict[str, Any]) -> Layout:
    h = c["hidden_size"]
    nk, nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    key_dim, value_dim = nk * dk, nv * dv
    return {
        f"{p}.in_proj_qkvz.weight": (2 * key_dim + 2 * value_dim, h),
        f"{p}.in_proj_ba.weight": (2 * nv, h),
        f"{p}.conv1d.weight": (2 * key_dim + value_dim, 1, c["linear_conv_kernel_dim"]),
        f"{p}.dt_bias": (nv,),
        f"{p}.A_log": (nv,),
        f"{p}.norm.weight": (dv,),
        f"{p}.out_proj.weight": (h, value_dim),
    }


def layer_types(c: dict[str, Any]) -> list[str]:
    """Qwen3-Next's layer kinds: full attention where (i + 1) % full_attention_interval == 0 (transformers' rule)."""
    n, every = c["num_hidden_layers"], c["full_attention_interval"]
    return ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n)]


def _text_tower(c: dict[str, Any], prefix: str, family: str) -> Layout:
    h = c["hidden_size"]
    out: Layout = {f"{prefix}embed_tokens.weight": (c["vocab_size"], h), f"{prefix}norm.weight": (h,)}
    kinds = layer_types(c) if family == "qwen3_next" else ["full_attention"] * c["num_hidden_layers"]
    for i, kind in enumerate(kinds):
        p = f"{prefix}layers.{i}"
        out[f"{p}.input_layernorm.weight"] = (h,)
        out[f"{p}.post_attention_layernorm.weight"] = (h,)
        if family == "qwen3_next":
            if kind == "linear_attention":
                out.update(_gated_deltanet(f"{p}.linear_attn", c))
            else:
                out.update(_dense_attention(f"{p}.self_attn", c, q_mult=2))
            out.update(_experts(f"{p}.mlp", h, c["moe_intermediate_size"], c["num_experts"]))
            out.update(_mlp(f"{p}.mlp.shared_expert", h, c["shared_expert_intermediate_size"]))
            out[f"{p}.mlp.shared_expert_gate.weight"] = (1, h)
        elif family == "qwen3_moe":
            out.update(_dense_attention(f"{p}.self_attn", c))
            out.update(_experts(f"{p}.mlp", h, c["moe_intermediate_size"], c["num_experts"]))
        elif family == "qwen2":
            out.update(_dense_attention(f"{p}.self_attn", c, qk_norm=False, bias=True))
            out.update(_mlp(f"{p}.mlp", h, c["intermediate_size"]))
        else:  # qwen3 dense
            out.update(_dense_attention(f"{p}.self_attn", c))
            out.update(_mlp(f"{p}.mlp", h, c["intermediate_size"]))
    return out


def _qwen2_5_vision(v: dict[str, Any]) -> Layout:
    d, inter, ps, tps = v["hidden_size"], v["intermediate_size"], v["patch_size"], v["temporal_patch_size"]
    merged = d * v["spatial_merge_size"] ** 2
    out: Layout = {"visual.patch_embed.proj.weight": (d, v["in_chans"], tps, ps, ps)}
    for i in range(v["depth"]):
        p = f"visual.blocks.{i}"
        out.update(
            {
                f"{p}.norm1.weight": (d,),
                f"{p}.norm2.weight": (d,),
                f"{p}.attn.qkv.weight": (3 * d, d),
                f"{p}.attn.qkv.bias": (3 * d,),
                f"{p}.attn.proj.weight": (d, d),
                f"{p}.attn.proj.bias": (d,),
                f"{p}.mlp.gate_proj.weight": (inter, d),
                f"{p}.mlp.gate_proj.bias": (inter,),
                f"{p}.mlp.up_proj.weight": (inter, d),
                f"{p}.mlp.up_proj.bias": (inter,),
                f"{p}.mlp.down_proj.weight": (d, inter),
                f"{p}.mlp.down_proj.bias": (d,),
            }
        )
    out.update(
        {
            "visual.merger.ln_q.weight": (d,),
            "visual.merger.mlp.0.weight": (merged, merged),
            "visual.merger.mlp.0.bias": (merged,),
            "visual.merger.mlp.2.weight": (v["out_hidden_size"], merged),
            "visual.merger.mlp.2.bias": (v["out_hidden_size"],),
        }
    )
    return out


def layout(c: dict[str, Any]) -> Layout:
    """Tensor name → shape of a checkpoint with config ``c``, as the published repository of its family names them."""
    mt = c["model_type"]
    if mt == "qwen3_next":
        out = _text_tower(c, "model.", "qwen3_next")
    elif mt == "qwen3_moe":
        out = _text_tower(c, "model.", "qwen3_moe")
    elif mt == "qwen2_5_vl":
        out = _text_tower(c, "model.", "qwen2")
        out.update(_qwen2_5_vision(c["vision_config"]))
    elif mt == "qwen3" and c.get("is_embedding", False):
        out = _text_tower(c, "", "qwen3")
    elif mt in ("qwen3", "qwen2"):
        out = _text_tower(c, "model.", mt)
    else:
        raise ValueError(f"no layout for model_type {mt!r}")
    if not c.get("tie_word_embeddings") and not c.get("is_embedding", False):
        out["lm_head.weight"] = (c["vocab_size"], c["hidden_size"])
    return out


def parameter_count(lay: Layout) -> int:
    total = 0
    for shape in lay.values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _fill(name: str) -> str:
    if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
        return "ones"
    if name.endswith("ln_q.weight"):
        return "ones"
    if name.endswith(".bias") and not name.endswith("dt_bias"):
        return "zeros"
    return "random"


def _shards(lay: Layout, shard_bytes: int) -> Iterator[list[str]]:
    cur: list[str] = []
    size = 0
    for name, shape in lay.items():
        n = parameter_count({name: shape}) * 2
        if cur and size + n > shard_bytes:
            yield cur
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        yield cur


def write_safetensors(path: str, lay: Layout, names: list[str], pool: Any) -> int:
    """One bf16 safetensors file of ``names``; values tiled from ``pool`` (a uint16 numpy array of bf16 bits)."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name in names:
        n = parameter_count({name: lay[name]}) * 2
        header[name] = {"dtype": "BF16", "shape": list(lay[name]), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    one = np.full(1, 0x3F80, dtype=np.uint16).tobytes()  # bf16 1.0
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        pos = 0
        for name in names:
            count = parameter_count({name: lay[name]})
            kind = _fill(name)
            if kind == "ones":
                f.write(one * count)
            elif kind == "zeros":
                f.write(bytes(2 * count))
            else:
                left = count
                while left:
                    take = min(left, pool.size - pos)
                    f.write(pool[pos : pos + take].tobytes())
                    pos = (pos + take) % pool.size
                    left -= take
    return off


def random_pool(elements: int, seed: int = 0) -> Any:
    """bf16 bits of N(0, 0.02) draws (truncated from float32)."""
    import numpy as np

    x = (np.random.default_rng(seed).standard_normal(elements, dtype=np.float32) * 0.02).view(np.uint32)
    return (x >> 16).astype(np.uint16)


def _tokenizer_files(d: str, vocab_size: int, specials: dict[int, str]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {specials.get(i, f"w{i}" if i else "<unk>"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # decode joins words with spaces
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials.values()])
    tok.save(os.path.join(d, "tokenizer.json"))


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c or 'image_url' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' or 'video' in c %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def sidecar_files(d: str, name: str, cfg: dict[str, Any]) -> None:
    """Tokenizer, generation config and the family's processor / sentence-transformers files."""
    specials = dict(SPECIAL_TOKENS)
    vl = cfg["model_type"] == "qwen2_5_vl"
    if vl:
        specials.update(VL_SPECIAL_TOKENS)
    _tokenizer_files(d, cfg["vocab_size"], specials)
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>" if cfg.get("is_embedding") else "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "model_max_length": 131072,
        "chat_template": CHAT_TEMPLATE,
    }
    if vl:
        tok_cfg["processor_class"] = "Qwen2_5_VLProcessor"
    _dump(os.path.join(d, "tokenizer_config.json"), tok_cfg)
    _dump(os.path.join(d, "special_tokens_map.json"), {"eos_token": tok_cfg["eos_token"], "pad_token": "<|endoftext|>"})
    _dump(os.path.join(d, "generation_config.json"), {"bos_token_id": 151643, "eos_token_id": [151645, 151643]})
    # transformers 5 picks the tokenizer class from config.json's model_type, and for ``qwen2`` that is
    # Qwen2Tokenizer, which rebuilds a byte-level BPE around this word-level vocab: ids decode without spaces and
    # the text re-encodes to nothing (seen on the H200, 2026-12-03). A folder without config.json loads the
    # tokenizer.json as written: serve and benchmark qwen2 checkpoints with ``--tokenizer DIR/tokenizer``.
    os.makedirs(os.path.join(d, "tokenizer"), exist_ok=True)
    for fn in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(os.path.join(d, fn), os.path.join(d, "tokenizer", fn))
    if vl:
        _dump(os.path.join(d, "preprocessor_config.json"), QWEN2_5_VL_PREPROCESSOR)
        _dump(os.path.join(d, "chat_template.json"), {"chat_template": CHAT_TEMPLATE})
    if cfg.get("is_embedding"):
        _dump(
            os.path.join(d, "modules.json"),
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
        )
        os.makedirs(os.path.join(d, "1_Pooling"), exist_ok=True)
        _dump(
            os.path.join(d, "1_Pooling", "config.json"),
            {
                "word_embedding_dimension": cfg["hidden_size"],
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": True,
                "include_prompt": True,
            },
        )
        os.makedirs(os.path.join(d, "2_Normalize"), exist_ok=True)
        _dump(os.path.join(d, "config_sentence_transformers.json"), {"prompts": {}, "default_prompt_name": None})


def _dump(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def config_for(name: str) -> dict[str, Any]:
    cfg = dict(FAMILIES[name])
    if name.startswith("qwen3-embedding"):
        cfg["is_embedding"] = True
    return cfg


def config_json(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config.json written beside the weights (Qwen3-Next's layer_types spelled out, as transformers writes it)."""
    on_disk = {k: v for k, v in cfg.items() if k != "is_embedding"}
    if on_disk["model_type"] == "qwen3_next":
        on_disk["layer_types"] = layer_types(cfg)
    return on_disk


def make(root: str, name: str, cfg: dict[str, Any] | None = None, shard_bytes: int = 4 * 2**30) -> str:
    cfg = config_for(name) if cfg is None else cfg
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    _dump(os.path.join(d, "config.json"), config_json(cfg))
    sidecar_files(d, name, cfg)
    lay = layout(cfg)
    pool = random_pool(32 * 2**20)
    groups = list(_shards(lay, shard_bytes))
    wmap: dict[str, str] = {}
    total = 0
    for i, names in enumerate(groups, 1):
        fn = "model.safetensors" if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        total += write_safetensors(os.path.join(d, fn), lay, names, pool)
        wmap.update(dict.fromkeys(names, fn))
    if len(groups) > 1:
        _dump(os.path.join(d, "model.safetensors.index.json"), {"metadata": {"total_size": total}, "weight_map": wmap})
    print(f"{name}: {len(lay)} tensors, {parameter_count(lay):,} parameters, {total / 2**30:.2f} GiB -> {d}")
    return d


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--config":  # print one checkpoint's config.json
        print(json.dumps(config_json(config_for(argv[1])), indent=1))
        return 0
    if argv[0] == "--list":
        for n in FAMILIES:
            print(n, f"{parameter_count(layout(config_for(n))):,}")
        return 0
    root = argv[0]
    for n in argv[1:]:
        t = time.time()
        make(root, n)
        print(f"  took {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
