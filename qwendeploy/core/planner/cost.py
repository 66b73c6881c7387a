"""The ranking cost model's formula: a decode step's time from weight and KV reads, matrix products, all-reduces,
the engine's host work and pipeline hops (decode_cost and its steps; the constants and the figures it gives are in
cost_model.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import (
    DTYPE_BYTES,
    GpuMemory,
    MemoryEstimate,
)
from qwendeploy.core.models import ModelSpec
from qwendeploy.core.networks import Network, find_network
from qwendeploy.core.params import param_breakdown
from qwendeploy.core.planner.assignment import LinkClass, link_class
from qwendeploy.core.planner.cost_model import Cost, CostModel

if TYPE_CHECKING:
    from qwendeploy.core.planner.values import PlanRequest


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


@dataclass(frozen=True)
class StageTime:
    """One pipeline stage's share of a decode step on the replica's slowest GPU, in seconds."""

    memory_s: float
    """Reading the weights the batch touches and the batch's KV cache."""
    comm_s: float
    """TP all-reduces (two per layer)."""
    compute_s: float
    """The batch's matrix products."""

    @property
    def gpu_s(self) -> float:
        """The GPU's work: the three one after another."""
        return self.memory_s + self.comm_s + self.compute_s


@dataclass(frozen=True)
class ReplicaLinks:
    """How one replica's GPUs reach each other: the TP group's link, the link between stages on one node, and
    how many stage boundaries cross nodes."""

    tp_link: LinkClass
    local_link: LinkClass
    """Between two pipeline stages on the same node."""
    network_hops: int
    """Stage boundaries that cross nodes."""


def replica_links(machine: Machine, replica: tuple[Gpu, ...], tp: int, pp: int) -> ReplicaLinks:
    """The links of ``replica`` (its GPUs in stage order, ``tp`` per stage)."""
    link = link_class(machine, replica[:tp])
    stage_nodes = [replica[i * tp].node for i in range(pp) if i * tp < len(replica)]
    hops = sum(1 for i in range(1, len(stage_nodes)) if stage_nodes[i] != stage_nodes[i - 1])
    local: LinkClass = link if link != "none" else ("nvlink" if machine.interconnect == "nvlink" else "pcie-p2p")
    return ReplicaLinks(tp_link=link, local_link=local, network_hops=hops)


@dataclass(frozen=True)
class StepModel:
    """Everything a decode step's time depends on for one placement, resolved once: the slowest GPU's memory
    and speed, the links and the model's per-token work. Its methods price a step at a given batch."""

    cm: CostModel
    spec: ModelSpec
    tp: int
    worst: GpuMemory
    """The replica's GPU with the most to read per step: it sets the pace."""
    links: ReplicaLinks
    network: Network
    mean_context: float
    """Tokens in a request's KV cache on average."""
    dtype_bytes: int
    bandwidth: float
    """The slowest GPU's achieved memory bandwidth, bytes/s."""
    peak_flops: float
    flops_per_token: float
    """2 FLOPs per active parameter per token, the slowest GPU's share."""

    def link_bandwidth(self, cls: str) -> float:
        return self.network.bandwidth if cls == "network" else self.cm.bw(cls)

    def link_latency(self, cls: str) -> float:
        return self.network.latency_s if cls == "network" else self.cm.latency(cls)

    def stage(self, b: float) -> StageTime:
        """One stage's GPU work for a micro-batch of ``b`` requests."""
        w = self.worst
        read = w.weights_bytes * weights_read_fraction(self.spec, b) + b * self.mean_context * w.kv_bytes_per_token
        comm = 0.0
        if self.tp > 1:
            link = self.links.tp_link
            msg = b * self.spec.hidden_size * self.dtype_bytes
            per_ar = self.link_latency(link) + 2 * (self.tp - 1) / self.tp * msg / self.link_bandwidth(link)
            comm = 2 * w.layers * per_ar
        compute = b * self.flops_per_token / (self.peak_flops * self.cm.compute_efficiency)
        return StageTime(memory_s=read / self.bandwidth, comm_s=comm, compute_s=compute)

    def host(self, b: float) -> float:
        """The engine's host work per step for ``b`` running requests."""
        return self.cm.step_floor_s + self.cm.seq_overhead_s * b

    def hop(self, cls: str, tokens: float) -> float:
        """``tokens`` tokens' activations crossing one stage boundary over a link of class ``cls``."""
        act = self.spec.hidden_size * self.dtype_bytes  # bytes of one token's activations
        return self.link_latency(cls) + tokens * act / self.link_bandwidth(cls)


def step_model(
    req: PlanRequest, machine: Machine, est: MemoryEstimate, replica: tuple[Gpu, ...], mean_context: float
) -> StepModel:
    """Resolve what a decode step of ``est`` on ``replica`` costs, for requests ``mean_context`` tokens long."""
    cm = req.cost
    worst = max(est.per_gpu, key=lambda m: m.weights_bytes + m.kv_bytes_per_token)
    bw = (worst.gpu.memory_bandwidth_gbps or 1000.0) * 1e9 * cm.bandwidth_efficiency
    peak_flops = (worst.gpu.tensor_tflops or 0.0) * 1e12 or bw / cm.bandwidth_efficiency * cm.default_flops_per_byte
    # Split over the replica's GPUs as their weights are.
    weights_total = sum(m.weights_bytes for m in est.per_gpu) or 1
    return StepModel(
        cm=cm,
        spec=req.spec,
        tp=est.tp,
        worst=worst,
        links=replica_links(machine, replica, est.tp, est.pp),
        network=find_network(req.network),
        mean_context=mean_context,
        dtype_bytes=DTYPE_BYTES[est.dtype],
        bandwidth=bw,
        peak_flops=peak_flops,
        flops_per_token=2.0 * param_breakdown(req.spec).active() * worst.weights_bytes / weights_total,
    )


def ranking_batch(req: PlanRequest, est: MemoryEstimate, mean_context: float) -> int:
    """Requests per replica at the ranking load: one for the latency objective, else as many as the KV cache holds
    at ``mean_context`` tokens each (at least one, at most max_num_seqs)."""
    if req.objective == "latency":
        return 1
    usable = max(0, est.num_blocks - 1) * est.settings.block_size
    return max(1, min(est.settings.max_num_seqs, int(usable // max(1.0, mean_context))))


@dataclass(frozen=True)
class PipelineHops:
    """Activations crossing a replica's stage boundaries once per step, for one micro-batch."""

    network_s: float
    """One boundary over the network."""
    mean_s: float
    """The mean over all boundaries (over the network where stages sit on different nodes, else inside the node);
    0 without pipeline parallelism."""


def pipeline_hops(m: StepModel, pp: int, micro: float) -> PipelineHops:
    """The per-boundary hop times of a ``pp``-stage replica for ``micro`` requests."""
    net_hop = m.hop("network", micro)
    if pp <= 1:
        return PipelineHops(network_s=net_hop, mean_s=0.0)
    hops = m.links.network_hops
    total = hops * net_hop + (pp - 1 - hops) * m.hop(m.links.local_link, micro)
    return PipelineHops(network_s=net_hop, mean_s=total / (pp - 1))


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
    then ``tokens_per_s`` is the throughput of all replicas at that batch.

    A step: each stage takes the longer of the engine's host work and its GPU work (memory reads, all-reduces,
    matrix products), the stages run one after another with the activations hopping between them."""
    pp = est.pp
    mean_ctx = mean_context if mean_context is not None else max_len * req.cost.mean_context_fraction
    m = step_model(req, machine, est, replica, mean_ctx)
    load_given = batch is not None
    if batch is None:
        batch = ranking_batch(req, est, mean_ctx)
    micro = max(1.0, batch / pp)
    work = m.stage(micro)
    stage = max(m.host(micro), work.gpu_s)
    hops = pipeline_hops(m, pp, micro)
    hop = hops.mean_s
    eff = req.cost.pp_bubble_efficiency if pp > 1 else 1.0
    throughput = dp * micro / (stage + hop) * eff
    single = 1.0 / (pp * max(m.host(1), m.stage(1).gpu_s) + (pp - 1) * hop)
    net_hops = m.links.network_hops
    return Cost(
        batch=batch,
        step_ms=(pp * stage + (pp - 1) * hop) * 1e3,
        memory_ms=work.memory_s * 1e3,
        comm_ms=work.comm_s * 1e3,
        compute_ms=work.compute_s * 1e3,
        host_ms=m.host(micro) * 1e3,
        tokens_per_s=single if req.objective == "latency" and not load_given else throughput,
        single_stream_tokens_per_s=single,
        link=m.links.tp_link,
        network_hops=net_hops,
        network_hop_ms=net_hops * hops.network_s * 1e3,
        prefill_hop_ms=m.hop("network", est.settings.max_num_batched_tokens) * 1e3 if net_hops else 0.0,
    )
