"""config.json → ``ModelSpec``: the decoder's shape, dtype, rope, attention details, MoE, quantization and the
family fields (hybrid, vision, pooling, DCA), each read and checked by a step of its own.

The built-in catalog, a local directory's config.json and one fetched from the Hub all go through
``spec_from_hf_config``, so they are validated the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qwendeploy.core import families
from qwendeploy.core.models.hf_fields import as_bool, as_float, as_int, bad, opt_int, req_int
from qwendeploy.core.models.hf_quantization import quantization
from qwendeploy.core.models.spec import ModelSpec, Moe
from qwendeploy.errors import BadInput

_ARCH_BY_MODEL_TYPE = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}

# Qwen2 and Qwen2-MoE hard-code bias on q/k/v (there is no config key for it); Qwen3 reads ``attention_bias``.
_QKV_BIAS_MODEL_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text"})
# Qwen3 normalises q and k per head (q_norm/k_norm of size head_dim).
_QK_NORM_MODEL_TYPES = frozenset(
    {"qwen3", "qwen3_moe", "qwen3_next", "qwen3_vl", "qwen3_vl_text", "qwen3_vl_moe", "qwen3_vl_moe_text"}
)

# Keys that live at the top level of a multimodal config but describe the whole checkpoint, so they are kept when
# the text tower is read from ``text_config``.
_OUTER_KEYS = ("architectures", "quantization_config", "torch_dtype", "dtype", "tie_word_embeddings")


def spec_from_hf_config(
    config: Mapping[str, Any], *, id: str, source: str, published_params: int | None = None
) -> ModelSpec:
    """Validate a config.json's contents and turn them into a ``ModelSpec``.

    Handles Qwen2/Qwen2.5 (``qwen2``), Qwen2-MoE, Qwen3 and Qwen3-MoE configs; a ``text_config`` nesting;
    transformers-5 ``rope_parameters`` and ``dtype``; ``quantization_config`` for awq, gptq, fp8,
    compressed-tensors and bitsandbytes. Llama/Mistral configs with the same keys parse too (tested for a
    Llama-3-8B-shaped config only).

    Args:
        config: the parsed config.json.
        id: repo id or path the config belongs to (used in the spec and in error messages).
        source: ``catalog``, ``local:<path>`` or ``hub:<repo>``.
        published_params: the model card's parameter count, if known.

    Returns:
        The validated spec.

    Raises:
        BadInput: a field the estimator needs is missing or has the wrong type; the message names it.
    """
    if not isinstance(config, Mapping):
        raise BadInput(f"config.json of {id} is not a JSON object.")
    cfg = _flatten_text_config(config)
    # The steps run in this order, so a config with several bad fields names the same one first as ever.
    model_type, architecture = _architecture(cfg, id)
    shape = _shape(cfg, id)
    dtype = _dtype(cfg, id)
    theta, scaling = _rope(cfg, id)
    yarn: float | None = None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "yarn" and "factor" in scaling:
        yarn = float(scaling["factor"])
    attention_bias, qk_norm = _attention_details(cfg, model_type, architecture, id)
    eps = as_float(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps", id)
    family = _family_fields(config, cfg, architecture, shape["num_hidden_layers"], id)
    return ModelSpec(
        id=id,
        architecture=architecture,
        **shape,
        torch_dtype=dtype,
        rope_theta=theta,
        rope_scaling=scaling,
        yarn_factor=yarn,
        attention_bias=attention_bias,
        qk_norm=qk_norm,
        quantization=quantization(cfg, id),
        published_params=published_params,
        source=source,
        model_type=model_type,
        rms_norm_eps=eps,
        **family,
    )


def _architecture(cfg: Mapping[str, Any], source_id: str) -> tuple[str, str]:
    """``model_type`` and the architecture class (the first of ``architectures``, else the model type's)."""
    model_type = cfg.get("model_type", "")
    if not isinstance(model_type, str):
        raise bad(source_id, "model_type", "must be a string")
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs)):
        raise bad(source_id, "architectures", f"must be a non-empty list of class names, got {archs!r}")
    if archs:
        return model_type, archs[0]
    if model_type in _ARCH_BY_MODEL_TYPE:
        return model_type, _ARCH_BY_MODEL_TYPE[model_type]
    raise bad(source_id, "architectures", "is missing (and model_type does not name a known architecture)")


def _shape(cfg: Mapping[str, Any], source_id: str) -> dict[str, Any]:
    """The decoder's sizes (layers, widths, heads, vocabulary, window, MoE), as ``ModelSpec`` keywords."""
    layers = req_int(cfg, "num_hidden_layers", source_id)
    hidden = req_int(cfg, "hidden_size", source_id)
    heads = req_int(cfg, "num_attention_heads", source_id)
    kv_heads = opt_int(cfg, "num_key_value_heads", source_id, heads)
    if heads % kv_heads:
        raise bad(source_id, "num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})")
    if cfg.get("head_dim") is not None:
        head_dim = as_int(cfg["head_dim"], "head_dim", source_id)
    else:
        if hidden % heads:
            raise bad(source_id, "head_dim", f"is missing and hidden_size {hidden} is not divisible by {heads} heads")
        head_dim = hidden // heads
    moe = _moe(cfg, source_id)
    if moe is not None and cfg.get("intermediate_size") is None:
        intermediate = 0  # a pure-MoE model needs no dense MLP width
    else:
        intermediate = req_int(cfg, "intermediate_size", source_id)
    vocab = req_int(cfg, "vocab_size", source_id)
    max_pos = req_int(cfg, "max_position_embeddings", source_id)
    tie = as_bool(cfg.get("tie_word_embeddings", False), "tie_word_embeddings", source_id)
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "tie_word_embeddings": tie,
        "max_position_embeddings": max_pos,
        "moe": moe,
    }


def _dtype(cfg: Mapping[str, Any], source_id: str) -> str:
    """``torch_dtype`` (transformers 5: ``dtype``) as bfloat16, float16 or float32."""
    dtype_raw = cfg.get("torch_dtype", cfg.get("dtype")) or "bfloat16"
    if not isinstance(dtype_raw, str):
        raise bad(source_id, "torch_dtype", f"must be a string such as 'bfloat16', got {dtype_raw!r}")
    dtype = dtype_raw.removeprefix("torch.")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise bad(source_id, "torch_dtype", f"must be bfloat16, float16 or float32, got {dtype_raw!r}")
    return dtype


def _attention_details(cfg: Mapping[str, Any], model_type: str, architecture: str, source_id: str) -> tuple[bool, bool]:
    """(q/k/v biases, q/k norms): fixed by the model type for Qwen2 and Qwen3, else read from the config."""
    if model_type in _QKV_BIAS_MODEL_TYPES or (not model_type and architecture.startswith("Qwen2")):
        attention_bias = True
    else:
        attention_bias = as_bool(cfg.get("attention_bias", False), "attention_bias", source_id)
    qk_norm = model_type in _QK_NORM_MODEL_TYPES or (not model_type and architecture.startswith("Qwen3"))
    return attention_bias, qk_norm


def _flatten_text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Multimodal and transformers-5 configs nest the decoder under ``text_config``; read the decoder there."""
    cfg = dict(config)
    text = cfg.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" not in cfg:
        merged = dict(text)
        for key in _OUTER_KEYS:
            if key in cfg and key not in merged:
                merged[key] = cfg[key]
        return merged
    return cfg


def _rope(cfg: Mapping[str, Any], source_id: str) -> tuple[float, dict[str, Any] | None]:
    """``rope_theta`` and the scaling dict, from transformers-4 keys or transformers-5 ``rope_parameters``."""
    params = cfg.get("rope_parameters")
    if params is not None and not isinstance(params, Mapping):
        raise bad(source_id, "rope_parameters", "must be a mapping")
    theta_raw = cfg.get("rope_theta")
    if theta_raw is None and params is not None:
        theta_raw = params.get("rope_theta")
    theta = 10_000.0 if theta_raw is None else as_float(theta_raw, "rope_theta", source_id)

    scaling = cfg.get("rope_scaling")
    if scaling is None and params is not None:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is None:
        return theta, None
    if not isinstance(scaling, Mapping):
        raise bad(source_id, "rope_scaling", "must be a mapping or null")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default") and "factor" not in scaling:
        return theta, None
    scaling = dict(scaling)
    if "factor" in scaling:
        as_float(scaling["factor"], "rope_scaling.factor", source_id)
    if "original_max_position_embeddings" in scaling:
        as_int(scaling["original_max_position_embeddings"], "rope_scaling.original_max_position_embeddings", source_id)
    return theta, scaling


def _moe(cfg: Mapping[str, Any], source_id: str) -> Moe | None:
    experts = cfg.get("num_experts")
    if experts in (None, 0):
        return None
    num_experts = as_int(experts, "num_experts", source_id)
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list | tuple):
        raise bad(source_id, "mlp_only_layers", "must be a list of layer indices")
    return Moe(
        num_experts=num_experts,
        num_experts_per_tok=req_int(cfg, "num_experts_per_tok", source_id),
        moe_intermediate_size=req_int(cfg, "moe_intermediate_size", source_id),
        shared_expert_intermediate_size=opt_int(cfg, "shared_expert_intermediate_size", source_id, 0, minimum=0),
        decoder_sparse_step=opt_int(cfg, "decoder_sparse_step", source_id, 1),
        mlp_only_layers=tuple(as_int(i, "mlp_only_layers", source_id, minimum=0) for i in only),
    )


def _family_fields(
    config: Mapping[str, Any], cfg: Mapping[str, Any], architecture: str, layers: int, source_id: str
) -> dict[str, Any]:
    """Hybrid / vision / pooling / DCA fields of a config (core/families.py); refuses unmodelled architectures."""
    families.check_architecture(architecture, source_id)
    kinds = families.layer_kinds(cfg, layers, source_id)
    hybrid = bool(kinds) and set(kinds) <= {"full_attention", "linear_attention"} and "linear_attention" in kinds
    if kinds and not hybrid:
        kinds = ()  # e.g. sliding_attention layers: not modelled, reported through unmodelled_keys
    vision = families.vision_tower(config, architecture, source_id)
    dca = families.dual_chunk_trained_length(cfg)
    sliding_off = not cfg.get("use_sliding_window", False)
    return {
        "layer_kinds": kinds,
        "linear_attention": families.linear_attention(cfg, source_id) if hybrid else None,
        "attention_output_gate": bool(cfg.get("attn_output_gate", hybrid)),
        "vision": vision,
        "task": families.task_of(architecture, cfg),
        "dual_chunk_trained_length": dca,
        "mtp_layers": families.mtp_layers(cfg),
        "unmodelled_keys": families.unmodelled_keys(
            {**config, **cfg},
            hybrid=hybrid,
            vision=vision is not None,
            dca=dca is not None,
            sliding_window_off=sliding_off,
        ),
    }
