"""Parameter counts of a decoder-only model, tensor by tensor, unsharded.

The estimator shards these per GPU (vocab-parallel embedding/LM head, column/row-parallel projections,
replicated norms and routers), so every count here keeps weight and bias of one projection together and
keeps the replicated pieces (norms, q/k norms, router) apart from the sharded ones.

Counts are of *logical* elements (a bf16 model's parameters). A quantized checkpoint stores fewer bytes per
element plus scales and zero points; turning elements into bytes is the estimator's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core.families import vision_params
from qwendeploy.core.models import ModelSpec


@dataclass(frozen=True)
class LayerParams:
    """Elements of one decoder layer."""

    q: int
    """q_proj weight + bias (Qwen2 has q/k/v bias; Qwen3 has none)."""
    k: int
    v: int
    o: int
    qk_norm: int
    """Qwen3 q_norm + k_norm (head_dim each; replicated under TP)."""
    mlp_gate_up: int
    """Dense MLP gate_proj + up_proj (0 for a pure-MoE layer)."""
    mlp_down: int
    experts_gate_up: int
    """All routed experts' gate_proj + up_proj together."""
    experts_down: int
    router: int
    """MoE gate (hidden × experts; replicated)."""
    shared_gate_up: int
    shared_down: int
    shared_expert_gate: int
    norms: int
    """input_layernorm + post_attention_layernorm (replicated)."""

    def total(self) -> int:
        return (
            self.q
            + self.k
            + self.v
            + self.o
            + self.qk_norm
            + self.mlp_gate_up
            + self.mlp_down
            + self.experts_gate_up
            + self.experts_down
            + self.router
            + self.shared_gate_up
            + self.shared_down
            + self.shared_expert_gate
            + self.norms
        )

    def active(self, experts_per_tok: int, num_experts: int) -> int:
        """Elements one token touches: everything but the routed experts it is not sent to."""
        routed = self.experts_gate_up + self.experts_down
        if num_experts == 0:
            return self.total()
        return self.total() - routed + routed * experts_per_tok // num_experts


@dataclass(frozen=True)
class ParamBreakdown:
    """Every parameter of a model, grouped the way tensor and pipeline parallelism split them."""

    embedding: int
    """vocab_size × hidden_size (embed_tokens)."""
    lm_head: int
    """vocab_size × hidden_size, or 0 when tied to the embedding."""
    final_norm: int
    layers: tuple[LayerParams, ...]
    experts_per_tok: int = 0
    num_experts: int = 0
    vision: int = 0
    """The vision tower of a vision-language checkpoint (core/families.vision_params)."""

    def total(self) -> int:
        return (
            self.embedding + self.lm_head + self.final_norm + sum(layer.total() for layer in self.layers) + self.vision
        )

    def active(self) -> int:
        """Parameters used per token (all of them for a dense model; top-k experts for MoE)."""
        return (
            self.embedding
            + self.lm_head
            + self.final_norm
            + sum(layer.active(self.experts_per_tok, self.num_experts) for layer in self.layers)
            + self.vision
        )


def is_moe_layer(spec: ModelSpec, layer: int) -> bool:
    """Whether decoder layer ``layer`` (0-based) has routed experts, by the Qwen2-MoE/Qwen3-MoE rule."""
    moe = spec.moe
    if moe is None or moe.num_experts == 0:
        return False
    if layer in moe.mlp_only_layers:
        return False
    return (layer + 1) % moe.decoder_sparse_step == 0


def param_breakdown(spec: ModelSpec) -> ParamBreakdown:
    """Count the parameters of ``spec`` from its shape.

    Args:
        spec: the model.

    Returns:
        Element counts per embedding, LM head, final norm and decoder layer, unsharded.
    """
    h = spec.hidden_size
    layers: list[LayerParams] = []
    # Layers of one kind (dense or routed experts; attention or linear attention) have the same counts: each kind
    # is built once and shared (the values are frozen). The planner asks for the breakdown of every candidate it
    # prices, and 80 fresh frozen values per call were ~0.6 ms of each.
    built: dict[tuple[bool, bool], LayerParams] = {}
    for i in range(spec.num_hidden_layers):
        moe_layer = is_moe_layer(spec, i)
        linear = spec.is_hybrid and spec.layer_kinds[i] == "linear_attention"
        kind = built.get((moe_layer, linear))
        if kind is None:
            kind = built[(moe_layer, linear)] = _layer(spec, moe_layer=moe_layer, linear=linear)
        layers.append(kind)
    embedding = spec.vocab_size * h
    return ParamBreakdown(
        embedding=embedding,
        # Pooling checkpoints (embedding/reranker) carry no LM head.
        lm_head=0 if spec.tie_word_embeddings or spec.is_pooling else embedding,
        final_norm=h,
        layers=tuple(layers),
        experts_per_tok=spec.moe.num_experts_per_tok if spec.moe else 0,
        num_experts=spec.moe.num_experts if spec.moe else 0,
        vision=vision_params(spec.vision) if spec.vision else 0,
    )


def _layer(spec: ModelSpec, *, moe_layer: bool, linear: bool) -> LayerParams:
    """One decoder layer's counts: routed experts or a dense MLP, attention or linear attention."""
    h = spec.hidden_size
    q_out = spec.num_attention_heads * spec.head_dim
    kv_out = spec.num_key_value_heads * spec.head_dim
    bias = spec.attention_bias
    moe = spec.moe
    if moe_layer and moe is not None:
        e, mi, si = moe.num_experts, moe.moe_intermediate_size, moe.shared_expert_intermediate_size
        experts_gate_up, experts_down, router = e * 2 * h * mi, e * mi * h, h * e
        shared_gate_up, shared_down = 2 * h * si, si * h
        shared_expert_gate = h if si else 0
        mlp_gate_up = mlp_down = 0
    else:
        experts_gate_up = experts_down = router = shared_gate_up = shared_down = shared_expert_gate = 0
        mlp_gate_up, mlp_down = 2 * h * spec.intermediate_size, spec.intermediate_size * h
    # The feed-forward half of the layer, the same for attention and linear-attention layers.
    ffn = {
        "mlp_gate_up": mlp_gate_up,
        "mlp_down": mlp_down,
        "experts_gate_up": experts_gate_up,
        "experts_down": experts_down,
        "router": router,
        "shared_gate_up": shared_gate_up,
        "shared_down": shared_down,
        "shared_expert_gate": shared_expert_gate,
    }
    if linear:
        return _linear_attention_layer(spec, **ffn)
    # Qwen3-Next's gated attention: q_proj also yields the output gate (twice the query width).
    q_width = 2 * q_out if spec.attention_output_gate else q_out
    return LayerParams(
        q=h * q_width + (q_width if bias else 0),
        k=h * kv_out + (kv_out if bias else 0),
        v=h * kv_out + (kv_out if bias else 0),
        o=q_out * h,
        qk_norm=2 * spec.head_dim if spec.qk_norm else 0,
        norms=2 * h,
        **ffn,
    )


def _linear_attention_layer(spec: ModelSpec, **mlp: int) -> LayerParams:
    """A Gated DeltaNet layer (Qwen3-Next): in_proj_qkvz + in_proj_ba + conv1d counted as ``q`` (column-parallel),
    out_proj as ``o`` (row-parallel); dt_bias, A_log and the gated norm with the replicated norms."""
    la = spec.linear_attention
    assert la is not None
    h = spec.hidden_size
    in_proj = h * (2 * la.key_dim + 2 * la.value_dim) + h * 2 * la.num_value_heads
    conv = la.conv_dim * la.conv_kernel
    small = 2 * la.num_value_heads + la.value_head_dim
    return LayerParams(
        q=in_proj + conv,
        k=0,
        v=0,
        o=la.value_dim * h,
        qk_norm=0,
        norms=2 * h + small,
        **mlp,
    )
