"""The ranking cost model: a decode step's time from weight and KV reads, matrix products, all-reduces, the
engine's host work and pipeline hops (CostModel, decode_cost, the Cost figures of one candidate)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import (
    DTYPE_BYTES,
    MemoryEstimate,
)
from qwendeploy.core.models import ModelSpec
from qwendeploy.core.networks import find_network
from qwendeploy.core.params import param_breakdown
from qwendeploy.core.planner.assignment import LinkClass, link_class

if TYPE_CHECKING:
    from qwendeploy.core.planner.values import PlanRequest


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


def weights_read_fraction(spec: ModelSpec, batch: float) -> float:
    """Share of the weights one decode step of ``batch`` requests reads: all of a dense model's; for an MoE the
    shared part plus the routed experts at least one of the batch's tokens is sent to — with top-k of E experts
    drawn independently per token, 1 − (1 − k/E)^batch of them (a 12-layer Qwen3-30B-A3B on an H200: one request
    reads 16% of the weights and decodes at the step floor; 16 requests touch 64% of the experts, 3.36 ms predicted
    vs 3.42 ms measured per step)."""
    bd = param_breakdown(spec)
    total = bd.total()
    if not total or not bd.num_experts:
        return 1.0
    k, e = bd.experts_per_tok, bd.num_experts
    routed = (total - bd.active()) / (1.0 - k / e)
    touched = 1.0 - math.pow(1.0 - k / e, max(1.0, batch))
    return min(1.0, (total - routed + routed * touched) / total)


def decode_cost(
    req: PlanRequest,
    machine: Machine,
    est: MemoryEstimate,
    replica: tuple[Gpu, ...],
    dp: int,
    max_len: int,
    *,
    batch: int | None = None,
    mean_context: float | None = None,
) -> Cost:
    """§5's decode model for one placement. By default at the ranking load (requests ``mean_context_fraction``
    full, as many per replica as the KV cache holds, or one for the latency objective); ``batch`` and
    ``mean_context`` evaluate another load instead (``qwendeploy bench`` sets them to the benchmark's own), and
    then ``tokens_per_s`` is the throughput of all replicas at that batch."""
    cm = req.cost
    tp, pp = est.tp, est.pp
    link = link_class(machine, replica[:tp])
    net = find_network(req.network)
    stage_nodes = [replica[i * tp].node for i in range(pp) if i * tp < len(replica)]
    net_hops = sum(1 for i in range(1, len(stage_nodes)) if stage_nodes[i] != stage_nodes[i - 1])
    local_link: LinkClass = link if link != "none" else ("nvlink" if machine.interconnect == "nvlink" else "pcie-p2p")

    def link_bw(cls: str) -> float:
        return net.bandwidth if cls == "network" else cm.bw(cls)

    def link_lat(cls: str) -> float:
        return net.latency_s if cls == "network" else cm.latency(cls)

    dt = DTYPE_BYTES[est.dtype]
    mean_ctx = mean_context if mean_context is not None else max_len * cm.mean_context_fraction
    # The slowest GPU of the replica sets the pace.
    worst = max(est.per_gpu, key=lambda m: m.weights_bytes + m.kv_bytes_per_token)
    bw = (worst.gpu.memory_bandwidth_gbps or 1000.0) * 1e9 * cm.bandwidth_efficiency
    load_given = batch is not None
    if batch is None:
        if req.objective == "latency":
            batch = 1
        else:
            usable = max(0, est.num_blocks - 1) * est.settings.block_size
            batch = max(1, min(est.settings.max_num_seqs, int(usable // max(1.0, mean_ctx))))
    micro = max(1.0, batch / pp)

    peak_flops = (worst.gpu.tensor_tflops or 0.0) * 1e12 or bw / cm.bandwidth_efficiency * cm.default_flops_per_byte
    # 2 FLOPs per active parameter per token, split over the replica's GPUs as their weights are.
    weights_total = sum(m.weights_bytes for m in est.per_gpu) or 1
    flops_per_token = 2.0 * param_breakdown(req.spec).active() * worst.weights_bytes / weights_total

    def stage_time(b: float) -> tuple[float, float, float]:
        mem = (worst.weights_bytes * weights_read_fraction(req.spec, b) + b * mean_ctx * worst.kv_bytes_per_token) / bw
        comm = 0.0
        if tp > 1:
            msg = b * req.spec.hidden_size * dt
            per_ar = link_lat(link) + 2 * (tp - 1) / tp * msg / link_bw(link)
            comm = 2 * worst.layers * per_ar
        return mem, comm, b * flops_per_token / (peak_flops * cm.compute_efficiency)

    def host_time(b: float) -> float:
        return cm.step_floor_s + cm.seq_overhead_s * b

    mem, comm, compute = stage_time(micro)
    stage = max(host_time(micro), mem + comm + compute)
    act = req.spec.hidden_size * dt  # bytes of one token's activations between stages

    def hop_time(cls: str, tokens: float) -> float:
        return link_lat(cls) + tokens * act / link_bw(cls)

    # Activations cross every stage boundary once per step: over the network where stages sit on different
    # nodes, else inside the node. ``hop`` is the mean per boundary.
    net_hop = hop_time("network", micro)
    hops_total = net_hops * net_hop + (pp - 1 - net_hops) * hop_time(local_link, micro) if pp > 1 else 0.0
    hop = hops_total / (pp - 1) if pp > 1 else 0.0
    eff = cm.pp_bubble_efficiency if pp > 1 else 1.0
    throughput = dp * micro / (stage + hop) * eff
    single = 1.0 / (pp * max(host_time(1), sum(stage_time(1))) + (pp - 1) * hop)
    step = pp * stage + (pp - 1) * hop
    return Cost(
        batch=batch,
        step_ms=step * 1e3,
        memory_ms=mem * 1e3,
        comm_ms=comm * 1e3,
        compute_ms=compute * 1e3,
        host_ms=host_time(micro) * 1e3,
        tokens_per_s=single if req.objective == "latency" and not load_given else throughput,
        single_stream_tokens_per_s=single,
        link=link,
        network_hops=net_hops,
        network_hop_ms=net_hops * net_hop * 1e3,
        prefill_hop_ms=hop_time("network", est.settings.max_num_batched_tokens) * 1e3 if net_hops else 0.0,
    )
