"""The planner's values: what to plan (PlanRequest), one placement judged (Candidate) and the outcome (Plan)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import (
    CURRENT_VLLM,
    DEFAULT_CALIBRATION,
    Accounting,
    Calibration,
    EngineSettings,
    MemoryEstimate,
)
from qwendeploy.core.models import ModelSpec
from qwendeploy.core.networks import DEFAULT_NETWORK
from qwendeploy.core.planner.cost_model import DEFAULT_COST, Cost, CostModel

Objective = Literal["throughput", "latency"]
Status = Literal["fits", "shorter", "no"]


@dataclass(frozen=True)
class PlanRequest:
    """What to plan. ``None`` means "let the planner choose" (or vLLM's default)."""

    spec: ModelSpec
    machine: Machine
    max_model_len: int | None = None
    concurrency: int = 1
    objective: Objective = "throughput"
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str | None = None
    """None: ``auto``, and ``fp8`` tried where ``auto`` does not fit and the GPUs support it."""
    dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False
    vllm_version: str = CURRENT_VLLM
    calibration: Calibration = DEFAULT_CALIBRATION
    cost: CostModel = DEFAULT_COST
    variants: tuple[ModelSpec, ...] = ()
    """Quantized variants of the model (from the catalog), tried when nothing fits."""
    network: str = DEFAULT_NETWORK
    """Link between nodes (core.networks.NETWORKS): its bandwidth and latency price PP hops across nodes."""
    disable_custom_all_reduce: bool = False
    """``--disable-custom-all-reduce``: vLLM allocates no custom all-reduce buffers."""
    allow_untrained_context: bool = False
    """Plan a dual-chunk-attention (1M) model past its trained window although vLLM has no DCA."""
    vllm_version_source: str = ""
    """Why this release: ``installed`` (package metadata), ``asked`` (--vllm-version) or empty (the newest modelled)."""


@dataclass(frozen=True)
class Candidate:
    """One placement and how it fares."""

    tp: int
    pp: int
    dp: int
    kv_cache_dtype: str
    status: Status
    reason: str
    score: float
    gpus: tuple[Gpu, ...] = ()
    """Every GPU used, replica by replica (stage-major within a replica)."""
    estimate: MemoryEstimate | None = None
    gpu_memory_utilization: float | None = None
    max_model_len_fit: int | None = None
    """Longest context that fits with the requested concurrency (shorter/fits)."""
    needed_bytes_per_gpu: int | None = None
    """Memory per GPU the target context × concurrency would need (inside the budget)."""
    cost: Cost | None = None
    rule: str = ""
    """Which check rejected it (``heads``, ``kv_heads``, ``memory`` …); empty when it fits."""

    @property
    def fits(self) -> bool:
        return self.status == "fits"

    @property
    def label(self) -> str:
        shape = f"TP{self.tp}" + (f"×PP{self.pp}" if self.pp > 1 else "")
        kv = f", {self.kv_cache_dtype} KV" if self.kv_cache_dtype != "auto" else ""
        return f"{self.dp}× {shape}{kv}" if self.dp > 1 else f"{shape}{kv}"


@dataclass(frozen=True)
class Plan:
    """The outcome: ranked candidates, the chosen one, and why."""

    request: PlanRequest
    max_model_len: int
    settings: EngineSettings
    """Engine settings shared by the candidates (per-candidate kv dtype/utilisation in the candidate)."""
    accounting: Accounting
    candidates: tuple[Candidate, ...]
    """Fitting ones ranked best first, then shorter-context ones, then rejected ones."""
    chosen: Candidate | None
    hf_overrides: dict[str, Any] | None
    why: tuple[str, ...]
    """The winner explained in words (or why nothing fits)."""
    suggestions: tuple[str, ...] = ()
    """When nothing fits: the cheapest changes that would make it fit, computed."""
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.chosen is not None and self.chosen.fits


def longest_shorter(candidates: Iterable[Candidate]) -> int:
    """The longest context a shorter-context candidate holds with the requested concurrency (0: none does)."""
    return max((c.max_model_len_fit or 0 for c in candidates if c.status == "shorter"), default=0)


# ----------------------------------------------------------------------------------------------------------
# Evaluation of one candidate
# ----------------------------------------------------------------------------------------------------------
