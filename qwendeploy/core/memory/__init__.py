"""Per-GPU memory estimate of a vLLM deployment, following vLLM's own accounting.

Per GPU of one replica (``tp × pp`` GPUs):

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

One idea a file:

* ``accounting`` — how each vLLM release profiles memory (``Accounting``, ``accounting_for``, ``CURRENT_VLLM``).
* ``calibration`` — the fitted constants (``Calibration``) and the runs they were fitted to.
* ``settings`` — the engine arguments that change memory (``EngineSettings``).
* ``dtypes`` — bytes per element of activations, KV cache and online quantization.
* ``sharding`` — layers over pipeline stages, heads and vocabulary over TP ranks.
* ``weights`` — the weight shard of one GPU (``weight_shard``, ``checkpoint_scale``, ``linear_bytes``) and the rotary
  cache loaded with it.
* ``kv`` — **the KV-cache formula** (``kv_bytes_per_token``), the hybrid page pool, vLLM's block arithmetic.
* ``activations`` — the profile's torch peak (forward pass, sampler, vision encoder) and the working memory.
* ``overheads`` — non-torch memory (cuBLAS, NCCL, all-reduce buffers) and CUDA graphs.
* ``results`` — what the estimate returns (``GpuMemory``, ``MemoryEstimate``).
* ``composition`` — ``estimate``: the terms per GPU, the KV budget each leaves, the replica's figures.
* ``explanation`` — ``Explanation``, one term with its formula and inputs.
"""

from __future__ import annotations

from qwendeploy.core.memory.accounting import (
    CURRENT_VLLM,
    V2_ARCHITECTURES_0_24,
    V2_MOE_ARCHITECTURES,
    Accounting,
    accounting_for,
    parse_version,
)
from qwendeploy.core.memory.activations import activation_bytes, sampler_warmup_bytes, with_encoder, working_bytes
from qwendeploy.core.memory.calibration import DEFAULT_CALIBRATION, Calibration
from qwendeploy.core.memory.composition import estimate
from qwendeploy.core.memory.dtypes import (
    DTYPE_BYTES,
    KV_DTYPE_BYTES,
    effective_quantization,
    kv_dtype_bytes,
    resolve_dtype,
)
from qwendeploy.core.memory.explanation import Explanation
from qwendeploy.core.memory.kv import KvPlan, hybrid_kv_bytes_per_token, hybrid_settings, kv_bytes_per_token, kv_plan
from qwendeploy.core.memory.overheads import cuda_graph_bytes, cuda_graph_capture_size, non_torch_bytes
from qwendeploy.core.memory.results import GpuMemory, MemoryEstimate
from qwendeploy.core.memory.settings import DEFAULT_BLOCK_SIZE, EngineSettings
from qwendeploy.core.memory.sharding import VOCAB_PADDING, kv_heads_per_rank, pp_layer_counts, vocab_rows_per_rank
from qwendeploy.core.memory.weights import (
    WeightShard,
    checkpoint_scale,
    linear_bytes,
    model_weight_bytes,
    rotary_cache_bytes,
    weight_shard,
)

__all__ = [
    "CURRENT_VLLM",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CALIBRATION",
    "DTYPE_BYTES",
    "KV_DTYPE_BYTES",
    "V2_ARCHITECTURES_0_24",
    "V2_MOE_ARCHITECTURES",
    "VOCAB_PADDING",
    "Accounting",
    "Calibration",
    "EngineSettings",
    "Explanation",
    "GpuMemory",
    "KvPlan",
    "MemoryEstimate",
    "WeightShard",
    "accounting_for",
    "activation_bytes",
    "checkpoint_scale",
    "cuda_graph_bytes",
    "cuda_graph_capture_size",
    "effective_quantization",
    "estimate",
    "hybrid_kv_bytes_per_token",
    "hybrid_settings",
    "kv_bytes_per_token",
    "kv_dtype_bytes",
    "kv_heads_per_rank",
    "kv_plan",
    "linear_bytes",
    "model_weight_bytes",
    "non_torch_bytes",
    "parse_version",
    "pp_layer_counts",
    "resolve_dtype",
    "rotary_cache_bytes",
    "sampler_warmup_bytes",
    "vocab_rows_per_rank",
    "weight_shard",
    "with_encoder",
    "working_bytes",
]
