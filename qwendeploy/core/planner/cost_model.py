"""The ranking cost model's constants (CostModel, calibrated on real GPUs) and the figures it gives for one
candidate (Cost). The formula is cost.py's; a request carries its CostModel (values.py), so this module imports
neither."""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core.planner.assignment import LinkClass


@dataclass(frozen=True)
class CostModel:
    """Constants of the ranking model. Times in seconds, bandwidths in bytes/s."""

    bandwidth_efficiency: float = 0.71
    """Fraction of peak memory bandwidth a decode step achieves. Measured: Qwen2.5-7B bf16 on an H200 (vLLM 0.26,
    CUDA graphs) decodes one request in 4.48 ms per token reading 15.3 GB — 3.42 of 4.8 TB/s
    (tests/fixtures/gpu-runs/h200-bench-vllm0.26)."""
    step_floor_s: float = 2.3e-3
    """Shortest decode step of vLLM's engine whatever the model: scheduling, sampling and output processing that a
    small model's GPU work does not hide. Measured: Qwen2.5-0.5B 2.42 ms and a 12-layer Qwen3-30B-A3B 2.19 ms per
    token on an H200 with vLLM 0.26, where their weights take 0.3–0.8 ms to read."""
    seq_overhead_s: float = 42e-6
    """Engine time per running request per step on the host (scheduling, input preparation, sampling and output
    processing), added to the floor; it overlaps the GPU's work, so a step takes the longer of the two. Measured:
    Qwen2.5-0.5B on an H200 (vLLM 0.26) goes from 2.43 ms per step alone to 2.94 and 5.07 ms at 16 and 64
    requests while its GPU work stays under 1 ms (another boot on another host of the same kind: 34 µs)."""
    compute_efficiency: float = 0.55
    """Fraction of the GPU's dense 16-bit tensor peak a decode step's matrix products reach, with the prefills of
    arriving requests that share the steps of a busy server. Fitted to Qwen2.5-7B bf16 on an H200 (vLLM 0.26):
    5.43 and 7.42 ms per step at 16 and 64 requests of 1000 prompt tokens, against 4.8 and 5.7 ms of memory reads."""
    default_flops_per_byte: float = 200.0
    """Tensor peak per byte/s of bandwidth for a card whose peak is not in the catalog (an H100/H200's ratio)."""
    mean_context_fraction: float = 0.5
    """Average request length as a fraction of max_model_len (requests are half full on average)."""
    link_bandwidth: tuple[tuple[str, float], ...] = (
        ("nvlink", 150e9),
        ("pcie-p2p", 20e9),
        ("pcie-no-p2p", 8e9),
        ("network", 10e9),
    )
    """Effective all-reduce bus bandwidth per link class."""
    link_latency: tuple[tuple[str, float], ...] = (
        ("nvlink", 8e-6),
        ("pcie-p2p", 15e-6),
        ("pcie-no-p2p", 35e-6),
        ("network", 50e-6),
    )
    """Fixed cost of one all-reduce (kernel launch + protocol) per link class."""
    pp_bubble_efficiency: float = 0.85
    """Fraction of a pipeline's stages busy in steady state."""

    def bw(self, link: str) -> float:
        return dict(self.link_bandwidth).get(link, 8e9)

    def latency(self, link: str) -> float:
        return dict(self.link_latency).get(link, 35e-6)


DEFAULT_COST = CostModel()


@dataclass(frozen=True)
class Cost:
    """The ranking model's figures for one candidate."""

    batch: int
    """Requests decoded together per replica."""
    step_ms: float
    """One decode step of a replica (all stages)."""
    memory_ms: float
    """Of which: reading weights and KV on one GPU (per stage)."""
    comm_ms: float
    """Of which: TP all-reduces (per stage)."""
    tokens_per_s: float
    """All replicas together (throughput objective) — or one request (latency objective)."""
    single_stream_tokens_per_s: float
    link: LinkClass
    network_hops: int = 0
    """Pipeline stage boundaries of a replica that cross nodes."""
    network_hop_ms: float = 0.0
    """Of the decode step: time the activations spend crossing nodes (all network hops)."""
    prefill_hop_ms: float = 0.0
    """One prefill chunk (max_num_batched_tokens) crossing one network hop."""
    compute_ms: float = 0.0
    """Of which: the batch's matrix products on one GPU (per stage)."""
    host_ms: float = 0.0
    """The engine's host work per step (the floor plus the per-request share), which the GPU work hides when longer."""
