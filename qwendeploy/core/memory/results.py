"""What the estimate returns: the per-GPU breakdown (``GpuMemory``) and the replica's figures (``MemoryEstimate``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.hybrid_attention import HybridLayout
from qwendeploy.core.memory.accounting import Accounting
from qwendeploy.core.memory.explanation import Explanation
from qwendeploy.core.memory.settings import EngineSettings


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
