"""What the estimator needs to know about a model: the config.json fields, typed and validated.

``ModelSpec`` is built from the built-in catalog (``qwendeploy/data/models.yaml``), from a local
directory's config.json, or from config.json fetched from the Hub (adapters/hub.py); all three go through
``spec_from_hf_config`` so they are validated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    @property
    def max_context_with_yarn(self) -> int:
        """Longest context the model supports, with its published YaRN override where there is one."""
        if self.yarn_factor:
            return int(self.original_max_position_embeddings * self.yarn_factor)
        return self.max_position_embeddings

    @property
    def original_max_position_embeddings(self) -> int:
        if self.rope_scaling and "original_max_position_embeddings" in self.rope_scaling:
            return int(self.rope_scaling["original_max_position_embeddings"])
        return self.max_position_embeddings
