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

Every name is importable from the package (``from qwendeploy.core.memory import estimate``); each module is imported on
the first use of one of its names, so importing the package costs nothing and ``CURRENT_VLLM`` costs one small module.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy reads any TYPE_CHECKING as true
if TYPE_CHECKING:  # what mypy sees; at run time __getattr__ imports a name's module on first use
    from qwendeploy.core.memory.accounting import CURRENT_VLLM as CURRENT_VLLM
    from qwendeploy.core.memory.accounting import V2_ARCHITECTURES_0_24 as V2_ARCHITECTURES_0_24
    from qwendeploy.core.memory.accounting import V2_MOE_ARCHITECTURES as V2_MOE_ARCHITECTURES
    from qwendeploy.core.memory.accounting import Accounting as Accounting
    from qwendeploy.core.memory.accounting import accounting_for as accounting_for
    from qwendeploy.core.memory.accounting import parse_version as parse_version
    from qwendeploy.core.memory.activations import activation_bytes as activation_bytes
    from qwendeploy.core.memory.activations import sampler_warmup_bytes as sampler_warmup_bytes
    from qwendeploy.core.memory.activations import with_encoder as with_encoder
    from qwendeploy.core.memory.activations import working_bytes as working_bytes
    from qwendeploy.core.memory.calibration import DEFAULT_CALIBRATION as DEFAULT_CALIBRATION
    from qwendeploy.core.memory.calibration import Calibration as Calibration
    from qwendeploy.core.memory.composition import estimate as estimate
    from qwendeploy.core.memory.dtypes import DTYPE_BYTES as DTYPE_BYTES
    from qwendeploy.core.memory.dtypes import KV_DTYPE_BYTES as KV_DTYPE_BYTES
    from qwendeploy.core.memory.dtypes import effective_quantization as effective_quantization
    from qwendeploy.core.memory.dtypes import kv_dtype_bytes as kv_dtype_bytes
    from qwendeploy.core.memory.dtypes import resolve_dtype as resolve_dtype
    from qwendeploy.core.memory.explanation import Explanation as Explanation
    from qwendeploy.core.memory.kv import KvPlan as KvPlan
    from qwendeploy.core.memory.kv import hybrid_kv_bytes_per_token as hybrid_kv_bytes_per_token
    from qwendeploy.core.memory.kv import hybrid_settings as hybrid_settings
    from qwendeploy.core.memory.kv import kv_bytes_per_token as kv_bytes_per_token
    from qwendeploy.core.memory.kv import kv_plan as kv_plan
    from qwendeploy.core.memory.overheads import cuda_graph_bytes as cuda_graph_bytes
    from qwendeploy.core.memory.overheads import cuda_graph_capture_size as cuda_graph_capture_size
    from qwendeploy.core.memory.overheads import non_torch_bytes as non_torch_bytes
    from qwendeploy.core.memory.results import GpuMemory as GpuMemory
    from qwendeploy.core.memory.results import MemoryEstimate as MemoryEstimate
    from qwendeploy.core.memory.settings import DEFAULT_BLOCK_SIZE as DEFAULT_BLOCK_SIZE
    from qwendeploy.core.memory.settings import EngineSettings as EngineSettings
    from qwendeploy.core.memory.sharding import VOCAB_PADDING as VOCAB_PADDING
    from qwendeploy.core.memory.sharding import kv_heads_per_rank as kv_heads_per_rank
    from qwendeploy.core.memory.sharding import pp_layer_counts as pp_layer_counts
    from qwendeploy.core.memory.sharding import vocab_rows_per_rank as vocab_rows_per_rank
    from qwendeploy.core.memory.weights import WeightShard as WeightShard
    from qwendeploy.core.memory.weights import checkpoint_scale as checkpoint_scale
    from qwendeploy.core.memory.weights import linear_bytes as linear_bytes
    from qwendeploy.core.memory.weights import model_weight_bytes as model_weight_bytes
    from qwendeploy.core.memory.weights import rotary_cache_bytes as rotary_cache_bytes
    from qwendeploy.core.memory.weights import weight_shard as weight_shard

_MODULES: dict[str, tuple[str, ...]] = {
    "accounting": (
        "CURRENT_VLLM",
        "V2_ARCHITECTURES_0_24",
        "V2_MOE_ARCHITECTURES",
        "Accounting",
        "accounting_for",
        "parse_version",
    ),
    "activations": ("activation_bytes", "sampler_warmup_bytes", "with_encoder", "working_bytes"),
    "calibration": ("DEFAULT_CALIBRATION", "Calibration"),
    "composition": ("estimate",),
    "dtypes": ("DTYPE_BYTES", "KV_DTYPE_BYTES", "effective_quantization", "kv_dtype_bytes", "resolve_dtype"),
    "explanation": ("Explanation",),
    "kv": ("KvPlan", "hybrid_kv_bytes_per_token", "hybrid_settings", "kv_bytes_per_token", "kv_plan"),
    "overheads": ("cuda_graph_bytes", "cuda_graph_capture_size", "non_torch_bytes"),
    "results": ("GpuMemory", "MemoryEstimate"),
    "settings": ("DEFAULT_BLOCK_SIZE", "EngineSettings"),
    "sharding": ("VOCAB_PADDING", "kv_heads_per_rank", "pp_layer_counts", "vocab_rows_per_rank"),
    "weights": (
        "WeightShard",
        "checkpoint_scale",
        "linear_bytes",
        "model_weight_bytes",
        "rotary_cache_bytes",
        "weight_shard",
    ),
}
"""Each module of the package and the names it exports (the same as the imports above, checked by
tests/core/test_memory_package.py)."""

_HOME = {name: module for module, exported in _MODULES.items() for name in exported}

__all__ = sorted(_HOME)


if not TYPE_CHECKING:  # mypy checks each import against the names above, not against __getattr__

    def __getattr__(name: str) -> object:
        """PEP 562: ``from qwendeploy.core.memory import estimate`` (or ``memory.estimate``) imports
        ``memory.composition`` the first time; the value is then kept in the package's namespace."""
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
