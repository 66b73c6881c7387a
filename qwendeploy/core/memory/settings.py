"""The vLLM engine arguments that change memory (``EngineSettings``)."""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core.memory.accounting import DEFAULT_GPU_MEMORY_UTILIZATION

DEFAULT_BLOCK_SIZE = 16
"""vLLM's default ``--block-size`` (tokens per KV-cache block)."""


DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
"""vLLM's API-server defaults for ``--max-num-seqs`` / ``--max-num-batched-tokens`` on a GPU under 70 GiB (or an
A100); larger GPUs get LARGE_GPU_MAX_NUM_SEQS / LARGE_GPU_MAX_NUM_BATCHED_TOKENS (core.planner.rules.default_batching
picks)."""
LARGE_GPU_MAX_NUM_SEQS = 1024
LARGE_GPU_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True)
class EngineSettings:
    """The vLLM engine arguments that change memory."""

    max_model_len: int
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
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
