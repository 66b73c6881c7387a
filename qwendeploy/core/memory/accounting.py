"""How each vLLM release accounts for memory (``Accounting``), read in its sources; ``accounting_for(version)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwendeploy.core.models import ModelSpec

CURRENT_VLLM = "0.33"
"""vLLM release whose accounting is the default (the newest release checked, see docs/memory-model.md)."""
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
"""vLLM's default ``--gpu-memory-utilization`` from 0.20 on (0.9 before; ``accounting_for`` says which)."""


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
        default_gpu_memory_utilization=DEFAULT_GPU_MEMORY_UTILIZATION if v >= (0, 20) else 0.9,
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
