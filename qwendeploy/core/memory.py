"""Per-GPU memory estimate of a vLLM deployment, following vLLM's own accounting.

This is the one place that holds the KV-cache formula. Per GPU of one replica (``tp × pp`` GPUs):

* **weights** — the shard this GPU loads ("Model loading took X GiB"). Embedding and LM head are
  vocab-parallel (vocab padded to a multiple of 64, split over TP); q/o/MLP split over TP; k/v split over TP
  while TP ≤ KV heads and one KV head per rank beyond that; norms, q/k-norms and MoE routers replicated.
  Layers are split over pipeline stages as vLLM's ``get_pp_indices`` does (even split, the remainder to the
  stages just before the last). The first stage holds the embedding; the last stage holds the final norm and
  the LM head (with tied embeddings and PP > 1 the last stage keeps its own copy). Quantized linear layers
  are counted at their stored size; embedding, LM head and norms stay in the activation dtype.
* **activation** — the torch peak of vLLM's profiling forward pass at ``max_num_batched_tokens`` tokens and
  of its dummy sampler run over ``max_num_seqs`` rows of logits (fp32).
* **non-torch** — memory that appears during profiling outside PyTorch's allocator: cuBLAS workspaces, NCCL
  buffers and custom all-reduce buffers when TP/PP > 1.
* **CUDA graphs** — 0 with ``enforce_eager``. vLLM ≥ 0.28 subtracts its estimate from the KV budget
  (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``); older releases (0.26 on the project's GPU machine) capture
  the graphs after sizing the KV cache, so they come on top of the budget.
* **KV cache** — ``total × gpu_memory_utilization − everything else``, counted in whole blocks of
  ``block_size`` (16) tokens. KV bytes per token per GPU =
  ``2 × layers on the GPU × ceil(KV heads / TP) × head_dim × KV-dtype bytes``.
* **CUDA context** — created before vLLM takes its memory snapshot, so it is outside the budget; it must fit
  in the free memory that ``gpu_memory_utilization`` leaves.

Every term carries an ``Explanation`` (formula, inputs, value) so ``plan --explain`` can print it. The
constants that are not fixed by the model's shape live in one ``Calibration`` value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.models import ModelSpec, Quantization
from qwendeploy.core.params import LayerParams, ParamBreakdown, param_breakdown
from qwendeploy.core.units import MiB

CURRENT_VLLM = "0.33"
"""vLLM release whose accounting is the default (the newest release checked, see docs/memory-model.md)."""

VOCAB_PADDING = 64
"""vLLM pads the vocabulary to a multiple of this before splitting it over TP ranks."""

DEFAULT_BLOCK_SIZE = 16

DTYPE_BYTES: Mapping[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
}

KV_DTYPE_BYTES: Mapping[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
}
"""Bytes per KV element; ``auto`` means the activation dtype. vLLM stores fp8 KV as uint8."""


@dataclass(frozen=True)
class Explanation:
    """One term of the estimate: what it is, how it is computed, from which inputs, and its value."""

    name: str
    formula: str
    inputs: Mapping[str, object]
    value: float
    unit: str = "bytes"


@dataclass(frozen=True)
class Calibration:
    """Constants of the estimate that the model shape does not fix. Calibrate against real vLLM start-up logs.

    Byte constants are per GPU. Defaults are fitted to published vLLM 0.19 start-up logs on H100
    (tests/fixtures/published_logs.yaml; docs/accuracy.md shows the fit) and are meant to be refined.
    """

    cuda_context_bytes: int = 500 * MiB
    """CUDA context + kernel images of the worker; created before vLLM's baseline snapshot (outside the budget)."""
    non_torch_bytes: int = 250 * MiB
    """Non-torch growth during profiling on a single GPU (cuBLAS/cuBLASLt workspaces): 0.24–0.25 GiB logged."""
    nccl_base_bytes: int = 256 * MiB
    """NCCL communicator buffers when TP×PP > 1."""
    nccl_per_peer_bytes: int = 36 * MiB
    """Extra NCCL buffers per other rank of the TP group."""
    custom_all_reduce_bytes: int = 64 * MiB
    """vLLM's custom all-reduce buffers over PCIe peer-to-peer (two GPUs)."""
    nvlink_all_reduce_bytes: int = 1568 * MiB
    """All-reduce buffers over NVLink (custom all-reduce and symmetric-memory workspaces): H100 logs show
    non-torch memory of 2.06–2.13 GiB at TP 2–4 against 0.24 GiB at TP 1."""
    activation_hidden_factor: float = 6.0
    """hidden_size-wide tensors alive per token at the forward peak (residual, normed input, attention out …)."""
    activation_mlp_factor: float = 3.0
    """intermediate-wide tensors per token at the MLP peak (gate_up output = 2, activation output = 1)."""
    activation_scale: float = 1.0
    """Multiplier on the forward-pass peak (torch.compile fusions and allocator rounding)."""
    activation_moe_scale: float = 4.55
    """Multiplier on the fused-MoE per-token width (fitted: Qwen3-30B-A3B peaks at 2.68 GiB with 8192 tokens)."""
    sampler_fp32_copies: float = 3.22
    """fp32 copies of the [max_num_seqs × vocab] logits alive in the dummy sampler run: logs show ~14.9 bytes per
    logit (2 for the bf16 logits + 4 × 3.22) for Qwen2.5-7B, Qwen3-8B and Llama-3.1-8B alike."""
    cuda_graph_base_bytes: int = 560 * MiB
    """CUDA-graph memory independent of depth (capture pool, the largest batch's buffers)."""
    cuda_graph_per_layer_bytes: int = 11776 * 1024
    """CUDA-graph memory per decoder layer on the GPU (11.5 MiB; piecewise graphs are captured per layer)."""
    cuda_graph_tp_exponent: float = 0.25
    """Graph memory shrinks with TP as tp^-exponent (logged: 0.87 / 0.71 / 0.64 GiB at TP 1 / 2 / 4)."""


DEFAULT_CALIBRATION = Calibration()


@dataclass(frozen=True)
class Accounting:
    """How a vLLM release sizes its KV cache."""

    vllm_version: str
    graphs_in_budget: bool
    """True: the CUDA-graph estimate is subtracted from the KV budget (vLLM ≥ 0.28). False: graphs come on top."""
    default_gpu_memory_utilization: float
    """--gpu-memory-utilization default of the release (0.92 in 0.33; 0.9 in older releases)."""


def parse_version(text: str) -> tuple[int, int]:
    """``"0.33"``, ``"0.33.0"``, ``"v0.26.0rc1"`` → (major, minor).

    Raises:
        ValueError: not a version.
    """
    parts = text.strip().lstrip("vV").split(".")
    if len(parts) < 2 or not parts[0].isdigit():
        raise ValueError(f"not a vLLM version: {text!r} (expected e.g. 0.33 or 0.26.0)")
    minor = "".join(ch for ch in parts[1] if ch.isdigit())
    if not minor:
        raise ValueError(f"not a vLLM version: {text!r} (expected e.g. 0.33 or 0.26.0)")
    return int(parts[0]), int(minor)


def accounting_for(vllm_version: str = CURRENT_VLLM) -> Accounting:
    """The KV-budget accounting of a vLLM release.

    0.33 (read in its source) subtracts the CUDA-graph estimate; 0.26 (observed on the project's H100) does
    not. Releases in between are assumed to follow 0.33 from 0.28 on; that boundary is not verified.

    Raises:
        ValueError: ``vllm_version`` is not a version string.
    """
    major, minor = parse_version(vllm_version)
    newer = (major, minor) >= (0, 28)
    return Accounting(
        vllm_version=f"{major}.{minor}",
        graphs_in_budget=newer,
        default_gpu_memory_utilization=0.92 if newer else 0.9,
    )


# ----------------------------------------------------------------------------------------------------------
# Layout: which layers live on which pipeline stage
# ----------------------------------------------------------------------------------------------------------


def pp_layer_counts(num_layers: int, pp: int) -> tuple[int, ...]:
    """Decoder layers per pipeline stage, as vLLM's ``get_pp_indices`` splits them without an override.

    Even split; the remainder goes one layer each to the stages just before the last one, walking towards the
    first (the last stage already holds the LM head). 28 layers over 3 stages → (9, 10, 9); 5 over 3 →
    (2, 2, 1).
    """
    if pp < 1 or pp > num_layers:
        raise ValueError(f"pipeline_parallel_size {pp} must be between 1 and the {num_layers} layers")
    counts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        counts[-i] += 1
    return tuple(counts)


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """KV heads each TP rank stores: kv/TP while TP ≤ kv, else one (replicated)."""
    return max(1, math.ceil(num_kv_heads / tp))


def kv_dtype_bytes(kv_cache_dtype: str, dtype: str) -> int:
    """Bytes per KV element for ``--kv-cache-dtype`` (``auto`` → the activation dtype)."""
    if kv_cache_dtype == "auto":
        return DTYPE_BYTES[dtype]
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise ValueError(f"unsupported kv_cache_dtype {kv_cache_dtype!r}; known: auto, {', '.join(KV_DTYPE_BYTES)}")
    return KV_DTYPE_BYTES[kv_cache_dtype]


def kv_bytes_per_token(spec: ModelSpec, *, tp: int, layers: int, kv_cache_dtype: str, dtype: str) -> Explanation:
    """KV-cache bytes one token occupies on one GPU holding ``layers`` decoder layers."""
    heads = kv_heads_per_rank(spec.num_key_value_heads, tp)
    elem = kv_dtype_bytes(kv_cache_dtype, dtype)
    value = 2 * layers * heads * spec.head_dim * elem
    return Explanation(
        "kv_bytes_per_token",
        "2 (K and V) × layers_on_gpu × ceil(kv_heads / tp) × head_dim × kv_dtype_bytes",
        {
            "layers_on_gpu": layers,
            "kv_heads": spec.num_key_value_heads,
            "tp": tp,
            "kv_heads_per_rank": heads,
            "head_dim": spec.head_dim,
            "kv_dtype_bytes": elem,
        },
        value,
    )


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------


def resolve_dtype(spec: ModelSpec, dtype: str = "auto") -> str:
    """The activation dtype vLLM runs with: ``--dtype``, else the checkpoint's (AWQ/GPTQ run in float16)."""
    if dtype != "auto":
        return {"half": "float16", "float": "float32"}.get(dtype, dtype)
    if spec.quantization is not None and spec.quantization.method in ("awq", "gptq"):
        return "float16"
    return spec.torch_dtype


def effective_quantization(spec: ModelSpec, quantization: str | None) -> Quantization | None:
    """The checkpoint's quantization, or online FP8 when ``--quantization fp8`` is asked of a 16-bit model."""
    if spec.quantization is not None:
        return spec.quantization
    if quantization in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
        return Quantization(method="fp8", bits=8)
    return None


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
    padded_vocab = math.ceil(spec.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
    vocab_rows = math.ceil(padded_vocab / tp)
    first, last = pp_rank == 0, pp_rank == pp - 1
    embedding = vocab_rows * spec.hidden_size if first else 0
    has_head = bd.lm_head > 0 or (spec.tie_word_embeddings and pp > 1)
    lm_head = vocab_rows * spec.hidden_size if (last and has_head) else 0
    final_norm = bd.final_norm if last else 0
    linear = replicated = 0.0
    for layer in mine:
        lin, rep = _layer_shard(layer, spec, tp, ep)
        linear += lin
        replicated += rep
    dt = DTYPE_BYTES[dtype]
    total = (embedding + lm_head + final_norm + replicated) * dt + linear_bytes(linear, quantization, dt)
    return WeightShard(embedding, lm_head, final_norm, linear, replicated, int(total))


def model_weight_bytes(spec: ModelSpec, *, dtype: str, quantization: Quantization | None) -> int:
    """Bytes of the whole model, unsharded (the sum a single GPU would load)."""
    return weight_shard(spec, tp=1, pp_rank=0, pp=1, dtype=dtype, quantization=quantization).bytes


# ----------------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    """The vLLM engine arguments that change memory."""

    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    gpu_memory_utilization: float = 0.92
    kv_cache_dtype: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    custom_all_reduce: bool = True
    """Whether vLLM's custom all-reduce is in use (needs P2P between the TP ranks)."""
    nvlink: bool = False
    """Whether the TP ranks talk over NVLink (larger all-reduce workspaces)."""
    expert_parallel: bool = False


@dataclass(frozen=True)
class GpuMemory:
    """One GPU of a replica: where its memory goes."""

    gpu: Gpu
    pp_rank: int
    layers: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    cuda_context_bytes: int
    kv_budget_bytes: int
    """What the KV cache may take on this GPU before rounding to blocks (negative: the rest does not fit)."""
    kv_bytes_per_token: int
    num_blocks: int
    """Blocks this GPU could hold on its own."""
    kv_cache_bytes: int
    """Bytes vLLM allocates for the replica's common block count."""
    capacity_bytes: int
    """gpu_memory_utilization × total."""
    explanations: tuple[Explanation, ...]

    @property
    def overhead_bytes(self) -> int:
        """Non-torch memory, CUDA graphs and the CUDA context."""
        return self.non_torch_bytes + self.cuda_graph_bytes + self.cuda_context_bytes

    @property
    def total_bytes(self) -> int:
        """Everything the vLLM worker holds on this GPU once serving."""
        return self.weights_bytes + self.activation_bytes + self.overhead_bytes + self.kv_cache_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """One replica (``tp × pp`` GPUs): per-GPU breakdown and the KV-cache figures vLLM prints."""

    per_gpu: tuple[GpuMemory, ...]
    settings: EngineSettings
    accounting: Accounting
    tp: int
    pp: int
    dtype: str
    num_blocks: int
    """Blocks of the replica: the minimum over its GPUs (vLLM allocates the same count everywhere)."""
    kv_cache_tokens: int
    """vLLM: "GPU KV cache size: N tokens" = num_blocks × block_size."""
    max_concurrency: float
    """vLLM: "Maximum concurrency for L tokens per request: X×" = kv_cache_tokens / max_model_len."""
    max_model_len_fit: int
    """Longest max_model_len one request can have (``--max-model-len auto``): (num_blocks − 1) × block_size."""
    explanations: tuple[Explanation, ...]

    @property
    def fits_one_request(self) -> bool:
        """vLLM starts only if one request of max_model_len fits ("To serve at least one request …")."""
        return self.max_model_len_fit >= self.settings.max_model_len

    def max_len_for(self, concurrency: int) -> int:
        """Longest max_model_len with room for ``concurrency`` full-length requests."""
        usable = max(0, self.num_blocks - 1)
        return (usable // max(1, concurrency)) * self.settings.block_size

    def fits(self, concurrency: int = 1) -> bool:
        return self.max_len_for(concurrency) >= self.settings.max_model_len


def activation_bytes(
    spec: ModelSpec, *, tp: int, layers: int, settings: EngineSettings, dtype: str, cal: Calibration
) -> Explanation:
    """Torch peak of vLLM's profiling run: a forward pass over max_num_batched_tokens, then the dummy sampler."""
    dt = DTYPE_BYTES[dtype]
    tokens = settings.max_num_batched_tokens
    h = spec.hidden_size
    q_local = spec.num_attention_heads * spec.head_dim / tp
    kv_local = kv_heads_per_rank(spec.num_key_value_heads, tp) * spec.head_dim
    if spec.moe is not None:
        # Fused MoE keeps per-(token, chosen expert) intermediate caches: gate_up (2×) and activation (1×) of the
        # expert width, plus the un-reduced expert outputs (hidden-wide per chosen expert).
        k = spec.moe.num_experts_per_tok
        per_expert = spec.moe.moe_intermediate_size / tp * cal.activation_mlp_factor + h
        mlp_width = k * per_expert * cal.activation_moe_scale
    else:
        mlp_width = spec.intermediate_size / tp * cal.activation_mlp_factor
    per_token = cal.activation_hidden_factor * h + mlp_width + q_local + 2 * kv_local
    forward = tokens * per_token * dt * cal.activation_scale if layers > 0 else 0.0
    rows = min(settings.max_num_seqs, tokens)
    sampler = rows * spec.vocab_size * (dt + 4 * cal.sampler_fp32_copies)
    value = max(forward, tokens * h * dt + sampler)
    return Explanation(
        "activation",
        "max(forward, sampler) with forward = max_num_batched_tokens × (a_h × hidden + mlp_width + q/tp + 2 × kv/tp)"
        " × dtype_bytes × scale; sampler = T × hidden × dtype_bytes + min(max_num_seqs, T) × vocab × "
        "(dtype_bytes + 4 × fp32_copies)",
        {
            "max_num_batched_tokens": tokens,
            "a_h": cal.activation_hidden_factor,
            "hidden": h,
            "mlp_width": round(mlp_width, 1),
            "dtype_bytes": dt,
            "scale": cal.activation_scale,
            "forward_bytes": int(forward),
            "max_num_seqs": settings.max_num_seqs,
            "vocab": spec.vocab_size,
            "fp32_copies": cal.sampler_fp32_copies,
            "sampler_bytes": int(sampler),
        },
        int(value),
    )


def non_torch_bytes(
    *, tp: int, pp: int, custom_all_reduce: bool, cal: Calibration, nvlink: bool = False
) -> Explanation:
    """Non-torch growth during profiling: cuBLAS workspaces, NCCL and custom all-reduce buffers."""
    nccl = cal.nccl_base_bytes + cal.nccl_per_peer_bytes * (tp - 1) if tp * pp > 1 else 0
    car = 0
    if tp > 1 and nvlink:
        car = cal.nvlink_all_reduce_bytes
    elif tp > 1 and custom_all_reduce:
        car = cal.custom_all_reduce_bytes
    return Explanation(
        "non_torch",
        "base + (tp×pp > 1: nccl_base + nccl_per_peer × (tp − 1)) + (tp > 1: NVLink all-reduce workspaces, or "
        "custom all-reduce buffers over PCIe P2P)",
        {
            "base": cal.non_torch_bytes,
            "nccl_base": cal.nccl_base_bytes,
            "nccl_per_peer": cal.nccl_per_peer_bytes,
            "tp": tp,
            "pp": pp,
            "all_reduce_buffers": car,
        },
        cal.non_torch_bytes + nccl + car,
    )


def cuda_graph_bytes(*, layers: int, enforce_eager: bool, cal: Calibration, tp: int = 1) -> Explanation:
    shrink = tp ** (-cal.cuda_graph_tp_exponent)
    value = 0 if enforce_eager else int((cal.cuda_graph_base_bytes + cal.cuda_graph_per_layer_bytes * layers) * shrink)
    return Explanation(
        "cuda_graphs",
        "0 with --enforce-eager, else (graph_base + graph_per_layer × layers_on_gpu) × tp^-exponent",
        {
            "tp": tp,
            "exponent": cal.cuda_graph_tp_exponent,
            "enforce_eager": enforce_eager,
            "graph_base": cal.cuda_graph_base_bytes,
            "graph_per_layer": cal.cuda_graph_per_layer_bytes,
            "layers_on_gpu": layers,
        },
        value,
    )


def estimate(
    spec: ModelSpec,
    gpus: tuple[Gpu, ...],
    *,
    tp: int,
    pp: int,
    settings: EngineSettings,
    accounting: Accounting | None = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
    ep: int = 1,
) -> MemoryEstimate:
    """Estimate one replica of ``spec`` on ``gpus`` (``tp × pp`` of them, stage-major: stage 0's TP ranks first).

    Args:
        spec: the model.
        gpus: the replica's GPUs; their ``total_bytes`` is what ``gpu_memory_utilization`` multiplies.
        tp: tensor-parallel size. Validity (heads divisible …) is the planner's job.
        pp: pipeline-parallel size.
        settings: engine arguments.
        accounting: the vLLM release's KV-budget rules (default: the current release).
        calibration: constants of the activation/overhead terms.
        ep: expert-parallel spread of routed experts beyond TP (1 = experts split over TP only).

    Returns:
        The per-GPU breakdown and the replica's KV-cache figures.
    """
    if len(gpus) != tp * pp:
        raise ValueError(f"a replica with tp={tp} pp={pp} needs {tp * pp} GPUs, got {len(gpus)}")
    acc = accounting or accounting_for(CURRENT_VLLM)
    dtype = resolve_dtype(spec, settings.dtype)
    quant = effective_quantization(spec, settings.quantization)
    bd = param_breakdown(spec)
    counts = pp_layer_counts(spec.num_hidden_layers, pp)
    cal = calibration
    rows: list[tuple[Gpu, int, int, WeightShard, Explanation, Explanation, Explanation, Explanation, int, int]] = []
    for i, gpu in enumerate(gpus):
        stage = i // tp
        layers = counts[stage]
        shard = weight_shard(spec, tp=tp, pp_rank=stage, pp=pp, dtype=dtype, quantization=quant, ep=ep, breakdown=bd)
        act = activation_bytes(spec, tp=tp, layers=layers, settings=settings, dtype=dtype, cal=cal)
        nt = non_torch_bytes(
            tp=tp, pp=pp, custom_all_reduce=settings.custom_all_reduce, cal=cal, nvlink=settings.nvlink
        )
        cg = cuda_graph_bytes(layers=layers, enforce_eager=settings.enforce_eager, cal=cal, tp=tp)
        kvt = kv_bytes_per_token(spec, tp=tp, layers=layers, kv_cache_dtype=settings.kv_cache_dtype, dtype=dtype)
        capacity = int(gpu.total_bytes * settings.gpu_memory_utilization)
        graphs_in = int(cg.value) if acc.graphs_in_budget else 0
        budget = capacity - shard.bytes - int(act.value) - int(nt.value) - graphs_in
        per_block = int(kvt.value) * settings.block_size
        blocks = max(0, budget) // per_block if per_block else 0
        rows.append((gpu, stage, layers, shard, act, nt, cg, kvt, budget, blocks))

    num_blocks = min(r[9] for r in rows)
    per_gpu: list[GpuMemory] = []
    for gpu, stage, layers, shard, act, nt, cg, kvt, budget, blocks in rows:
        capacity = int(gpu.total_bytes * settings.gpu_memory_utilization)
        per_block = int(kvt.value) * settings.block_size
        weights_exp = Explanation(
            "weights",
            "embedding (first stage) + lm_head (last stage) rows × hidden × dtype_bytes, vocab padded to 64 and "
            "split over tp; + replicated norms/routers × dtype_bytes; + sharded linear elements at their stored "
            "size (q/o/MLP ÷ tp, k/v × ceil(kv/tp)/kv, experts ÷ tp×ep)",
            {
                "pp_rank": stage,
                "layers_on_gpu": layers,
                "tp": tp,
                "embedding_elements": int(shard.embedding),
                "lm_head_elements": int(shard.lm_head),
                "linear_elements": int(shard.layers_linear),
                "replicated_elements": int(shard.layers_replicated + shard.final_norm),
                "dtype": dtype,
                "quantization": quant.method if quant else None,
            },
            shard.bytes,
        )
        budget_exp = Explanation(
            "kv_budget",
            "gpu_memory_utilization × total − weights − activation − non_torch"
            + (" − cuda_graphs (vLLM ≥ 0.28)" if acc.graphs_in_budget else " (CUDA graphs come on top in vLLM 0.26)"),
            {
                "gpu_memory_utilization": settings.gpu_memory_utilization,
                "total": gpu.total_bytes,
                "capacity": capacity,
                "weights": shard.bytes,
                "activation": int(act.value),
                "non_torch": int(nt.value),
                "cuda_graphs": int(cg.value) if acc.graphs_in_budget else 0,
            },
            budget,
        )
        blocks_exp = Explanation(
            "num_blocks",
            "floor(kv_budget / (block_size × kv_bytes_per_token)); the replica uses the minimum over its GPUs",
            {"kv_budget": budget, "block_size": settings.block_size, "kv_bytes_per_token": int(kvt.value)},
            blocks,
            unit="blocks",
        )
        context_exp = Explanation(
            "cuda_context",
            "CUDA context of the worker, created before vLLM's memory snapshot: outside the budget, must fit in "
            "(1 − gpu_memory_utilization) × total of free memory",
            {"cuda_context": cal.cuda_context_bytes},
            cal.cuda_context_bytes,
        )
        per_gpu.append(
            GpuMemory(
                gpu=gpu,
                pp_rank=stage,
                layers=layers,
                weights_bytes=shard.bytes,
                activation_bytes=int(act.value),
                non_torch_bytes=int(nt.value),
                cuda_graph_bytes=int(cg.value),
                cuda_context_bytes=cal.cuda_context_bytes,
                kv_budget_bytes=budget,
                kv_bytes_per_token=int(kvt.value),
                num_blocks=blocks,
                kv_cache_bytes=num_blocks * per_block,
                capacity_bytes=capacity,
                explanations=(weights_exp, act, nt, cg, context_exp, kvt, budget_exp, blocks_exp),
            )
        )
    tokens = num_blocks * settings.block_size
    conc = tokens / settings.max_model_len
    fit_len = max(0, num_blocks - 1) * settings.block_size
    summary = (
        Explanation(
            "kv_cache_tokens",
            "num_blocks × block_size (vLLM: GPU KV cache size: N tokens)",
            {"num_blocks": num_blocks, "block_size": settings.block_size},
            tokens,
            unit="tokens",
        ),
        Explanation(
            "max_concurrency",
            "kv_cache_tokens / max_model_len (vLLM: Maximum concurrency for L tokens per request: X×)",
            {"kv_cache_tokens": tokens, "max_model_len": settings.max_model_len},
            round(conc, 2),
            unit="requests",
        ),
        Explanation(
            "max_model_len_fit",
            "(num_blocks − 1) × block_size (one block is vLLM's reserved null block; --max-model-len auto)",
            {"num_blocks": num_blocks, "block_size": settings.block_size},
            fit_len,
            unit="tokens",
        ),
    )
    return MemoryEstimate(
        per_gpu=tuple(per_gpu),
        settings=settings,
        accounting=acc,
        tp=tp,
        pp=pp,
        dtype=dtype,
        num_blocks=num_blocks,
        kv_cache_tokens=tokens,
        max_concurrency=conc,
        max_model_len_fit=fit_len,
        explanations=summary,
    )


@dataclass(frozen=True)
class KvPlan:
    """vLLM's block arithmetic for a given KV budget (for tests against the reference table)."""

    num_blocks: int
    tokens: int
    max_concurrency: float


def kv_plan(budget_bytes: int, bytes_per_token: int, max_model_len: int, block_size: int = 16) -> KvPlan:
    """Blocks, tokens and concurrency for ``budget_bytes`` of KV memory on one GPU."""
    blocks = budget_bytes // (bytes_per_token * block_size)
    return KvPlan(blocks, blocks * block_size, blocks * block_size / max_model_len)
