"""What the estimator needs to know about a model: the config.json fields, typed and validated.

``ModelSpec`` is built from the built-in catalog (``qwendeploy/data/models.yaml``), from a local
directory's config.json, or from config.json fetched from the Hub (adapters/hub.py); all three go through
``spec_from_hf_config`` so they are validated the same way.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from qwendeploy.core import families, safe_yaml
from qwendeploy.core.families import LinearAttention, Task, VisionTower
from qwendeploy.errors import BadInput


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's quantization as its config.json ``quantization_config`` states it."""

    method: str
    """vLLM's name: ``awq``, ``gptq``, ``fp8``, ``compressed-tensors`` …"""
    bits: int
    group_size: int | None = None
    """Elements sharing one scale (128 for Qwen's AWQ/GPTQ); None for per-channel/per-tensor."""
    block_size: tuple[int, int] | None = None
    """Block-wise FP8 (``weight_block_size: [128, 128]``)."""
    zero_point: bool = False
    """AWQ stores a zero point per group (``qzeros``); GPTQ ``sym: true`` checkpoints still ship qzeros."""
    desc_act: bool = False
    """GPTQ act-order; with Marlin kernels a ``g_idx`` tensor is kept per row-parallel weight."""
    activation_scheme: str | None = None
    """FP8: ``dynamic`` or ``static`` activation scales."""


@dataclass(frozen=True)
class Moe:
    """Mixture-of-experts shape."""

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as the memory estimator sees it."""

    id: str
    """Hugging Face repo id (``Qwen/Qwen2.5-7B-Instruct``) or the local path."""
    architecture: str
    """``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``Qwen3MoeForCausalLM`` …"""
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    """As in config.json: the longest context vLLM accepts without an override."""
    torch_dtype: str = "bfloat16"
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None
    """The config's own rope scaling, if it ships one."""
    yarn_factor: float | None = None
    """Published YaRN factor for long context (4.0 for Qwen2.5 7B+ → 131072 tokens); None if not supported."""
    yarn_original_max_position_embeddings: int | None = None
    """The window YaRN's factor multiplies when the config's own max_position_embeddings is larger (Qwen3 and
    QwQ: 40960 in config.json, 32768 pretrained); None means max_position_embeddings."""
    attention_bias: bool = False
    """Qwen2/2.5 have q/k/v biases; Qwen3 has q/k norms instead."""
    qk_norm: bool = False
    moe: Moe | None = None
    quantization: Quantization | None = None
    published_params: int | None = None
    """Parameter count from the model card (for checks, not for the estimate)."""
    weight_bytes: int | None = None
    """Exact checkpoint bytes from safetensors headers, when known."""
    weight_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str = "catalog"
    """``catalog``, ``local:<path>`` or ``hub:<repo>``."""
    model_type: str = ""
    """config.json ``model_type`` (``qwen2``, ``qwen3``, ``qwen3_moe`` …)."""
    base_model: str | None = None
    """For a quantized checkpoint in the catalog: the unquantized catalog entry it was made from."""
    rms_norm_eps: float = 1e-6
    layer_kinds: tuple[str, ...] = ()
    """Per decoder layer ``full_attention`` / ``linear_attention`` for a hybrid (Qwen3-Next); empty: all full."""
    linear_attention: LinearAttention | None = None
    """Gated DeltaNet shape of the linear-attention layers (hybrids only)."""
    attention_output_gate: bool = False
    """Qwen3-Next's gated attention: q_proj also produces the output gate (twice the query width)."""
    vision: VisionTower | None = None
    """The vision tower of a vision-language checkpoint."""
    task: Task = "generate"
    """``generate`` (chat) or a pooling task vLLM runs with ``--runner pooling`` (embed, classify, reward)."""
    dual_chunk_trained_length: int | None = None
    """Dual-chunk-attention (Qwen2.5-*-1M) configs: the trained window; vLLM's V1 engine has no DCA."""
    mtp_layers: int = 0
    """Multi-token-prediction layers shipped in the checkpoint (loaded only for MTP speculative decoding)."""
    unmodelled_keys: tuple[str, ...] = ()
    """Memory-relevant config keys the estimate does not model (the plan notes them)."""

    @property
    def is_hybrid(self) -> bool:
        """Some layers are linear attention (a per-sequence state, no KV cache)."""
        return "linear_attention" in self.layer_kinds

    @property
    def full_attention_layers(self) -> int:
        if not self.is_hybrid:
            return self.num_hidden_layers
        return sum(1 for k in self.layer_kinds if k == "full_attention")

    @property
    def is_multimodal(self) -> bool:
        return self.vision is not None

    @property
    def is_pooling(self) -> bool:
        return self.task != "generate"

    @property
    def max_context_with_yarn(self) -> int:
        """Longest context the model supports, with its published YaRN override where there is one."""
        if self.yarn_factor:
            return int(self.original_max_position_embeddings * self.yarn_factor)
        return self.max_position_embeddings

    @property
    def original_max_position_embeddings(self) -> int:
        """The pretraining window YaRN scales from (32768 for Qwen2.5 and Qwen3, whose config may say 40960)."""
        if self.rope_scaling and "original_max_position_embeddings" in self.rope_scaling:
            return int(self.rope_scaling["original_max_position_embeddings"])
        if self.yarn_original_max_position_embeddings:
            return self.yarn_original_max_position_embeddings
        return self.max_position_embeddings

    def yarn_rope_parameters(self, factor: float | None = None) -> dict[str, Any] | None:
        """The rope dict that enables the published YaRN recipe (for ``--hf-overrides``); None if there is none.

        Args:
            factor: a smaller factor than the published one (Qwen suggests 2.0 for 65536-token contexts).
        """
        chosen = factor if factor is not None else self.yarn_factor
        if not chosen:
            return None
        return {
            "rope_type": "yarn",
            "factor": float(chosen),
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "rope_theta": self.rope_theta,
        }


# --------------------------------------------------------------------------------------------------------------
# config.json → ModelSpec
# --------------------------------------------------------------------------------------------------------------

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


def _bad(source_id: str, field_name: str, problem: str) -> BadInput:
    return BadInput(
        f"config.json of {source_id}: field {field_name!r} {problem}.",
        hint="Check the model's config.json; qwendeploy reads the same fields vLLM does.",
    )


def _req_int(cfg: Mapping[str, Any], key: str, source_id: str, *, minimum: int = 1) -> int:
    if key not in cfg or cfg[key] is None:
        raise _bad(source_id, key, "is missing")
    return _as_int(cfg[key], key, source_id, minimum=minimum)


def _as_int(value: Any, key: str, source_id: str, *, minimum: int = 1) -> int:
    # bool is an int subclass; a bool where a count belongs is a broken config, not 0/1.
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise _bad(source_id, key, f"must be an integer, got {value!r}")
    if int(value) < minimum:
        raise _bad(source_id, key, f"must be at least {minimum}, got {value!r}")
    return int(value)


def _opt_int(cfg: Mapping[str, Any], key: str, source_id: str, default: int, *, minimum: int = 1) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    return _as_int(value, key, source_id, minimum=minimum)


def _as_float(value: Any, key: str, source_id: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise _bad(source_id, key, f"must be a positive number, got {value!r}")
    return float(value)


def _as_bool(value: Any, key: str, source_id: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(source_id, key, f"must be true or false, got {value!r}")
    return value


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
        raise _bad(source_id, "rope_parameters", "must be a mapping")
    theta_raw = cfg.get("rope_theta")
    if theta_raw is None and params is not None:
        theta_raw = params.get("rope_theta")
    theta = 10_000.0 if theta_raw is None else _as_float(theta_raw, "rope_theta", source_id)

    scaling = cfg.get("rope_scaling")
    if scaling is None and params is not None:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is None:
        return theta, None
    if not isinstance(scaling, Mapping):
        raise _bad(source_id, "rope_scaling", "must be a mapping or null")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default") and "factor" not in scaling:
        return theta, None
    scaling = dict(scaling)
    if "factor" in scaling:
        _as_float(scaling["factor"], "rope_scaling.factor", source_id)
    if "original_max_position_embeddings" in scaling:
        _as_int(scaling["original_max_position_embeddings"], "rope_scaling.original_max_position_embeddings", source_id)
    return theta, scaling


def _quantization(cfg: Mapping[str, Any], source_id: str) -> Quantization | None:
    q = cfg.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, Mapping):
        raise _bad(source_id, "quantization_config", "must be a mapping")
    method = q.get("quant_method")
    if not isinstance(method, str) or not method:
        raise _bad(source_id, "quantization_config.quant_method", "is missing")
    method = method.lower()
    if method == "awq":
        bits = _as_int(q.get("bits", q.get("w_bit")), "quantization_config.bits", source_id)
        group = q.get("group_size", q.get("q_group_size"))
        return Quantization(
            method="awq",
            bits=bits,
            group_size=_group(group, source_id),
            zero_point=bool(q.get("zero_point", True)),
        )
    if method == "gptq":
        bits = _as_int(q.get("bits"), "quantization_config.bits", source_id)
        # GPTQ checkpoints always carry qzeros, even when ``sym: true``.
        return Quantization(
            method="gptq",
            bits=bits,
            group_size=_group(q.get("group_size"), source_id),
            zero_point=True,
            desc_act=bool(q.get("desc_act", False)),
        )
    if method == "fp8":
        block = q.get("weight_block_size")
        block_size: tuple[int, int] | None = None
        if block is not None:
            if not isinstance(block, list | tuple) or len(block) != 2:
                raise _bad(source_id, "quantization_config.weight_block_size", f"must be [n, k], got {block!r}")
            block_size = (
                _as_int(block[0], "quantization_config.weight_block_size", source_id),
                _as_int(block[1], "quantization_config.weight_block_size", source_id),
            )
        scheme = q.get("activation_scheme")
        return Quantization(
            method="fp8",
            bits=8,
            block_size=block_size,
            activation_scheme=str(scheme) if scheme is not None else None,
        )
    if method == "compressed-tensors":
        return _compressed_tensors(q, source_id)
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8
        return Quantization(method="bitsandbytes", bits=bits, group_size=64 if bits == 4 else None)
    bits_raw = q.get("bits", q.get("w_bit"))
    if bits_raw is None:
        raise _bad(source_id, "quantization_config.bits", f"is missing (quant_method {method!r})")
    return Quantization(
        method=method,
        bits=_as_int(bits_raw, "quantization_config.bits", source_id),
        group_size=_group(q.get("group_size"), source_id),
    )


def _group(value: Any, source_id: str) -> int | None:
    if value is None or value == -1:
        return None  # per-channel
    return _as_int(value, "quantization_config.group_size", source_id)


def _compressed_tensors(q: Mapping[str, Any], source_id: str) -> Quantization:
    groups = q.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise _bad(source_id, "quantization_config.config_groups", "is missing")
    first = next(iter(groups.values()))
    weights = first.get("weights") if isinstance(first, Mapping) else None
    if not isinstance(weights, Mapping):
        raise _bad(source_id, "quantization_config.config_groups.*.weights", "is missing")
    bits = _as_int(weights.get("num_bits"), "quantization_config.config_groups.*.weights.num_bits", source_id)
    block = weights.get("block_structure")
    block_size: tuple[int, int] | None = None
    if isinstance(block, list | tuple) and len(block) == 2:
        block_size = (int(block[0]), int(block[1]))
    scheme = None
    acts = first.get("input_activations") if isinstance(first, Mapping) else None
    if isinstance(acts, Mapping):
        scheme = "dynamic" if acts.get("dynamic") else "static"
    return Quantization(
        method="compressed-tensors",
        bits=bits,
        group_size=_group(weights.get("group_size"), source_id),
        block_size=block_size,
        zero_point=not bool(weights.get("symmetric", True)),
        activation_scheme=scheme,
    )


def _moe(cfg: Mapping[str, Any], source_id: str) -> Moe | None:
    experts = cfg.get("num_experts")
    if experts in (None, 0):
        return None
    num_experts = _as_int(experts, "num_experts", source_id)
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list | tuple):
        raise _bad(source_id, "mlp_only_layers", "must be a list of layer indices")
    return Moe(
        num_experts=num_experts,
        num_experts_per_tok=_req_int(cfg, "num_experts_per_tok", source_id),
        moe_intermediate_size=_req_int(cfg, "moe_intermediate_size", source_id),
        shared_expert_intermediate_size=_opt_int(cfg, "shared_expert_intermediate_size", source_id, 0, minimum=0),
        decoder_sparse_step=_opt_int(cfg, "decoder_sparse_step", source_id, 1),
        mlp_only_layers=tuple(_as_int(i, "mlp_only_layers", source_id, minimum=0) for i in only),
    )


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

    model_type = cfg.get("model_type", "")
    if not isinstance(model_type, str):
        raise _bad(id, "model_type", "must be a string")
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs)):
        raise _bad(id, "architectures", f"must be a non-empty list of class names, got {archs!r}")
    if archs:
        architecture = archs[0]
    elif model_type in _ARCH_BY_MODEL_TYPE:
        architecture = _ARCH_BY_MODEL_TYPE[model_type]
    else:
        raise _bad(id, "architectures", "is missing (and model_type does not name a known architecture)")

    layers = _req_int(cfg, "num_hidden_layers", id)
    hidden = _req_int(cfg, "hidden_size", id)
    heads = _req_int(cfg, "num_attention_heads", id)
    kv_heads = _opt_int(cfg, "num_key_value_heads", id, heads)
    if heads % kv_heads:
        raise _bad(id, "num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})")
    if cfg.get("head_dim") is not None:
        head_dim = _as_int(cfg["head_dim"], "head_dim", id)
    else:
        if hidden % heads:
            raise _bad(id, "head_dim", f"is missing and hidden_size {hidden} is not divisible by {heads} heads")
        head_dim = hidden // heads
    moe = _moe(cfg, id)
    if moe is not None and cfg.get("intermediate_size") is None:
        intermediate = 0  # a pure-MoE model needs no dense MLP width
    else:
        intermediate = _req_int(cfg, "intermediate_size", id)
    vocab = _req_int(cfg, "vocab_size", id)
    max_pos = _req_int(cfg, "max_position_embeddings", id)
    tie_raw = cfg.get("tie_word_embeddings", False)
    tie = _as_bool(tie_raw, "tie_word_embeddings", id)

    dtype_raw = cfg.get("torch_dtype", cfg.get("dtype")) or "bfloat16"
    if not isinstance(dtype_raw, str):
        raise _bad(id, "torch_dtype", f"must be a string such as 'bfloat16', got {dtype_raw!r}")
    dtype = dtype_raw.removeprefix("torch.")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise _bad(id, "torch_dtype", f"must be bfloat16, float16 or float32, got {dtype_raw!r}")

    theta, scaling = _rope(cfg, id)
    yarn: float | None = None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "yarn" and "factor" in scaling:
        yarn = float(scaling["factor"])

    if model_type in _QKV_BIAS_MODEL_TYPES or (not model_type and architecture.startswith("Qwen2")):
        attention_bias = True
    else:
        attention_bias = _as_bool(cfg.get("attention_bias", False), "attention_bias", id)
    qk_norm = model_type in _QK_NORM_MODEL_TYPES or (not model_type and architecture.startswith("Qwen3"))
    eps_raw = cfg.get("rms_norm_eps", 1e-6)
    eps = _as_float(eps_raw, "rms_norm_eps", id)
    family = _family_fields(config, cfg, architecture, layers, id)

    return ModelSpec(
        id=id,
        architecture=architecture,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=max_pos,
        torch_dtype=dtype,
        rope_theta=theta,
        rope_scaling=scaling,
        yarn_factor=yarn,
        attention_bias=attention_bias,
        qk_norm=qk_norm,
        moe=moe,
        quantization=_quantization(cfg, id),
        published_params=published_params,
        source=source,
        model_type=model_type,
        rms_norm_eps=eps,
        **family,
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


# --------------------------------------------------------------------------------------------------------------
# The built-in catalog (qwendeploy/data/models.yaml)
# --------------------------------------------------------------------------------------------------------------

_COUNT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBT]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_count(value: Any) -> int:
    """``7.61B`` → 7_610_000_000; plain integers pass through. The catalog writes counts as the card prints them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _COUNT_RE.match(str(value))
    if not m:
        raise ValueError(f"not a parameter count: {value!r}")
    return round(float(m.group(1)) * _SCALE[m.group(2).upper()])


def _name_part(repo_id: str) -> str:
    return repo_id.rsplit("/", 1)[-1].lower()


def _load_catalog_yaml(text: str) -> tuple[ModelSpec, ...]:
    doc = safe_yaml.load(text)
    entries = doc["models"]
    raw_by_id: dict[str, dict[str, Any]] = {}
    specs: list[ModelSpec] = []
    for entry in entries:
        model_id = entry["id"]
        parent_id = entry.get("from")
        if parent_id is not None:
            parent = raw_by_id[parent_id]  # a KeyError here is a catalog bug; the tests load every entry
            config = {**parent["config"], **entry.get("config", {})}
            merged = {**parent, **entry, "config": config}
        else:
            merged = dict(entry)
        raw_by_id[model_id] = merged
        published = merged.get("published_params")
        spec = spec_from_hf_config(
            merged["config"],
            id=model_id,
            source="catalog",
            published_params=parse_count(published) if published is not None else None,
        )
        aliases = [_name_part(model_id), *(a.lower() for a in entry.get("aliases", ()))]
        spec = replace(
            spec,
            yarn_factor=merged.get("yarn_factor", spec.yarn_factor),
            yarn_original_max_position_embeddings=merged.get("yarn_original_max_position_embeddings"),
            aliases=tuple(dict.fromkeys(aliases)),
            base_model=(parent_id if "quantization_config" in merged["config"] else None),
            task=merged.get("task", spec.task),
        )
        specs.append(spec)
    return tuple(specs)


@functools.cache
def catalog() -> tuple[ModelSpec, ...]:
    """Every model in the built-in catalog, in file order (loaded once)."""
    text = resources.files("qwendeploy").joinpath("data/models.yaml").read_text(encoding="utf-8")
    return _load_catalog_yaml(text)


@functools.cache
def _index() -> dict[str, ModelSpec]:
    index: dict[str, ModelSpec] = {}
    for spec in catalog():
        index.setdefault(spec.id.lower(), spec)
        for alias in spec.aliases:
            index.setdefault(alias, spec)
    return index


def find_model(ref: str) -> ModelSpec | None:
    """A catalog model by Hugging Face repo id (any case) or alias (``qwen2.5-7b-instruct``); None if unknown."""
    key = ref.strip().lower()
    return _index().get(key)


def suggest_models(ref: str, n: int = 3) -> list[str]:
    """Up to ``n`` catalog repo ids that look like ``ref`` (for "did you mean" messages)."""
    key = ref.strip().lower()
    key_name = _name_part(key)
    index = _index()
    names: dict[str, str] = {}
    for name, spec in index.items():
        names.setdefault(_name_part(name), spec.id)
    found: list[str] = []
    # A name the reference starts (qwen3-vl-8b → qwen3-vl-8b-instruct) is the likeliest meaning: shortest first.
    if key_name:
        for name in sorted((m for m in names if m.startswith(key_name) and m != key_name), key=len):
            if names[name] not in found:
                found.append(names[name])
    for candidate in difflib.get_close_matches(key_name, list(names), n=n * 3, cutoff=0.6):
        if names[candidate] not in found:
            found.append(names[candidate])
    if len(found) < n and key_name:
        for name, model_id in names.items():
            if key_name in name and model_id not in found:
                found.append(model_id)
    return found[:n]
