"""The model as the estimator sees it: ``ModelSpec`` and the quantization and MoE values it carries.

Frozen values only; ``hf_config`` builds them from a config.json, ``lookup`` from the built-in catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwendeploy.core.families import LinearAttention, Task, VisionTower


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
