"""Weights one GPU loads: the shard of each part (embedding, layers, LM head, vision tower) at its stored size, scaled
to the checkpoint's safetensors headers, plus the rotary cos/sin cache loaded with them."""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core import multimodal
from qwendeploy.core.memory.dtypes import DTYPE_BYTES
from qwendeploy.core.memory.sharding import kv_heads_per_rank, pp_layer_counts, vocab_rows_per_rank
from qwendeploy.core.models import ModelSpec, Quantization
from qwendeploy.core.params import LayerParams, ParamBreakdown, param_breakdown


def linear_bytes(elements: float, q: Quantization | None, dtype_bytes: int) -> float:
    """Stored bytes of ``elements`` weights of quantized (or plain) linear layers.

    * AWQ/GPTQ b-bit, group g: b/8 bytes per weight + one fp16 scale per group (+ a b-bit zero point per group).
    * FP8 block (n × k): 1 byte per weight + one fp32 scale per n×k block.
    * FP8 per-tensor/channel (online): 1 byte per weight (scales negligible).
    """
    if q is None:
        return elements * dtype_bytes
    if q.method == "fp8" or (q.method == "compressed-tensors" and q.bits == 8 and q.block_size):
        scales = 0.0
        if q.block_size:
            scales = elements / (q.block_size[0] * q.block_size[1]) * 4
        return elements + scales
    group = q.group_size or 0
    packed = elements * q.bits / 8
    scales = elements / group * 2 if group else 0.0
    zeros = elements / group * q.bits / 8 if group and q.zero_point else 0.0
    return packed + scales + zeros


@dataclass(frozen=True)
class WeightShard:
    """Elements and bytes one GPU holds, by part."""

    embedding: float
    lm_head: float
    final_norm: float
    layers_linear: float
    """Elements of sharded linear layers (attention, MLP, experts)."""
    layers_replicated: float
    """Elements of replicated small tensors (norms, q/k norms, routers)."""
    bytes: int
    vision: float = 0.0
    """Elements of the vision tower on this GPU (first pipeline stage; sharded over TP, kept 16-bit)."""


def _layer_shard(layer: LayerParams, spec: ModelSpec, tp: int, ep: int) -> tuple[float, float]:
    """(linear elements, replicated elements) of one decoder layer on one TP rank."""
    kv = spec.num_key_value_heads
    kv_frac = kv_heads_per_rank(kv, tp) / kv
    linear = (
        layer.q / tp
        + (layer.k + layer.v) * kv_frac
        + layer.o / tp
        + (layer.mlp_gate_up + layer.mlp_down) / tp
        + (layer.experts_gate_up + layer.experts_down) / (tp * ep)
        + (layer.shared_gate_up + layer.shared_down) / tp
    )
    replicated = layer.norms + layer.qk_norm + layer.router + layer.shared_expert_gate
    return linear, replicated


def weight_shard(
    spec: ModelSpec,
    *,
    tp: int,
    pp_rank: int,
    pp: int,
    dtype: str,
    quantization: Quantization | None,
    ep: int = 1,
    breakdown: ParamBreakdown | None = None,
) -> WeightShard:
    """The weights one GPU of pipeline stage ``pp_rank`` (of ``pp``) and any TP rank loads.

    ``ep`` > 1 spreads whole experts over ``tp × ep`` ranks (``--enable-expert-parallel`` with DP).
    """
    bd = breakdown or param_breakdown(spec)
    counts = pp_layer_counts(spec.num_hidden_layers, pp)
    start = sum(counts[:pp_rank])
    mine = bd.layers[start : start + counts[pp_rank]]
    vocab_rows = vocab_rows_per_rank(spec.vocab_size, tp)
    first, last = pp_rank == 0, pp_rank == pp - 1
    embedding = vocab_rows * spec.hidden_size if first else 0
    # A pooling model (embedding/reranker) has no LM head: vLLM's pooling adapters skip it.
    has_head = (bd.lm_head > 0 or (spec.tie_word_embeddings and pp > 1)) and not spec.is_pooling
    lm_head = vocab_rows * spec.hidden_size if (last and has_head) else 0
    final_norm = bd.final_norm if last else 0
    linear = replicated = 0.0
    # Layers of one kind are one shared value (params.param_breakdown): each kind's shard is computed once, and
    # the sum still runs layer by layer, in order, so the figures are the same to the last bit.
    shards: dict[int, tuple[float, float]] = {}
    for layer in mine:
        shard = shards.get(id(layer))
        if shard is None:
            shard = shards[id(layer)] = _layer_shard(layer, spec, tp, ep)
        lin, rep = shard
        linear += lin
        replicated += rep
    dt = DTYPE_BYTES[dtype]
    vision = multimodal.vision_elements_per_gpu(spec, tp=tp) if first else 0.0
    total = (embedding + lm_head + final_norm + replicated + vision) * dt + linear_bytes(linear, quantization, dt)
    return WeightShard(embedding, lm_head, final_norm, linear, replicated, int(total), vision)


def model_weight_bytes(spec: ModelSpec, *, dtype: str, quantization: Quantization | None) -> int:
    """Bytes of the whole model, unsharded (the sum a single GPU would load)."""
    return weight_shard(spec, tp=1, pp_rank=0, pp=1, dtype=dtype, quantization=quantization).bytes


_HALF_DTYPES = frozenset({"BF16", "F16"})


def checkpoint_scale(
    spec: ModelSpec, *, dtype: str, quantization: Quantization | None, breakdown: ParamBreakdown | None = None
) -> float:
    """Checkpoint bytes (safetensors headers) ÷ the config-derived model bytes, when the headers apply; else 1.0.

    The headers give what the checkpoint really stores; the config-derived split (embedding, layers, head)
    still decides how it is sharded, scaled so the whole matches. They apply when the weights are loaded as
    stored: a quantized checkpoint, or 16-bit tensors loaded in a 16-bit dtype (not online FP8, not float32),
    and when they are within 0.8–1.25× of the config-derived size.
    """
    if not spec.weight_bytes:
        return 1.0
    if quantization != spec.quantization:
        return 1.0  # online quantization changes the stored size
    if spec.quantization is None:
        floats = {k for k in spec.weight_bytes_by_dtype if k.startswith(("F", "BF"))}
        if not floats or not floats <= _HALF_DTYPES or DTYPE_BYTES[dtype] != 2:
            return 1.0
    derived = weight_shard(spec, tp=1, pp_rank=0, pp=1, dtype=dtype, quantization=quantization, breakdown=breakdown)
    scale = spec.weight_bytes / derived.bytes if derived.bytes else 1.0
    # Far off (a partial download, headers of another model): the config is the better guide.
    return scale if 0.8 <= scale <= 1.25 else 1.0


def rotary_cache_bytes(spec: ModelSpec, *, max_model_len: int, dtype: str) -> int:
    """The rotary cos/sin cache every GPU keeps with the weights: positions × head_dim in the activation dtype.

    Positions are the model's window, or the YaRN-extended one when ``max_model_len`` is beyond it (vLLM 0.26 loads
    14.29 GiB of Qwen2.5-7B at 32K and 14.32 GiB with the 128K YaRN override). The vision-language families rotate
    with M-RoPE, whose cache vLLM makes four times the window ("we enlarge max_position_embeddings to 4 times",
    ``MRotaryEmbedding`` in ``rotary_embedding/mrope.py``, 0.26 and 0.33): 0.12 GiB for Qwen2.5-VL-7B's 128,000
    positions, part of the 0.22 GiB by which its real H200 load (15.67 GiB) exceeds the 15.45 GiB checkpoint.
    """
    positions = max(spec.max_position_embeddings, max_model_len)
    if spec.is_multimodal:
        positions *= 4
    return positions * spec.head_dim * DTYPE_BYTES[dtype]
