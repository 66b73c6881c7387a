"""Per-GPU memory estimate of a vLLM deployment, following vLLM's own accounting.

This is the one place that holds the KV-cache formula. Per GPU of one replica (``tp × pp`` GPUs):

* **weights** — the shard this GPU loads ("Model loading took X GiB"). Embedding and LM head are
  vocab-parallel (vocab padded to a multiple of 64, split over TP); q/o/MLP split over TP; k/v split over TP
  while TP ≤ KV heads and one KV head per rank beyond that; norms, q/k-norms and MoE routers replicated.
  Layers are split over pipeline stages as vLLM's ``get_pp_indices`` does (even split, the remainder to the
  stages just before the last). The first stage holds the embedding; the last stage holds the final norm and
  the LM head (with tied embeddings and PP > 1 the last stage keeps its own copy). Quantized linear layers
  are counted at their stored size; embedding, LM head and norms stay in the activation dtype.
* **activation** — the torch peak of vLLM's profiling run: a forward pass over ``max_num_batched_tokens`` tokens,
  then a dummy sampler run over ``max_num_seqs`` rows of logits. Which model runner profiles it matters (see
  ``Accounting``): the V1 runner's sampler keeps fp32 copies of the logits (≈ 2.2 GiB for Qwen at 1024 rows,
  published vLLM 0.19 logs); the V2 runner's (dense models from vLLM 0.25, all from 0.29) is light, and its peak
  is a vocab × hidden-sized buffer plus the hidden states (measured on vLLM 0.26); from 0.33 the V2 profile also
  runs the fp32 sampler warm-up that 0.26 ran only after sizing the KV cache.
* **non-torch** — memory that appears during profiling outside PyTorch's allocator: cuBLAS workspaces, NCCL
  buffers and custom all-reduce buffers when TP/PP > 1.
* **CUDA graphs** — 0 with ``enforce_eager``. Subtracted from the KV budget when the release's profiler estimates
  them (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``, on by default from 0.20) *and* the model runner implements
  the estimate (V1 always; V2 from 0.29). Otherwise (0.19 and older; dense models on 0.25–0.28, e.g. the 0.26
  runs on the project's H200) they are captured after the KV cache is sized and come on top of the budget.
* **KV cache** — ``total × gpu_memory_utilization − everything else``, counted in whole blocks of
  ``block_size`` (16) tokens. KV bytes per token per GPU =
  ``2 × layers on the GPU × ceil(KV heads / TP) × head_dim × KV-dtype bytes``.
* **CUDA context** — created before vLLM takes its memory snapshot, so it is outside the budget; it must fit
  in the free memory that ``gpu_memory_utilization`` leaves.
* **working memory** — what PyTorch's allocator keeps reserved while serving: the larger of a forward pass and
  the sampler warm-up (fp32 logits pipeline over ``max_num_seqs`` rows), run after the KV cache exists.
* **footprint** — what nvidia-smi shows for the process while serving: CUDA context + weights + non-torch + KV
  cache + CUDA graphs + working memory. It can exceed ``gpu_memory_utilization × total``.

Every term carries an ``Explanation`` (formula, inputs, value) so ``plan --explain`` can print it. The
constants that are not fixed by the model's shape live in one ``Calibration`` value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from qwendeploy.core import multimodal
from qwendeploy.core.hardware import Gpu
from qwendeploy.core.hybrid_attention import HybridLayout, hybrid_layout
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
    """Constants of the estimate that the model shape does not fix, each with where it comes from.

    Byte constants are per GPU. Two sources: published vLLM 0.17–0.19 start-up logs on H100 (V1 model runner;
    tests/fixtures/published_logs.yaml) and vLLM 0.26 start-ups measured on the project's H200 (V2 model runner;
    tests/fixtures/gpu-runs/measured.yaml). docs/accuracy.md shows both fits.
    """

    cuda_context_bytes: int = 520 * MiB
    """CUDA context + kernel images of the worker; created before vLLM's baseline snapshot (outside the budget).
    Measured: "Free memory on device (139.29/139.8 GiB) on startup" on an empty H200 (0.51 GiB)."""
    non_torch_bytes: int = 250 * MiB
    """V1 runner: non-torch growth during profiling on one GPU (cuBLAS workspaces): 0.24–0.25 GiB in the 0.19 logs."""
    early_non_torch_bytes: int = 138 * MiB
    """V1 runner up to 0.17 (``Accounting.small_non_torch_base``): 0.13 GiB in the llm-d version sweep on 0.15 and 0.17
    (Qwen3-14B, H100) and 0.13–0.14 GiB in H100 runs of Qwen3-0.6B, Qwen3-32B and Llama-3.1-8B on a pre-0.17 image;
    the 0.10.2 8×L40S log shows 0.21 GiB in all at TP 8."""
    v2_non_torch_bytes: int = 225 * MiB
    """V2 runner: 0.22 GiB on every vLLM 0.26 run on the H200 (0.5B to 14B)."""
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
    """V1 runner: multiplier on the forward-pass peak (torch.compile fusions and allocator rounding)."""
    v2_forward_scale: float = 0.85
    """V2 runner: multiplier on the forward-pass peak. Measured: Qwen2.5-7B peaks at 2.15 GiB with 16384 tokens."""
    activation_moe_scale: float = 4.55
    """Multiplier on the fused-MoE per-token width (fitted: Qwen3-30B-A3B peaks at 2.68 GiB with 8192 tokens)."""
    sampler_fp32_copies: float = 3.22
    """V1 runner: fp32 copies of the [max_num_seqs × vocab] logits alive in the dummy sampler run: logs show ~14.9
    bytes per logit (2 for the bf16 logits + 4 × 3.22) for Qwen2.5-7B, Qwen3-8B and Llama-3.1-8B alike."""
    sort_sampler_fp32_copies: float = 9.1
    """V1 runner before 0.17: fp32-equivalent copies of the logits at the dummy sampler's peak when top-k/top-p sort
    the whole vocabulary (``apply_top_k_top_p``: sorted fp32 values + int64 indices + softmax/cumsum + the scattered
    result). Fitted to the llm-d version sweep: Qwen3-14B at 1024 sequences peaks at 5.64 GiB on 0.15 and 0.16
    (2 + 4 × 9.1 ≈ 38.4 B per logit) against 2.23 GiB from 0.17, same settings."""
    v2_vocab_buffer_factor: float = 1.0
    """V2 runner: the profile peak holds a buffer of vocab/tp × hidden × dtype bytes (the LM head's shape) next to the
    hidden states. Measured on 0.26: 7B 1.04 GiB at 2048 tokens / 64 sequences (the buffer is 1.02 GiB) and
    1.06–1.13 at 8192; 0.5B 0.35, Qwen3-8B 1.29, 14B 1.61; an AWQ 7B log on an RTX 4080 shows 1.04 GiB too."""
    v2_sampler_bytes_per_logit: float = 0.5
    """V2 runner: the light default sampler pass of the profile (0.07 GiB at 1024 rows of the Qwen vocabulary)."""
    warmup_base_bytes: int = 128 * MiB
    """Sampler warm-up (fp32 logits pipeline: penalties, top-k/top-p, logprobs) fixed part."""
    warmup_bytes_per_logit: float = 22.7
    """Sampler warm-up bytes per logit of ``max_num_seqs × vocab``. Measured on 0.26 as the serving footprint above
    weights + KV + graphs + context: 3.2–3.5 GiB at 1024 sequences (every model), 0.33 GiB at 64."""
    cuda_graph_base_bytes: int = 560 * MiB
    """V1 runner: CUDA-graph memory independent of depth (capture pool, the largest batch's buffers)."""
    cuda_graph_per_layer_bytes: int = 11776 * 1024
    """V1 runner: CUDA-graph memory per decoder layer on the GPU (11.5 MiB; fitted to the 0.19 logs)."""
    v2_graph_base_bytes: int = 312 * MiB
    """V2 runner: CUDA-graph memory at 512 captured sizes, fixed part (0.26: 0.5B 0.39, 7B 0.89, Qwen3-8B 1.00,
    14B 0.94 GiB; least squares on hidden size)."""
    v2_graph_per_hidden_bytes: int = 157 * 1024
    """V2 runner: CUDA-graph memory per unit of hidden size (0.146 MiB)."""
    cuda_graph_tp_exponent: float = 0.25
    """Graph memory shrinks with TP as tp^-exponent (logged: 0.87 / 0.71 / 0.64 GiB at TP 1 / 2 / 4)."""


DEFAULT_CALIBRATION = Calibration()


V2_ARCHITECTURES_0_24 = frozenset(
    {
        "Qwen3ForCausalLM",
        "DeepseekV2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "GraniteMoeForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
    }
)
"""Architectures that default to the V2 model runner in vLLM 0.24 (vllm/config/vllm.py)."""

V2_MOE_ARCHITECTURES = frozenset({"Qwen2MoeForCausalLM", "DeepseekV2ForCausalLM", "GraniteMoeForCausalLM"})
"""MoE architectures on the V2 runner in 0.25–0.28 (dense models are all on it)."""


@dataclass(frozen=True)
class Accounting:
    """How a vLLM release profiles memory and sizes its KV cache (read in the sources of 0.8–0.33)."""

    vllm_version: str
    default_gpu_memory_utilization: float
    """--gpu-memory-utilization default: 0.92 from 0.20 (0.26 and 0.33 alike), 0.9 before."""
    graph_estimate_flag: bool
    """``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` default: off in 0.19, on from 0.20."""
    v2_runner: str
    """Which models default to the V2 model runner: ``none`` (≤ 0.21), ``qwen3`` (0.22–0.23: Qwen3 dense),
    ``listed`` (0.24), ``dense`` (0.25–0.28: every dense model and a few MoE), ``all`` (≥ 0.29)."""
    v2_estimates_graphs: bool
    """The V2 runner's CUDA-graph estimate: returns 0 up to 0.28, profiles the graphs from 0.29."""
    sampler_warmup_profiled: bool
    """0.33: the V2 profile runs the fp32 sampler warm-up, so the budget pays for it. Before: it runs after the KV
    cache is sized and sits on top of the budget."""
    v2_profiles_encoder: bool = True
    """The V2 runner's profile runs the vision encoder on dummy images: not in 0.26 (``profile_run`` is a decoder
    dummy run and the sampler), yes in 0.33 (``profile_encoder_cache``); the V1 runner always does. Where it does not,
    the encoder's peak comes on top of the budget at the first image request."""
    hybrid_prefix_caching: bool = True
    """Prefix caching on by default for hybrid (Qwen3-Next) models, then ``mamba_cache_mode`` ``align`` (Qwen3-Next does
    not declare SupportsMambaPrefixCaching): two state blocks per request per linear-attention group. Off by default
    through 0.26: its ``EngineArgs`` sets ``default_prefix_caching = is_prefix_caching_supported and not is_hybrid``
    (read in the 0.26.0 wheel; the real H200 start-up of Qwen3-Next logs ``enable_prefix_caching=False`` and a maximum
    concurrency of 727.69× = 46,572 blocks / 64, i.e. 61 attention blocks + 1 state block for each of 3 linear
    groups), so ``mamba_cache_mode`` is ``none`` and one state block is held. On in 0.33 (``default_prefix_caching =
    is_prefix_caching_supported``); 0.27–0.32 not read, taken as 0.33."""
    hybrid_tokens_from_concurrency: bool = True
    """How "GPU KV cache size" is logged for a hybrid: concurrency × max_model_len (read in 0.26 and 0.33; a 0.24 log
    shows 567,978 tokens = 4.33 × 131,072) or num_blocks // groups × block (0.19, vllm-project/vllm#40691; 0.20–0.23
    not seen, assumed old)."""
    sampler_sorts_vocab: bool = False
    """The V1 dummy sampler's top-k/top-p sorts the whole vocabulary (PyTorch ``apply_top_k_top_p``: ``logits.sort``,
    softmax, cumsum, scatter) — 0.8 to 0.16, where FlashInfer's sampler is off unless installed (and, in 0.8, only
    below FlashInfer 0.2.3). From 0.17 ``v1/sample/ops/topk_topp_sampler.py`` uses a Triton top-k/top-p kernel for
    8 rows or more (``apply_top_k_top_p_triton``), which does not sort: the profile's sampler peak drops from ~38 to
    ~15 bytes per logit (read in the 0.8.5, 0.10.2, 0.11.2, 0.13.0, 0.15.1, 0.16.0 and 0.17.0 wheels; the llm-d
    version sweep logs 5.64 GiB for Qwen3-14B on 0.15/0.16 and 2.23 GiB on 0.17/0.18)."""
    all_reduce_buffers: str = "fusion"
    """Which all-reduce memory at TP > 1 the profile charges to the budget (NCCL's lazy growth is charged in every
    release). ``custom`` (0.8–0.10): the worker's baseline snapshot is taken before
    ``init_worker_distributed_environment`` (``v1/worker/gpu_worker.py`` ``init_device`` in 0.9.2 and 0.10.2; 0.8.5
    charges everything not torch's), so vLLM's
    custom all-reduce buffers (``custom_all_reduce_bytes``, NVLink or PCIe P2P alike) are charged. ``none``
    (0.11–0.16): the snapshot follows the distributed init, so those buffers sit in the baseline, uncharged — a
    published TP 2 log of about 0.14 shows 0.54 GiB of non-torch memory (base + NCCL). ``fusion`` (0.17 on, read in
    0.17.0, 0.18.0 and 0.19.0): ``config/vllm.py`` turns FlashInfer's all-reduce + RMSNorm fusion on by default at
    TP > 1 on Hopper/Blackwell (``enable_allreduce_rms_fusion``; absent up to 0.16.0), whose workspace is built while
    the profile compiles the model: the 1.5 GiB ``nvlink_all_reduce_bytes`` of the 0.19 H100 logs (2.06 GiB at TP 2)."""
    small_non_torch_base: bool = False
    """The single-GPU non-torch growth of the profile is ~0.13 GiB up to 0.17 (``Calibration.early_non_torch_bytes``)
    and ~0.25 GiB from 0.18 (the llm-d sweep logs 0.13 GiB on 0.15 and 0.17, 0.25 on 0.18, 0.24 on 0.19, same model
    and card). Seen in logs only; the cause was not traced in the source."""
    context_in_budget: bool = False
    """0.8: ``determine_available_memory`` charges ``total − free − torch allocated`` after the profile as non-torch
    memory, i.e. the CUDA context (and anything else on the GPU) comes out of the budget (``v1/worker/gpu_worker.py``
    in the 0.8.5 wheel). From 0.9 ``memory_profiling`` charges only the growth since the worker's snapshot, taken
    after the context exists."""

    def runner(self, spec: ModelSpec) -> str:
        """``"v1"`` or ``"v2"``: the model runner this release uses for ``spec`` by default."""
        arch = spec.architecture
        if self.v2_runner == "all":
            return "v2"
        if spec.is_pooling or spec.is_hybrid:
            # 0.26 (config/vllm.py _is_default_v2_model_runner_model): V2 by default only for the generate runner
            # and never for hybrid models; assumed for the earlier V2 releases too.
            return "v1"
        if self.v2_runner == "dense":
            return "v2" if spec.moe is None or arch in V2_MOE_ARCHITECTURES else "v1"
        if self.v2_runner == "listed":
            return "v2" if arch in V2_ARCHITECTURES_0_24 else "v1"
        if self.v2_runner == "qwen3":
            return "v2" if arch == "Qwen3ForCausalLM" and spec.quantization is None else "v1"
        return "v1"

    def graphs_subtracted(self, spec: ModelSpec) -> bool:
        """Whether the CUDA-graph estimate comes out of the KV budget for ``spec``."""
        if not self.graph_estimate_flag:
            return False
        return self.runner(spec) == "v1" or self.v2_estimates_graphs

    @property
    def graphs_in_budget(self) -> bool:
        """Whether graphs come out of the KV budget for a dense Qwen2 model (the common case)."""
        return self.graph_estimate_flag and (self.v2_runner in ("none", "qwen3", "listed") or self.v2_estimates_graphs)


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
    """The memory accounting of a vLLM release.

    Read in the released sources of 0.19, 0.20, 0.22, 0.24, 0.25 and 0.26–0.33 (``config/vllm.py``, ``envs.py``,
    ``v1/worker/gpu/model_runner.py``); 0.21 and 0.23 are assumed to follow 0.20 and 0.22. 0.8.5, 0.9.2, 0.10.2,
    0.11.2, 0.12.0, 0.13.0, 0.14.1, 0.15.1, 0.16.0, 0.17.0 and 0.18.0 read in their wheels (``v1/worker/gpu_worker.py``,
    ``gpu_model_runner.py``, ``v1/sample/ops/topk_topp_sampler.py``): each line takes the rules of the release read.
    Measured on a GPU: 0.26 (H200). Releases after 0.33 follow 0.33.

    Raises:
        ValueError: ``vllm_version`` is not a version string.
    """
    major, minor = parse_version(vllm_version)
    v = (major, minor)
    if v < (0, 22):
        runner = "none"
    elif v < (0, 24):
        runner = "qwen3"
    elif v < (0, 25):
        runner = "listed"
    elif v < (0, 29):
        runner = "dense"
    else:
        runner = "all"
    return Accounting(
        vllm_version=f"{major}.{minor}",
        default_gpu_memory_utilization=0.92 if v >= (0, 20) else 0.9,
        graph_estimate_flag=v >= (0, 20),
        v2_runner=runner,
        v2_estimates_graphs=v >= (0, 29),
        sampler_warmup_profiled=v >= (0, 33),
        v2_profiles_encoder=v >= (0, 33),
        hybrid_prefix_caching=v >= (0, 27),
        hybrid_tokens_from_concurrency=v >= (0, 24),
        sampler_sorts_vocab=v < (0, 17),
        all_reduce_buffers="custom" if v < (0, 11) else "none" if v < (0, 17) else "fusion",
        context_in_budget=v < (0, 9),
        small_non_torch_base=v < (0, 18),
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
    padded_vocab = math.ceil(spec.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
    vocab_rows = math.ceil(padded_vocab / tp)
    first, last = pp_rank == 0, pp_rank == pp - 1
    embedding = vocab_rows * spec.hidden_size if first else 0
    # A pooling model (embedding/reranker) has no LM head: vLLM's pooling adapters skip it.
    has_head = (bd.lm_head > 0 or (spec.tie_word_embeddings and pp > 1)) and not spec.is_pooling
    lm_head = vocab_rows * spec.hidden_size if (last and has_head) else 0
    final_norm = bd.final_norm if last else 0
    linear = replicated = 0.0
    for layer in mine:
        lin, rep = _layer_shard(layer, spec, tp, ep)
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
    enable_prefix_caching: bool = True
    """vLLM's default; hybrid models keep two state blocks per request with it (core/hybrid_attention.py)."""


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
    graphs_in_budget: bool = True
    """True: the CUDA graphs were subtracted from the KV budget. False: they come on top of it."""
    working_bytes: int = 0
    """Allocator memory kept while serving (forward pass / sampler warm-up), in place of the profiled activation."""

    @property
    def overhead_bytes(self) -> int:
        """What vLLM's budget holds besides weights, activation and KV cache: non-torch memory (NCCL/custom
        all-reduce buffers) and, where the release subtracts them, the CUDA graphs. The CUDA context and graphs
        captured after the KV cache was sized are outside the budget (``outside_budget_bytes``)."""
        graphs = self.cuda_graph_bytes if self.graphs_in_budget else 0
        return self.non_torch_bytes + graphs

    @property
    def in_budget_bytes(self) -> int:
        """What vLLM counts against ``gpu_memory_utilization × total``: weights, activation, non-torch, KV cache and,
        where the release subtracts them, the CUDA graphs."""
        return self.weights_bytes + self.activation_bytes + self.overhead_bytes + self.kv_cache_bytes

    @property
    def outside_budget_bytes(self) -> int:
        """What the process holds beyond the budget while serving: the CUDA context, CUDA graphs captured after the
        KV cache was sized, and working memory beyond the profiled activation (negative when it is less)."""
        return self.footprint_bytes - self.in_budget_bytes

    @property
    def footprint_bytes(self) -> int:
        """What nvidia-smi shows for the vLLM worker on this GPU while serving."""
        return (
            self.cuda_context_bytes
            + self.weights_bytes
            + self.non_torch_bytes
            + self.kv_cache_bytes
            + self.cuda_graph_bytes
            + self.working_bytes
        )

    @property
    def total_bytes(self) -> int:
        """weights + activation + overhead + KV cache: the sum inside vLLM's budget (= ``in_budget_bytes``, never
        more than ``capacity_bytes`` when the plan fits). The whole process is ``footprint_bytes``."""
        return self.in_budget_bytes


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
    runner: str = "v1"
    """The vLLM model runner the estimate follows (``v1`` or ``v2``)."""
    graphs_in_budget: bool = True
    hybrid: HybridLayout | None = None
    """Hybrid models (Qwen3-Next): the shared page pool of the GPU with the fewest blocks (core/hybrid_attention.py)."""

    @property
    def fits_one_request(self) -> bool:
        """vLLM starts only if one request of max_model_len fits ("To serve at least one request …")."""
        return self.max_model_len_fit >= self.settings.max_model_len

    def max_len_for(self, concurrency: int) -> int:
        """Longest max_model_len with room for ``concurrency`` full-length requests."""
        if self.hybrid is not None:
            return self.hybrid.max_len_for(self.num_blocks, concurrency)
        usable = max(0, self.num_blocks - 1)
        return (usable // max(1, concurrency)) * self.settings.block_size

    def blocks_for(self, max_model_len: int, concurrency: int) -> int:
        """Blocks ``concurrency`` requests of ``max_model_len`` tokens need, plus vLLM's null block."""
        if self.hybrid is not None:
            return self.hybrid.blocks_per_request(max_model_len) * concurrency + 1
        return math.ceil(max_model_len / self.settings.block_size) * concurrency + 1

    def fits(self, concurrency: int = 1) -> bool:
        return self.max_len_for(concurrency) >= self.settings.max_model_len


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


def sampler_warmup_bytes(spec: ModelSpec, *, rows: int, cal: Calibration) -> int:
    """The sampler warm-up's fp32 logits pipeline over ``rows`` × vocab logits (measured on vLLM 0.26)."""
    return int(cal.warmup_base_bytes + rows * spec.vocab_size * cal.warmup_bytes_per_logit)


def _forward_per_token(spec: ModelSpec, *, tp: int, cal: Calibration) -> tuple[float, float]:
    """(elements per token at the forward peak, MLP width) on one TP rank."""
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
    return cal.activation_hidden_factor * h + mlp_width + q_local + 2 * kv_local, mlp_width


def activation_bytes(
    spec: ModelSpec,
    *,
    tp: int,
    layers: int,
    settings: EngineSettings,
    dtype: str,
    cal: Calibration,
    runner: str = "v1",
    warmup_profiled: bool = False,
    last_stage: bool = True,
    sampler_sorts_vocab: bool = False,
) -> Explanation:
    """Torch peak of vLLM's profiling run: a forward pass over max_num_batched_tokens, then the dummy sampler.

    Only the last pipeline stage computes logits and runs the dummy sampler (vLLM's profile run calls it on the
    last PP rank only); other stages hold the forward pass and the hidden states they pass on.

    ``runner`` ``v1``: max(forward, hidden states + sampler with fp32 copies of the logits) — published 0.17–0.19
    logs. ``v2``: max(forward, vocab/tp × hidden buffer + hidden states + light sampler) — measured on 0.26;
    ``warmup_profiled`` (0.33) adds a third candidate: hidden states + logits + the sampler's fp32 warm-up pass
    (derived from the 0.33 source and the 0.26 serving footprint; not measured on 0.33). ``sampler_sorts_vocab``
    (V1 before 0.17): top-k/top-p sort the whole vocabulary, ``sort_sampler_fp32_copies`` instead.
    """
    dt = DTYPE_BYTES[dtype]
    tokens = settings.max_num_batched_tokens
    h = spec.hidden_size
    per_token, mlp_width = _forward_per_token(spec, tp=tp, cal=cal)
    rows = min(settings.max_num_seqs, tokens)
    hidden_states = tokens * h * dt
    if runner == "v2":
        scale = cal.v2_forward_scale
        forward = tokens * per_token * dt * scale if layers > 0 else 0.0
        padded_vocab = math.ceil(spec.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
        vocab_buffer = math.ceil(padded_vocab / tp) * h * dt * cal.v2_vocab_buffer_factor
        sampler = rows * spec.vocab_size * cal.v2_sampler_bytes_per_logit
        if not last_stage:
            vocab_buffer = sampler = 0.0
        held = vocab_buffer + hidden_states + sampler
        warmup = 0
        if warmup_profiled and last_stage:
            # 0.33 runs the fp32 warm-up pass on the profile's logits; the vocab-sized buffer belongs to the logits
            # computation, which the warm-up pass does not repeat.
            warmup = sampler_warmup_bytes(spec, rows=rows, cal=cal)
            held = max(held, hidden_states + rows * spec.vocab_size * dt + warmup)
        formula = (
            "V2 runner: max(forward, vocab_buffer + hidden_states + sampler"
            + (", hidden_states + logits + sampler_warmup" if warmup_profiled else "")
            + ") with forward = T × (a_h × hidden + mlp_width + q/tp + 2 × kv/tp) × dtype_bytes × scale; "
            "vocab_buffer = pad64(vocab)/tp × hidden × dtype_bytes; hidden_states = T × hidden × dtype_bytes; "
            "sampler = min(max_num_seqs, T) × vocab × bytes_per_logit"
            + ("; logits = min(max_num_seqs, T) × vocab × dtype_bytes" if warmup_profiled else "")
        )
        inputs: dict[str, object] = {
            "T": tokens,
            "a_h": cal.activation_hidden_factor,
            "hidden": h,
            "mlp_width": round(mlp_width, 1),
            "dtype_bytes": dt,
            "scale": scale,
            "forward_bytes": int(forward),
            "vocab": spec.vocab_size,
            "vocab_buffer_bytes": int(vocab_buffer),
            "hidden_states_bytes": int(hidden_states),
            "max_num_seqs": settings.max_num_seqs,
            "bytes_per_logit": cal.v2_sampler_bytes_per_logit,
            "sampler_bytes": int(sampler),
        }
        if warmup_profiled:
            inputs["sampler_warmup_bytes"] = int(warmup)
    else:
        scale = cal.activation_scale
        forward = tokens * per_token * dt * scale if layers > 0 else 0.0
        copies = cal.sort_sampler_fp32_copies if sampler_sorts_vocab else cal.sampler_fp32_copies
        sampler = rows * spec.vocab_size * (dt + 4 * copies) if last_stage else 0
        held = hidden_states + sampler
        formula = (
            "V1 runner: max(forward, hidden_states + sampler) with forward = T × (a_h × hidden + mlp_width + q/tp + "
            "2 × kv/tp) × dtype_bytes × scale; hidden_states = T × hidden × dtype_bytes; sampler = "
            "min(max_num_seqs, T) × vocab × (dtype_bytes + 4 × fp32_copies)"
        )
        inputs = {
            "T": tokens,
            "a_h": cal.activation_hidden_factor,
            "hidden": h,
            "mlp_width": round(mlp_width, 1),
            "dtype_bytes": dt,
            "scale": scale,
            "forward_bytes": int(forward),
            "max_num_seqs": settings.max_num_seqs,
            "vocab": spec.vocab_size,
            "fp32_copies": copies,
            "sampler_sorts_vocab": sampler_sorts_vocab,
            "sampler_bytes": int(sampler),
        }
    if not last_stage:
        formula += " (not the last pipeline stage: no logits, vocab buffer or sampler)"
        inputs["last_stage"] = False
    return Explanation("activation", formula, inputs, int(max(forward, held)))


def working_bytes(
    spec: ModelSpec,
    *,
    tp: int,
    layers: int,
    settings: EngineSettings,
    dtype: str,
    cal: Calibration,
    runner: str,
    last_stage: bool = True,
) -> Explanation:
    """Allocator memory the worker keeps while serving: the larger of a forward pass and the sampler warm-up
    (the warm-up runs on the last pipeline stage only)."""
    dt = DTYPE_BYTES[dtype]
    tokens = settings.max_num_batched_tokens
    per_token, _ = _forward_per_token(spec, tp=tp, cal=cal)
    scale = cal.v2_forward_scale if runner == "v2" else cal.activation_scale
    forward = tokens * per_token * dt * scale if layers > 0 else 0.0
    rows = min(settings.max_num_seqs, tokens)
    warmup = sampler_warmup_bytes(spec, rows=rows, cal=cal) if last_stage else 0
    return Explanation(
        "working",
        "max(forward, sampler_warmup) with sampler_warmup = warmup_base + min(max_num_seqs, T) × vocab × "
        "bytes_per_logit (fp32 logits pipeline run after the KV cache is allocated; last pipeline stage only)",
        {
            "forward_bytes": int(forward),
            "warmup_base": cal.warmup_base_bytes,
            "max_num_seqs": settings.max_num_seqs,
            "vocab": spec.vocab_size,
            "bytes_per_logit": cal.warmup_bytes_per_logit,
            "sampler_warmup_bytes": warmup,
        },
        int(max(forward, warmup)),
    )


def non_torch_bytes(
    *,
    tp: int,
    pp: int,
    custom_all_reduce: bool,
    cal: Calibration,
    nvlink: bool = False,
    runner: str = "v1",
    all_reduce: str = "fusion",
    small_base: bool = False,
) -> Explanation:
    """Non-torch growth during profiling: cuBLAS workspaces, NCCL and all-reduce buffers.

    ``all_reduce`` is the release's ``Accounting.all_reduce_buffers``: ``fusion`` charges the NVLink fusion workspace
    (or the custom all-reduce buffers over PCIe P2P), ``custom`` the custom all-reduce buffers on either link, ``none``
    nothing (they exist before the snapshot: the value is what the budget pays; they still occupy the GPU)."""
    nccl = cal.nccl_base_bytes + cal.nccl_per_peer_bytes * (tp - 1) if tp * pp > 1 else 0
    car = 0
    # vLLM allocates these only where custom all-reduce is enabled: P2P between the ranks, one node, not
    # --disable-custom-all-reduce (CustomAllreduce.__init__ returns early otherwise).
    if tp > 1 and custom_all_reduce and all_reduce != "none":
        car = cal.nvlink_all_reduce_bytes if nvlink and all_reduce == "fusion" else cal.custom_all_reduce_bytes
    base = cal.v2_non_torch_bytes if runner == "v2" else cal.non_torch_bytes
    if small_base and runner == "v1":
        base = cal.early_non_torch_bytes
    return Explanation(
        "non_torch",
        "base + (tp×pp > 1: nccl_base + nccl_per_peer × (tp − 1)) + (tp > 1 and custom all-reduce enabled: NVLink "
        "all-reduce workspaces, or custom all-reduce buffers over PCIe P2P)",
        {
            "base": base,
            "nccl_base": cal.nccl_base_bytes,
            "nccl_per_peer": cal.nccl_per_peer_bytes,
            "tp": tp,
            "pp": pp,
            "all_reduce_buffers": car,
            "all_reduce_charged": all_reduce,
        },
        base + nccl + car,
    )


def cuda_graph_capture_size(settings: EngineSettings) -> int:
    """vLLM's largest captured batch: min(2 × max_num_seqs, 512, max_num_batched_tokens); 0 with --enforce-eager."""
    if settings.enforce_eager:
        return 0
    return min(2 * settings.max_num_seqs, 512, settings.max_num_batched_tokens)


def cuda_graph_bytes(
    *,
    layers: int,
    enforce_eager: bool,
    cal: Calibration,
    tp: int = 1,
    runner: str = "v1",
    hidden: int = 0,
    capture_size: int = 512,
) -> Explanation:
    shrink = tp ** (-cal.cuda_graph_tp_exponent)
    size = capture_size / 512
    if runner == "v2":
        base = cal.v2_graph_base_bytes + cal.v2_graph_per_hidden_bytes * hidden
        formula = (
            "0 with --enforce-eager, else (graph_base + graph_per_hidden × hidden) × capture_size/512 × tp^-exponent"
        )
    else:
        base = cal.cuda_graph_base_bytes + cal.cuda_graph_per_layer_bytes * layers
        formula = (
            "0 with --enforce-eager, else (graph_base + graph_per_layer × layers_on_gpu) × capture_size/512 × "
            "tp^-exponent"
        )
    value = 0 if enforce_eager or capture_size <= 0 else int(base * size * shrink)
    inputs: dict[str, object] = {"tp": tp, "exponent": cal.cuda_graph_tp_exponent, "enforce_eager": enforce_eager}
    if runner == "v2":
        inputs.update(graph_base=cal.v2_graph_base_bytes, graph_per_hidden=cal.v2_graph_per_hidden_bytes, hidden=hidden)
    else:
        inputs.update(
            graph_base=cal.cuda_graph_base_bytes, graph_per_layer=cal.cuda_graph_per_layer_bytes, layers_on_gpu=layers
        )
    inputs["capture_size"] = capture_size
    return Explanation("cuda_graphs", formula, inputs, value)


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
        accounting: the vLLM release's rules (default: the current release).
        calibration: constants of the activation/overhead terms.
        ep: expert-parallel spread of routed experts beyond TP (1 = experts split over TP only).

    Returns:
        The per-GPU breakdown and the replica's KV-cache figures.
    """
    if len(gpus) != tp * pp:
        raise ValueError(f"a replica with tp={tp} pp={pp} needs {tp * pp} GPUs, got {len(gpus)}")
    acc = accounting or accounting_for(CURRENT_VLLM)
    runner = acc.runner(spec)
    graphs_in = acc.graphs_subtracted(spec)
    warmup_profiled = runner == "v2" and acc.sampler_warmup_profiled
    dtype = resolve_dtype(spec, settings.dtype)
    if dtype == "bfloat16" and settings.dtype == "auto" and not all(g.bf16 for g in gpus):
        dtype = "float16"  # no bf16 below compute capability 8.0; same bytes, and the profile says --dtype float16
    quant = effective_quantization(spec, settings.quantization)
    bd = param_breakdown(spec)
    counts = pp_layer_counts(spec.num_hidden_layers, pp)
    cal = calibration
    rotary = rotary_cache_bytes(spec, max_model_len=settings.max_model_len, dtype=dtype)
    ckpt_scale = checkpoint_scale(spec, dtype=dtype, quantization=quant, breakdown=bd)
    capture = cuda_graph_capture_size(settings)
    layouts: list[HybridLayout] = []
    if spec.is_hybrid:
        settings, layouts = _hybrid_settings(spec, settings, tp=tp, pp=pp, dtype=dtype, acc=acc)
    rows: list[tuple[Gpu, int, int, WeightShard, Explanation, Explanation, Explanation, Explanation, int, int]] = []
    for i, gpu in enumerate(gpus):
        stage = i // tp
        layers = counts[stage]
        shard = weight_shard(spec, tp=tp, pp_rank=stage, pp=pp, dtype=dtype, quantization=quant, ep=ep, breakdown=bd)
        act = activation_bytes(
            spec,
            tp=tp,
            layers=layers,
            settings=settings,
            dtype=dtype,
            cal=cal,
            runner=runner,
            warmup_profiled=warmup_profiled,
            # A pooling model computes no logits and runs no sampler: its profile ends with the pooler.
            last_stage=stage == pp - 1 and not spec.is_pooling,
            sampler_sorts_vocab=acc.sampler_sorts_vocab,
        )
        if spec.is_multimodal and stage == 0 and (runner == "v1" or acc.v2_profiles_encoder):
            act = _with_encoder(act, spec, tp=tp, dtype=dtype, settings=settings)
        nt = non_torch_bytes(
            tp=tp,
            pp=pp,
            custom_all_reduce=settings.custom_all_reduce,
            cal=cal,
            nvlink=settings.nvlink,
            runner=runner,
            all_reduce=acc.all_reduce_buffers,
            small_base=acc.small_non_torch_base,
        )
        cg = cuda_graph_bytes(
            layers=layers,
            enforce_eager=settings.enforce_eager,
            cal=cal,
            tp=tp,
            runner=runner,
            hidden=spec.hidden_size,
            capture_size=capture,
        )
        if layouts:
            kvt = _hybrid_kv_explanation(layouts[stage], tp=tp)
        else:
            kvt = kv_bytes_per_token(spec, tp=tp, layers=layers, kv_cache_dtype=settings.kv_cache_dtype, dtype=dtype)
        capacity = math.ceil(gpu.total_bytes * settings.gpu_memory_utilization)
        weights = round(shard.bytes * ckpt_scale) + rotary
        graphs_taken = int(cg.value) if graphs_in else 0
        # vLLM 0.8 charges the CUDA context (all of total − free that torch did not allocate) to the budget.
        context_taken = cal.cuda_context_bytes if acc.context_in_budget else 0
        budget = capacity - weights - int(act.value) - int(nt.value) - graphs_taken - context_taken
        per_block = int(kvt.value) * settings.block_size
        blocks = max(0, budget) // per_block if per_block else 0
        rows.append((gpu, stage, layers, shard, act, nt, cg, kvt, budget, blocks))

    num_blocks = min(r[9] for r in rows)
    per_gpu: list[GpuMemory] = []
    for gpu, stage, layers, shard, act, nt, cg, kvt, budget, blocks in rows:
        capacity = math.ceil(gpu.total_bytes * settings.gpu_memory_utilization)
        per_block = int(kvt.value) * settings.block_size
        weights = round(shard.bytes * ckpt_scale) + rotary
        last = stage == pp - 1 and not spec.is_pooling
        work = working_bytes(
            spec, tp=tp, layers=layers, settings=settings, dtype=dtype, cal=cal, runner=runner, last_stage=last
        )
        if spec.is_multimodal and stage == 0:
            # The first image request runs the encoder while serving, whether or not the profile did.
            work = _with_encoder(work, spec, tp=tp, dtype=dtype, settings=settings)
        weights_exp = Explanation(
            "weights",
            "embedding (first stage) + lm_head (last stage) rows × hidden × dtype_bytes, vocab padded to 64 and "
            "split over tp; + replicated norms/routers × dtype_bytes; + sharded linear elements at their stored "
            "size (q/o/MLP ÷ tp, k/v × ceil(kv/tp)/kv, experts ÷ tp×ep); + rotary cache (positions × head_dim × "
            "dtype_bytes)"
            + (
                "; × checkpoint_scale = safetensors bytes ÷ config-derived bytes (the headers' total, split as the "
                "config says)"
                if ckpt_scale != 1.0
                else ""
            ),
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
                "rotary_cache_bytes": rotary,
                "checkpoint_bytes": spec.weight_bytes,
                "checkpoint_scale": round(ckpt_scale, 4),
            },
            weights,
        )
        budget_exp = Explanation(
            "kv_budget",
            "gpu_memory_utilization × total − weights − activation − non_torch"
            + (
                " − cuda_graphs (the release subtracts its graph estimate)"
                if graphs_in
                else " (CUDA graphs are captured afterwards, on top of the budget)"
            )
            + (" − cuda_context (vLLM 0.8 charges total − free − torch memory)" if acc.context_in_budget else ""),
            {
                "vllm": acc.vllm_version,
                "runner": runner,
                "gpu_memory_utilization": settings.gpu_memory_utilization,
                "total": gpu.total_bytes,
                "capacity": capacity,
                "weights": weights,
                "activation": int(act.value),
                "non_torch": int(nt.value),
                "cuda_graphs": int(cg.value) if graphs_in else 0,
                "cuda_context": context_taken,
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
        kv_bytes = num_blocks * per_block
        footprint = cal.cuda_context_bytes + weights + int(nt.value) + kv_bytes + int(cg.value) + int(work.value)
        footprint_exp = Explanation(
            "footprint",
            "cuda_context + weights + non_torch + kv_cache + cuda_graphs + working (what nvidia-smi shows while "
            "serving; may exceed the budget)",
            {
                "cuda_context": cal.cuda_context_bytes,
                "weights": weights,
                "non_torch": int(nt.value),
                "kv_cache": kv_bytes,
                "cuda_graphs": int(cg.value),
                "working": int(work.value),
            },
            footprint,
        )
        per_gpu.append(
            GpuMemory(
                gpu=gpu,
                pp_rank=stage,
                layers=layers,
                weights_bytes=weights,
                activation_bytes=int(act.value),
                non_torch_bytes=int(nt.value),
                cuda_graph_bytes=int(cg.value),
                cuda_context_bytes=cal.cuda_context_bytes,
                kv_budget_bytes=budget,
                kv_bytes_per_token=int(kvt.value),
                num_blocks=blocks,
                kv_cache_bytes=kv_bytes,
                capacity_bytes=capacity,
                explanations=(
                    weights_exp,
                    act,
                    nt,
                    cg,
                    context_exp,
                    kvt,
                    budget_exp,
                    blocks_exp,
                    work,
                    footprint_exp,
                ),
                graphs_in_budget=graphs_in,
                working_bytes=int(work.value),
            )
        )
    tokens = num_blocks * settings.block_size
    conc = tokens / settings.max_model_len
    fit_len = max(0, num_blocks - 1) * settings.block_size
    layout: HybridLayout | None = None
    if layouts:
        layout = layouts[min(range(len(rows)), key=lambda i: rows[i][9]) // tp]
        tokens = layout.tokens_logged(num_blocks, settings.max_model_len)
        conc = layout.max_concurrency(num_blocks, settings.max_model_len)
        fit_len = layout.max_len_for(num_blocks, 1)
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
        runner=runner,
        graphs_in_budget=graphs_in,
        hybrid=layout,
    )


def _with_encoder(act: Explanation, spec: ModelSpec, *, tp: int, dtype: str, settings: EngineSettings) -> Explanation:
    """A peak (the profile's activation, or the working memory while serving) with the vision encoder's run on the
    largest default item (first pipeline stage): the larger of the two."""
    encoder = multimodal.encoder_profile_bytes(
        spec, tp=tp, dtype_bytes=DTYPE_BYTES[dtype], max_num_batched_tokens=settings.max_num_batched_tokens
    )
    inputs = dict(act.inputs)
    inputs.update(
        decoder_bytes=int(act.value), encoder_bytes=encoder, max_item_patches=multimodal.max_item_patches(spec)
    )
    return Explanation(
        act.name,
        "max(decoder peak, vision encoder peak) with encoder = patches of the largest default image × "
        "(6 × vision_hidden + mlp × vision_intermediate/tp) × dtype_bytes + cached encoder outputs; decoder: "
        + act.formula,
        inputs,
        max(int(act.value), encoder),
    )


def _hybrid_settings(
    spec: ModelSpec, settings: EngineSettings, *, tp: int, pp: int, dtype: str, acc: Accounting
) -> tuple[EngineSettings, list[HybridLayout]]:
    """Each stage's page pool and the settings with vLLM's unified attention block size (the largest of the
    stages': vLLM sets one block size for the engine)."""
    counts = pp_layer_counts(spec.num_hidden_layers, pp)
    kv_elem = kv_dtype_bytes(settings.kv_cache_dtype, dtype)
    user_block = settings.block_size if settings.block_size != DEFAULT_BLOCK_SIZE else None
    layouts = []
    for stage in range(pp):
        start = sum(counts[:stage])
        kinds = spec.layer_kinds[start : start + counts[stage]]
        layouts.append(
            hybrid_layout(
                spec, tp=tp, kinds=kinds, kv_bytes=kv_elem, dtype_bytes=DTYPE_BYTES[dtype], block_size=user_block
            )
        )
    block = max(layout.block_size for layout in layouts)
    layouts = [
        hybrid_layout(
            spec,
            tp=tp,
            kinds=spec.layer_kinds[sum(counts[:i]) : sum(counts[: i + 1])],
            kv_bytes=kv_elem,
            dtype_bytes=DTYPE_BYTES[dtype],
            block_size=block,
            prefix_caching=acc.hybrid_prefix_caching and settings.enable_prefix_caching,
            tokens_from_concurrency=acc.hybrid_tokens_from_concurrency,
        )
        for i in range(pp)
    ]
    return replace(settings, block_size=block), layouts


def _hybrid_kv_explanation(layout: HybridLayout, *, tp: int) -> Explanation:
    return Explanation(
        "kv_bytes_per_token",
        "hybrid (full + linear attention): one block index costs group_size pages of block_size × "
        "attention_bytes_per_token, so per token slot: group_size × 2 × ceil(kv_heads/tp) × head_dim × kv_dtype_bytes; "
        "linear-attention layers hold conv + recurrent state per sequence in mamba pages padded to the attention page",
        {
            "attention_layers_on_gpu": layout.attention_layers,
            "linear_layers_on_gpu": layout.linear_layers,
            "tp": tp,
            "attention_bytes_per_token_per_layer": layout.attention_bytes_per_token,
            "conv_state_bytes": layout.conv_state_bytes,
            "recurrent_state_bytes": layout.recurrent_state_bytes,
            "block_size": layout.block_size,
            "page_bytes": layout.page_bytes,
            "mamba_padding_pct": round(layout.padding_pct, 2),
            "group_size": layout.group_size,
            "groups": f"{layout.attention_groups} attention + {layout.linear_groups} linear",
        },
        layout.group_size * layout.attention_bytes_per_token,
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
