"""Placement search: every (TP, PP, DP) over an inventory, checked against vLLM's rules, sized, and ranked.

Pure: the caller resolves the model and probes (or simulates) the GPUs; ``plan`` decides.

How a candidate is judged (docs/planning.md has the long form):

1. **Rules** vLLM enforces, each with its reason: TP divides the attention heads; TP stays within a node; KV
   heads (TP ≤ kv: kv % TP == 0, else TP % kv == 0); the MLP width divides by TP; quantized kernels (4/8-bit
   group-g: each rank's row-parallel input a multiple of g; block FP8: each rank's MLP width a multiple of the
   block); PP ≤ layers; TP×PP×DP ≤ GPUs.
2. **Memory** (core.memory): fits the target context × concurrency / fits only a shorter context (the longest
   that fits, as ``--max-model-len auto`` finds it) / does not fit.
3. **Cost model** for ranking fitting candidates (``objective``): decode is memory-bandwidth bound. A decode
   step on one GPU reads its weight shard (an MoE: the experts the batch touches) and the KV of the batch:
   ``t_mem = (weights × read_fraction + batch × mean_context × kv_bytes_per_token) / (bandwidth × efficiency)``,
   never less than the engine's per-step floor. TP adds two all-reduces per layer of ``batch × hidden``
   activations: ``t_ar = latency + 2(tp−1)/tp × message / link_bandwidth``, where the link is NVLink, PCIe
   with peer-to-peer, or PCIe without P2P (through host memory: slowest). PP splits the step over stages,
   pipelines ``pp`` micro-batches (a bubble factor) and adds a hop per stage. DP multiplies throughput.
   *throughput* scores tokens/s of all replicas with the batch the KV cache can hold (requests assumed half
   full on average); *latency* scores one request's decode speed (tokens/s at batch 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from qwendeploy.core import family_rules
from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import (
    CURRENT_VLLM,
    DEFAULT_CALIBRATION,
    DTYPE_BYTES,
    KV_DTYPE_BYTES,
    Accounting,
    Calibration,
    EngineSettings,
    MemoryEstimate,
    accounting_for,
    effective_quantization,
    estimate,
    resolve_dtype,
)
from qwendeploy.core.models import ModelSpec, catalog
from qwendeploy.core.networks import NETWORKS, SLOW_HOP_FRACTION, SLOW_PREFILL_HOP_S, find_network
from qwendeploy.core.params import param_breakdown
from qwendeploy.core.releases import release_note
from qwendeploy.core.units import GiB, human_size
from qwendeploy.errors import BadInput, PlanInfeasible

Objective = Literal["throughput", "latency"]
Status = Literal["fits", "shorter", "no"]
LinkClass = Literal["none", "nvlink", "pcie-p2p", "pcie-no-p2p", "network"]


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
    network: str = "100gbe"
    """Link between nodes (core.networks.NETWORKS): its bandwidth and latency price PP hops across nodes."""
    disable_custom_all_reduce: bool = False
    """``--disable-custom-all-reduce``: vLLM allocates no custom all-reduce buffers."""
    allow_untrained_context: bool = False
    """Plan a dual-chunk-attention (1M) model past its trained window although vLLM has no DCA."""
    vllm_version_source: str = ""
    """Why this release: ``installed`` (package metadata), ``asked`` (--vllm-version) or empty (the newest modelled)."""


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


# ----------------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------------


def tp_rule_violation(spec: ModelSpec, tp: int, *, quantization: str | None = None) -> tuple[str, str] | None:
    """The first vLLM rule that forbids tensor-parallel size ``tp`` for ``spec``: (rule id, reason), or None."""
    heads, kv = spec.num_attention_heads, spec.num_key_value_heads
    if heads % tp:
        return "heads", f"{heads} attention heads cannot be split over {tp} GPUs ({heads} is not divisible by {tp})"
    if tp <= kv and kv % tp:
        return "kv_heads", f"{kv} KV heads cannot be split over {tp} GPUs ({kv} is not divisible by {tp})"
    if tp > kv and tp % kv:
        return (
            "kv_heads",
            (f"{kv} KV heads cannot be replicated over {tp} GPUs (vLLM needs {tp} to be a multiple of {kv})"),
        )
    width = spec.moe.moe_intermediate_size if spec.moe else spec.intermediate_size
    what = "moe_intermediate_size" if spec.moe else "intermediate_size"
    # With MoE, vLLM's --enable-expert-parallel places whole experts instead of splitting them over TP, which
    # lifts the two expert-width rules below; qwendeploy does not plan expert parallelism, so it says so.
    ep_tip = " (vLLM's --enable-expert-parallel avoids splitting experts; not planned here)" if spec.moe else ""
    if width and width % tp:
        return "mlp", f"{what} {width} is not divisible by {tp}{ep_tip}"
    q = effective_quantization(spec, quantization)
    if q is not None and width:
        per_rank = width // tp
        attn_per_rank = heads * spec.head_dim // tp
        if q.method in ("awq", "gptq", "awq_marlin", "gptq_marlin") and q.group_size:
            g = q.group_size
            if per_rank % g or attn_per_rank % g:
                return "quant_group", (
                    f"{q.method} group size {g}: each of {tp} ranks would get {per_rank} MLP / {attn_per_rank} "
                    f"attention input columns, not a multiple of {g}"
                )
        if q.block_size:
            bn = q.block_size[0]
            if per_rank % bn:
                return "fp8_block", (
                    f"block FP8 ({bn}×{q.block_size[1]}): {what} {width} / {tp} = {per_rank} per rank is not a "
                    f"multiple of {bn}{ep_tip}"
                )
    return None


def valid_tp_sizes(spec: ModelSpec, limit: int, *, quantization: str | None = None) -> list[int]:
    """Tensor-parallel sizes up to ``limit`` that pass every rule."""
    return [t for t in range(1, limit + 1) if tp_rule_violation(spec, t, quantization=quantization) is None]


def yarn_override(spec: ModelSpec, max_model_len: int) -> dict[str, Any] | None:
    """The ``--hf-overrides`` a context beyond the native window needs (vLLM 0.33 form), or None.

    Raises:
        BadInput: the context exceeds what the model supports even with its published YaRN factor.
    """
    native = spec.max_position_embeddings
    if max_model_len <= native:
        return None
    original = getattr(spec, "yarn_original_max_position_embeddings", None) or spec.original_max_position_embeddings
    factor_max = spec.yarn_factor
    limit = int(original * factor_max) if factor_max else native
    if not factor_max or max_model_len > limit:
        how = (
            f"with YaRN (factor {factor_max:g} × {original}) it reaches {limit}"
            if factor_max
            else "and it has no published YaRN recipe"
        )
        raise BadInput(
            f"{spec.id} supports at most {max(limit, native)} tokens of context: its native window is {native} "
            f"{how}; --max-model-len {max_model_len} is beyond that.",
            hint=f"Use --max-model-len {max(limit, native)} or less.",
        )
    factor = 2.0
    while original * factor < max_model_len and factor < factor_max:
        factor *= 2
    factor = min(factor, factor_max)
    return {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original,
            "rope_theta": spec.rope_theta,
        },
        "max_position_embeddings": int(original * factor),
    }


def default_batching(gpu: Gpu) -> tuple[int, int]:
    """vLLM's (max_num_seqs, max_num_batched_tokens) defaults for the API server on this GPU.

    Large GPUs (≥ 70 GiB, not A100) get 1024 / 8192, others 256 / 2048 (vLLM's ``EngineArgs`` defaults).
    """
    if gpu.total_bytes >= 70 * GiB and "A100" not in gpu.name.upper():
        return 1024, 8192
    return 256, 2048


def _is_geforce(gpu: Gpu) -> bool:
    return "GEFORCE" in gpu.name.upper() or re.search(r"RTX\s*[345]0\d\d", gpu.name.upper()) is not None


def link_class(machine: Machine, group: Sequence[Gpu]) -> LinkClass:
    """How the GPUs of one TP group reach each other (the slowest pair decides)."""
    if len(group) < 2:
        return "none"
    if len({g.node for g in group}) > 1:
        return "network"
    worst: LinkClass = "nvlink"
    rank = {"nvlink": 0, "pcie-p2p": 1, "pcie-no-p2p": 2}
    for i, a in enumerate(group):
        for b in group[i + 1 :]:
            link = machine.link(a.index, b.index)
            if link is not None:
                if link.kind == "nvlink" and link.p2p is not False:
                    cls: LinkClass = "nvlink"
                elif link.kind == "nvlink":
                    cls = "pcie-no-p2p"  # NVLink bridged but CUDA peer access denied (e.g. between containers)
                else:
                    p2p = link.p2p if link.p2p is not None else not (_is_geforce(a) or _is_geforce(b))
                    cls = "pcie-p2p" if p2p else "pcie-no-p2p"
            elif machine.interconnect == "nvlink":
                cls = "nvlink"
            else:
                cls = "pcie-no-p2p" if (_is_geforce(a) or _is_geforce(b)) else "pcie-p2p"
            if rank[cls] > rank[worst]:
                worst = cls
    return worst


def _custom_all_reduce(link: LinkClass, tp: int) -> bool:
    # vLLM's custom all-reduce needs P2P; on PCIe it is used for two GPUs only.
    return tp > 1 and (link == "nvlink" or (link == "pcie-p2p" and tp == 2))


# ----------------------------------------------------------------------------------------------------------
# GPU assignment
# ----------------------------------------------------------------------------------------------------------


def _tp_groups(machine: Machine, tp: int) -> list[tuple[Gpu, ...]]:
    """TP groups, never crossing a node, the group whose weakest GPU has the most free memory first."""
    groups: list[tuple[Gpu, ...]] = []
    for node in sorted({g.node for g in machine.gpus}):
        mine = sorted((g for g in machine.gpus if g.node == node), key=lambda g: (-g.free_bytes, g.index))
        for i in range(0, len(mine) - tp + 1, tp):
            groups.append(tuple(mine[i : i + tp]))
    groups.sort(key=lambda grp: -min(g.free_bytes for g in grp))
    return groups


def _dp_options(machine: Machine, tp: int, pp: int) -> list[int]:
    """Replica counts worth trying for a TP × PP shape, most replicas first.

    On GPUs with equal free memory fewer replicas only lose throughput, so the most that fit the inventory is
    the only count. When free memory differs (memory held by other processes), every replica is sized to the
    GPU with the least free memory, so each smaller count that leaves a busier GPU out is tried too.
    """
    most = max(1, len(machine.gpus) // (tp * pp))
    groups = _tp_groups(machine, tp)
    usable = min(most, len(groups) // pp)
    if usable < 1:
        return [most]
    weakest = [min(g.free_bytes for grp in groups[: pp * d] for g in grp) for d in range(1, usable + 1)]
    out = [most]
    for d in range(usable, 0, -1):
        if d < most and (d == usable or weakest[d - 1] > weakest[d]):
            out.append(d)
    return out


def _skips_busy_gpu(machine: Machine, used: Sequence[Gpu]) -> bool:
    """Whether a GPU with less free memory than every GPU of the placement was left out."""
    if not used:
        return False
    taken = {(g.node, g.index) for g in used}
    floor = min(g.free_bytes for g in used)
    return any(g.free_bytes < floor for g in machine.gpus if (g.node, g.index) not in taken)


def left_out(machine: Machine, used: Sequence[Gpu]) -> str:
    """Which GPUs of the inventory a placement leaves unused, and why (empty when it uses them all)."""
    taken = {(g.node, g.index) for g in used}
    rest = [g for g in machine.gpus if (g.node, g.index) not in taken]
    if not rest or not used:
        return ""
    floor = min(g.free_bytes for g in used)
    busy = [g for g in rest if g.free_bytes < floor]
    idle = [g for g in rest if g.free_bytes >= floor]
    parts = []
    if busy:
        frees = ", ".join(f"GPU {g.index} has {_gib(g.free_bytes)} free" for g in busy)
        parts.append(
            f"leaves GPU {', '.join(str(g.index) for g in busy)} out for less free memory ({frees}; the GPUs used "
            f"have {_gib(floor)} or more, and every replica is sized to its GPU with the least free memory)"
        )
    if idle:
        parts.append(
            f"{'and ' if busy else 'leaves '}GPU {', '.join(str(g.index) for g in idle)} unused (too few GPUs "
            "left for another replica of this shape)"
        )
    return " ".join(parts)


def _assign(machine: Machine, tp: int, pp: int, dp: int) -> list[tuple[Gpu, ...]] | None:
    """GPUs of each replica: TP groups never cross a node; GPUs with the most free memory first."""
    groups = _tp_groups(machine, tp)
    if len(groups) < pp * dp:
        return None
    replicas = []
    for r in range(dp):
        stages = groups[r * pp : (r + 1) * pp]
        replicas.append(tuple(g for grp in stages for g in grp))
    return replicas


# ----------------------------------------------------------------------------------------------------------
# Evaluation of one candidate
# ----------------------------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


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

    def stage_time(b: float) -> tuple[float, float]:
        mem = (worst.weights_bytes * weights_read_fraction(req.spec, b) + b * mean_ctx * worst.kv_bytes_per_token) / bw
        comm = 0.0
        if tp > 1:
            msg = b * req.spec.hidden_size * dt
            per_ar = link_lat(link) + 2 * (tp - 1) / tp * msg / link_bw(link)
            comm = 2 * worst.layers * per_ar
        return mem, comm

    mem, comm = stage_time(micro)
    stage = max(cm.step_floor_s, mem + comm)
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
    m1, c1 = stage_time(1)
    single = 1.0 / (pp * max(cm.step_floor_s, m1 + c1) + (pp - 1) * hop)
    step = pp * stage + (pp - 1) * hop
    return Cost(
        batch=batch,
        step_ms=step * 1e3,
        memory_ms=mem * 1e3,
        comm_ms=comm * 1e3,
        tokens_per_s=single if req.objective == "latency" and not load_given else throughput,
        single_stream_tokens_per_s=single,
        link=link,
        network_hops=net_hops,
        network_hop_ms=net_hops * net_hop * 1e3,
        prefill_hop_ms=hop_time("network", est.settings.max_num_batched_tokens) * 1e3 if net_hops else 0.0,
    )


def _evaluate(
    req: PlanRequest,
    machine: Machine,
    tp: int,
    pp: int,
    dp: int,
    kv_dtype: str,
    max_len: int,
    acc: Accounting,
) -> Candidate:
    spec = req.spec

    def reject(rule: str, reason: str, **kw: Any) -> Candidate:
        return Candidate(tp, pp, dp, kv_dtype, "no", reason, 0.0, rule=rule, **kw)

    n = len(machine.gpus)
    gpn = machine.gpus_per_node
    violation = tp_rule_violation(spec, tp, quantization=req.quantization)
    if violation:
        return reject(*violation)
    if tp > gpn:  # TP stays within a node
        return reject("tp_node", f"tensor parallelism must stay within a node: TP {tp} > {gpn} GPUs per node")
    if pp > spec.num_hidden_layers:
        return reject("pp_layers", f"{spec.num_hidden_layers} layers cannot be split into {pp} pipeline stages")
    if tp * pp * dp > n:
        return reject("gpus", f"needs {tp * pp * dp} GPUs (TP {tp} × PP {pp} × DP {dp}); the inventory has {n}")
    quant = effective_quantization(spec, req.quantization)
    if quant is not None and quant.method == "fp8":
        old = [g for g in machine.gpus if g.compute_capability < (8, 0)]
        if old:
            return reject(
                "fp8_weights",
                (f"FP8 weights need compute capability ≥ 8.0; {old[0].name} is {old[0].compute_capability}"),
            )
    replicas = _assign(machine, tp, pp, dp)
    if replicas is None:
        return reject("gpus", f"cannot form {dp} replica(s) of TP {tp} × PP {pp} with TP groups inside a node")
    max_seqs_default, batched_default = default_batching(replicas[0][0])
    max_seqs = req.max_num_seqs or max_seqs_default
    batched = req.max_num_batched_tokens or batched_default
    if batched < max_seqs:
        # vLLM refuses max_num_batched_tokens < max_num_seqs: a fixed token budget lowers the default sequence cap
        # (the profile then writes it); a default token budget is raised to the sequence cap.
        if req.max_num_batched_tokens is None:
            batched = max_seqs
        else:
            max_seqs = batched
    cal = req.calibration
    default_util = acc.default_gpu_memory_utilization
    worst: tuple[MemoryEstimate, tuple[Gpu, ...], float] | None = None
    seen: set[tuple[object, ...]] = set()
    for replica in replicas:
        link = link_class(machine, replica[:tp])
        # Replicas on identical GPUs with the same free memory and links give the same estimate.
        signature = (link, *((g.name, g.total_bytes, g.free_bytes) for g in replica))
        if signature in seen:
            continue
        seen.add(signature)
        # Free memory counts: vLLM refuses to start when free < utilisation × total (after its CUDA context).
        room = min((g.free_bytes - cal.cuda_context_bytes) / g.total_bytes for g in replica)
        if req.gpu_memory_utilization is not None:
            util = req.gpu_memory_utilization
            if room < util:
                g = min(replica, key=lambda g: g.free_bytes)
                return reject(
                    "free_memory",
                    f"GPU {g.index} has {_gib(g.free_bytes)} free; vLLM needs gpu_memory_utilization {util} × "
                    f"{_gib(g.total_bytes)} = {_gib(util * g.total_bytes)} free (plus its CUDA context) to start",
                )
        else:
            util = min(default_util, math.floor(room * 100) / 100)
            if util < 0.05:
                g = min(replica, key=lambda g: g.free_bytes)
                return reject("free_memory", f"GPU {g.index} has only {_gib(g.free_bytes)} free")
        settings = EngineSettings(
            max_model_len=max_len,
            max_num_seqs=max_seqs,
            max_num_batched_tokens=batched,
            gpu_memory_utilization=util,
            kv_cache_dtype=kv_dtype,
            dtype=req.dtype,
            quantization=req.quantization,
            enforce_eager=req.enforce_eager,
            custom_all_reduce=_custom_all_reduce(link, tp) and not req.disable_custom_all_reduce,
            nvlink=link == "nvlink",
        )
        est = estimate(spec, replica, tp=tp, pp=pp, settings=settings, accounting=acc, calibration=cal)
        if worst is None or est.num_blocks < worst[0].num_blocks:
            worst = (est, replica, util)
    assert worst is not None
    est, replica, util = worst
    used = tuple(g for r in replicas for g in r)
    block = est.settings.block_size
    target_blocks = est.blocks_for(max_len, req.concurrency)
    per_gpu_fixed = max(
        m.capacity_bytes - m.kv_budget_bytes + target_blocks * m.kv_bytes_per_token * block for m in est.per_gpu
    )
    capacity = min(m.capacity_bytes for m in est.per_gpu)
    common = {
        "gpus": used,
        "estimate": est,
        "gpu_memory_utilization": util,
        "needed_bytes_per_gpu": per_gpu_fixed,
    }
    fixed = max(m.capacity_bytes - m.kv_budget_bytes for m in est.per_gpu)
    if any(m.kv_budget_bytes <= 0 for m in est.per_gpu) or est.num_blocks < 2:
        m0 = est.per_gpu[0]
        return reject(
            "memory",
            f"does not fit: weights {_gib(m0.weights_bytes)} + activation {_gib(m0.activation_bytes)} + overhead "
            f"{_gib(fixed - m0.weights_bytes - m0.activation_bytes)} per GPU leave no room for a KV cache in "
            f"{util} × {_gib(m0.gpu.total_bytes)} = {_gib(capacity)}" + _lowered(req, util, default_util, replica),
            **common,
        )
    # What sits outside the budget (CUDA context, graphs captured after the KV cache in some releases, the sampler
    # warm-up's working memory) must still fit in what the GPU physically has free.
    over = [m for m in est.per_gpu if m.footprint_bytes > m.gpu.free_bytes]
    if over:
        m = over[0]
        graphs = "" if m.graphs_in_budget else f"CUDA graphs {human_size(m.cuda_graph_bytes)}, "
        return reject(
            "cuda_graphs" if not m.graphs_in_budget else "footprint",
            f"the process would hold {human_size(m.footprint_bytes)} on GPU {m.gpu.index} ({util} budget "
            f"{human_size(m.capacity_bytes)} plus {graphs}CUDA context and working memory outside it in vLLM "
            f"{acc.vllm_version}) but {human_size(m.gpu.free_bytes)} is free; lower --gpu-memory-utilization"
            + (" or use --enforce-eager" if not m.graphs_in_budget else ""),
            **common,
        )
    fit_len = min(est.max_len_for(req.concurrency), _model_limit(spec))
    conc = f" × {req.concurrency} requests" if req.concurrency > 1 else ""
    # Say which GPUs were skipped only when a busier one was left out (not for a plain remainder).
    skipped = f"; {left_out(machine, used)}" if _skips_busy_gpu(machine, used) else ""
    if est.fits(req.concurrency):
        cost = decode_cost(req, machine, est, replica, dp, max_len)
        speed = "" if spec.is_pooling else f", ~{cost.tokens_per_s:,.0f} tok/s"
        reason = (
            f"fits {max_len} tokens{conc}: KV cache {est.kv_cache_tokens:,} tokens per replica "
            f"({est.max_concurrency:.2f}× concurrency){speed}"
        )
        reason += skipped
        return Candidate(
            tp,
            pp,
            dp,
            kv_dtype,
            "fits",
            reason,
            round(cost.tokens_per_s, 1),
            max_model_len_fit=fit_len,
            cost=cost,
            **common,  # type: ignore[arg-type]
        )
    if fit_len >= block:
        shorter = replace(est.settings, max_model_len=fit_len)
        est_short = replace(est, settings=shorter, max_concurrency=est.kv_cache_tokens / fit_len)
        cost = decode_cost(req, machine, est_short, replica, dp, fit_len)
        reason = (
            f"fits only {fit_len} tokens{conc} (target {max_len}): needs {_gib(per_gpu_fixed)} per GPU, "
            f"has {_gib(capacity)}"
        )
        reason += skipped
        return Candidate(
            tp,
            pp,
            dp,
            kv_dtype,
            "shorter",
            reason,
            round(cost.tokens_per_s, 1),
            max_model_len_fit=fit_len,
            cost=cost,
            rule="memory",
            **common,  # type: ignore[arg-type]
        )
    return reject(
        "memory",
        f"does not fit: needs {_gib(per_gpu_fixed)} per GPU for {max_len} tokens{conc}, has {_gib(capacity)}",
        **common,
    )


def _lowered(req: PlanRequest, util: float, default_util: float, replica: Sequence[Gpu]) -> str:
    """Why the budget is smaller than vLLM's default, when free memory lowered it."""
    if req.gpu_memory_utilization is not None or util >= default_util:
        return ""
    low = min(replica, key=lambda g: g.free_bytes)
    return f" (gpu_memory_utilization lowered to {util} because GPU {low.index} has only {_gib(low.free_bytes)} free)"


def _model_limit(spec: ModelSpec) -> int:
    original = getattr(spec, "yarn_original_max_position_embeddings", None) or spec.original_max_position_embeddings
    if spec.yarn_factor:
        return max(spec.max_position_embeddings, int(original * spec.yarn_factor))
    return spec.max_position_embeddings


# ----------------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------------


def _tp_options(spec: ModelSpec, req: PlanRequest, gpn: int) -> list[int]:
    if req.tp is not None:
        return [req.tp]
    opts = {t for t in (1, 2, 4, 8, 16, 32, 64) if t <= gpn}
    opts |= {t for t in range(1, gpn + 1) if spec.num_attention_heads % t == 0}
    return sorted(opts)


def _pp_options(spec: ModelSpec, req: PlanRequest, n: int, tp: int, nodes: int) -> list[int]:
    if req.pp is not None:
        return [req.pp]
    n = n // (req.dp or 1)
    opts = {p for p in (1, 2, 4, 8, 16) if tp * p <= n and p <= spec.num_hidden_layers}
    opts |= {nodes * k for k in (1, 2) if tp * nodes * k <= n and nodes * k <= spec.num_hidden_layers}
    return sorted(opts) or [1]


def _kv_options(req: PlanRequest, machine: Machine) -> list[str]:
    if req.kv_cache_dtype is not None:
        return [req.kv_cache_dtype]
    if all(g.fp8 or g.compute_capability >= (8, 9) for g in machine.gpus):
        return ["auto", "fp8"]
    return ["auto"]


ONLINE_QUANTIZATION = ("fp8", "fbgemm_fp8", "ptpc_fp8")
"""Methods vLLM applies to a 16-bit checkpoint at load time; the others need a checkpoint quantized offline."""


def _check_quantization(spec: ModelSpec, asked: str | None) -> None:
    """``--quantization`` must match a quantized checkpoint, or be an online method for a 16-bit one
    (vLLM otherwise fails at load time, after minutes of start-up)."""
    if asked is None:
        return
    have = spec.quantization.method if spec.quantization is not None else None
    if have is not None:
        same = (have.replace("-", "_"), f"{have}_marlin", "marlin")
        if asked.replace("-", "_") not in same:
            raise BadInput(
                f"--quantization {asked} does not match {spec.id}, which is quantized with {have}.",
                hint="Leave --quantization out: vLLM reads the method from the checkpoint.",
            )
        return
    if asked not in ONLINE_QUANTIZATION:
        quantized = [m.id for m in catalog() if m.base_model == spec.id and m.quantization is not None]
        tip = f" Quantized variants of this model: {', '.join(quantized)}." if quantized else ""
        raise BadInput(
            f"--quantization {asked} needs a checkpoint quantized with it, and {spec.id} is a 16-bit checkpoint; "
            f"vLLM can quantize it only online ({', '.join(ONLINE_QUANTIZATION)}).{tip}",
            hint="Use --quantization fp8, or plan the quantized variant.",
        )


def _check_request(req: PlanRequest) -> None:
    spec, machine = req.spec, req.machine
    if not machine.gpus:
        raise BadInput("The inventory has no GPUs.", hint="Pass --gpus, e.g. --gpus 4xRTX4090D.")
    mig = [g for g in machine.gpus if g.mig_instances]
    if mig:
        g = mig[0]
        sizes = ", ".join(human_size(b) for b in g.mig_instances) or "unknown sizes"
        raise BadInput(
            f"GPU {g.index} ({g.name}) has MIG enabled: CUDA sees its {len(g.mig_instances)} MIG instance(s) "
            f"({sizes}), not the whole card, and qwendeploy plans whole GPUs.",
            hint=f"Disable MIG (nvidia-smi -i {g.index} -mig 0, then reset the GPU), choose other GPUs with --gpus, "
            "or plan for an instance-sized card with a simulated inventory.",
        )
    if req.concurrency < 1:
        raise BadInput(f"--concurrency must be at least 1, got {req.concurrency}.")
    _check_quantization(spec, req.quantization)
    if req.gpu_memory_utilization is not None and not 0 < req.gpu_memory_utilization <= 1:
        raise BadInput(f"--gpu-memory-utilization must be in (0, 1], got {req.gpu_memory_utilization}.")
    for name, value in (("--tensor-parallel-size", req.tp), ("--pipeline-parallel-size", req.pp)):
        if value is not None and value < 1:
            raise BadInput(f"{name} must be at least 1, got {value}.")
    if req.dp is not None and req.dp < 1:
        raise BadInput(f"--data-parallel-size must be at least 1, got {req.dp}.")
    for name, value in (("--max-num-seqs", req.max_num_seqs), ("--max-num-batched-tokens", req.max_num_batched_tokens)):
        if value is not None and value < 1:
            raise BadInput(f"{name} must be at least 1, got {value}.")
    seqs, tokens = req.max_num_seqs, req.max_num_batched_tokens
    if seqs is not None and tokens is not None and tokens < seqs:
        raise BadInput(
            f"vLLM refuses this: max_num_batched_tokens ({tokens}) must be greater than or equal to max_num_seqs "
            f"({seqs}).",
            hint=f"Raise --max-num-batched-tokens to {seqs} or lower --max-num-seqs.",
        )
    if req.kv_cache_dtype not in (None, "auto") and req.kv_cache_dtype not in KV_DTYPE_BYTES:
        raise BadInput(
            f"Unsupported --kv-cache-dtype {req.kv_cache_dtype!r}.",
            hint="Use auto, fp8 (fp8_e4m3), fp8_e5m2, bfloat16 or float16.",
        )
    if req.dtype not in ("auto", *DTYPE_BYTES):
        raise BadInput(f"Unsupported --dtype {req.dtype!r}.", hint="Use auto, bfloat16, float16 or float32.")
    if req.max_model_len is not None and req.max_model_len < 16:
        raise BadInput(f"--max-model-len must be at least 16, got {req.max_model_len}.")
    n = len(machine.gpus)
    if req.tp is not None:
        violation = tp_rule_violation(spec, req.tp, quantization=req.quantization)
        if violation:
            fits = [t for t in valid_tp_sizes(spec, min(n, machine.gpus_per_node), quantization=req.quantization)]
            best = max(fits) if fits else 1
            dp_hint = n // best
            raise BadInput(
                f"Cannot use tensor_parallel_size={req.tp} for {spec.id}: {violation[1]}.",
                hint=(
                    f"tensor_parallel_size values that fit this model on {n} GPUs: {', '.join(map(str, fits))}. "
                    f"To fix: --tp {best}" + (f" --dp {dp_hint} uses all {n} GPUs." if dp_hint > 1 else ".")
                ),
            )
    if req.tp is not None and req.tp > machine.gpus_per_node:
        raise BadInput(
            f"Cannot use tensor_parallel_size={req.tp}: a node has {machine.gpus_per_node} GPUs and tensor "
            "parallelism must stay within a node.",
            hint="Use --pp to span nodes.",
        )
    used = (req.tp or 1) * (req.pp or 1) * (req.dp or 1)
    if used > n:
        raise BadInput(f"TP × PP × DP = {used} GPUs, but the inventory has {n}.")
    find_network(req.network)  # BadInput for an unknown name
    if req.pp is not None and req.pp > spec.num_hidden_layers:
        raise BadInput(f"--pipeline-parallel-size {req.pp} exceeds the model's {spec.num_hidden_layers} layers.")


def plan(req: PlanRequest, *, suggest: bool = True) -> Plan:
    """Search every placement of ``req.spec`` on ``req.machine`` and choose one.

    Args:
        req: model, inventory, target and fixed choices.
        suggest: compute the cheapest changes that would fit when nothing does (re-plans with changes).

    Returns:
        The plan; ``plan.fits`` is False when nothing reaches the target (``suggestions`` says what would).

    Raises:
        BadInput: a fixed choice breaks a rule (message names it and the valid values), or the context is
            beyond the model's maximum.
    """
    _check_request(req)
    spec, machine = req.spec, req.machine
    try:
        acc = accounting_for(req.vllm_version)
    except ValueError as e:
        raise BadInput(str(e)) from None
    max_len = req.max_model_len or family_rules.default_context(spec)
    family_rules.check_context(spec, max_len, allow_untrained=req.allow_untrained_context)
    yarn = yarn_override(spec, max_len) if not spec.dual_chunk_trained_length else None
    overrides = yarn or family_rules.hf_overrides(spec)
    n, gpn, nodes = len(machine.gpus), machine.gpus_per_node, machine.nodes
    candidates: list[Candidate] = []
    for tp in _tp_options(spec, req, gpn):
        for pp in _pp_options(spec, req, n, tp, nodes):
            dps = [req.dp] if req.dp is not None else _dp_options(machine, tp, pp)
            for dp in dps:
                kv_opts = _kv_options(req, machine)
                first = _evaluate(req, machine, tp, pp, dp, kv_opts[0], max_len, acc)
                candidates.append(first)
                # fp8 KV only as a fallback for a shape whose default KV cache misses the target.
                if first.status == "shorter" and len(kv_opts) > 1:
                    candidates.append(_evaluate(req, machine, tp, pp, dp, kv_opts[1], max_len, acc))
    order = {"fits": 0, "shorter": 1, "no": 2}
    ranked = sorted(
        candidates,
        key=lambda c: (
            order[c.status],
            -c.score if c.status != "shorter" else -(c.max_model_len_fit or 0),
            c.tp * c.pp,
        ),
    )
    fitting = [c for c in ranked if c.fits]
    chosen = fitting[0] if fitting else None
    dtype = resolve_dtype(spec, req.dtype)
    base_settings = (chosen.estimate.settings if chosen and chosen.estimate else None) or EngineSettings(
        max_model_len=max_len, dtype=dtype, kv_cache_dtype=req.kv_cache_dtype or "auto"
    )
    notes: list[str] = family_rules.notes(
        spec,
        chosen.estimate if chosen is not None else None,
        allow_untrained=req.allow_untrained_context,
        max_model_len=max_len,
    )
    notes.insert(0, release_note(req.vllm_version, req.vllm_version_source))
    if any(not g.bf16 for g in machine.gpus) and dtype == "bfloat16":
        notes.append(
            "GPUs without bfloat16 (compute capability < 8.0): the profile runs the model in float16 "
            "(--dtype float16; same memory)."
        )
    if yarn:
        notes.append(
            f"{max_len} tokens is beyond the native {spec.max_position_embeddings}: YaRN (factor "
            f"{yarn['rope_parameters']['factor']:g}) via --hf-overrides; static YaRN may slightly affect short "
            "prompts."
        )
    if (
        chosen is not None
        and chosen.estimate is not None
        and req.max_num_seqs is None
        and req.max_num_batched_tokens is not None
        and chosen.estimate.settings.max_num_seqs < default_batching(chosen.gpus[0])[0]
    ):
        n_seqs = chosen.estimate.settings.max_num_seqs
        notes.append(
            f"--max-num-seqs lowered to {n_seqs} (written to the profile): vLLM requires max_num_batched_tokens "
            f"({req.max_num_batched_tokens}) ≥ max_num_seqs, and its default here is "
            f"{default_batching(chosen.gpus[0])[0]}."
        )
    if chosen is not None and (out := left_out(machine, chosen.gpus)):
        notes.append(f"{chosen.label} {out}.")
    why = _explain(req, ranked, chosen, max_len)
    if spec.is_pooling:
        why = family_rules.without_decode_speed(why, chosen.label if chosen is not None else None)
    suggestions: tuple[str, ...] = ()
    if chosen is None and suggest:
        suggestions = _suggest(req, ranked, max_len)
    return Plan(
        request=req,
        max_model_len=max_len,
        settings=base_settings,
        accounting=acc,
        candidates=tuple(ranked),
        chosen=chosen,
        hf_overrides=overrides,
        why=why,
        suggestions=suggestions,
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------------------------------
# Explaining and suggesting
# ----------------------------------------------------------------------------------------------------------


_LINK_WORDS = {
    "none": "no all-reduce",
    "nvlink": "NVLink",
    "pcie-p2p": "PCIe with peer-to-peer",
    "pcie-no-p2p": "PCIe without peer-to-peer (through host memory)",
    "network": "the network",
}


def _explain(req: PlanRequest, ranked: list[Candidate], chosen: Candidate | None, max_len: int) -> tuple[str, ...]:
    if chosen is None or chosen.cost is None or chosen.estimate is None:
        return ("No placement holds the target context; see the suggestions.",)
    c, cost, est = chosen, chosen.cost, chosen.estimate
    lines = [
        f"{c.label} wins for {req.objective}: ~{cost.tokens_per_s:,.0f} tok/s estimated "
        f"({'one request' if req.objective == 'latency' else f'{c.dp} replica(s) × batch {cost.batch}'}).",
    ]
    kv_per_gpu = est.per_gpu[0].kv_cache_bytes
    held = est.per_gpu[0].weights_bytes
    bd = param_breakdown(req.spec)
    active = bd.active() / bd.total() if bd.total() else 1.0
    # An MoE step reads only the experts its tokens are routed to; a TP 1 replica has no all-reduce at all.
    reads = (
        f"{_gib(held * active)} of weights per GPU (the active experts of the {_gib(held)} it holds)"
        if active < 0.999
        else f"{_gib(held)} of weights per GPU"
    )
    comm = (
        f"of which {cost.comm_ms:.1f} ms is all-reduce over {_LINK_WORDS[cost.link]}"
        if cost.link != "none"
        else "with no all-reduce (TP 1)"
    )
    lines.append(
        f"Each replica holds {est.kv_cache_tokens:,} KV tokens ({est.per_gpu[0].kv_bytes_per_token:,} B/token per "
        f"GPU, {_gib(kv_per_gpu)} of KV per GPU); a decode step reads {reads} and takes ~{cost.step_ms:.1f} ms, "
        f"{comm}."
    )
    others = [x for x in ranked if x.fits and x is not c and x.cost is not None]
    # Compare with the best of a different shape: more replicas vs more TP.
    contrast = next((x for x in others if (x.tp, x.pp) != (c.tp, c.pp)), None)
    if contrast is not None and contrast.cost is not None and contrast.estimate is not None:
        ratio = cost.tokens_per_s / contrast.cost.tokens_per_s if contrast.cost.tokens_per_s else float("inf")
        lines.append(
            f"Against {contrast.label} (~{contrast.cost.tokens_per_s:,.0f} tok/s, {ratio:.2f}× slower): "
            f"{_contrast(c, contrast)}."
        )
    lines += _network_lines(req, c)
    if c.kv_cache_dtype.startswith("fp8"):
        lines.append("It stores the KV cache in fp8 (half the bytes per token); quality impact is usually small.")
    shorter = [x for x in ranked if x.status == "shorter"]
    if shorter:
        s = shorter[0]
        lines.append(f"{s.label} would hold only {s.max_model_len_fit:,} tokens of the {max_len:,} asked.")
    return tuple(lines)


def _contrast(c: Candidate, x: Candidate) -> str:
    """Why ``c`` outranks ``x``, in statements that hold for these two (not a story about GPU counts)."""
    assert c.cost is not None and c.estimate is not None and x.cost is not None and x.estimate is not None
    reasons: list[str] = []
    wc, wx = c.estimate.per_gpu[0].weights_bytes, x.estimate.per_gpu[0].weights_bytes
    if wc < wx * 0.95:
        reasons.append(f"each GPU holds and reads {_gib(wc)} of weights instead of {_gib(wx)}")
    kvc, kvx = c.estimate.kv_cache_tokens * c.dp, x.estimate.kv_cache_tokens * x.dp
    if kvc > kvx * 1.05:
        reasons.append(
            f"it has more KV cache in all ({kvc:,} vs {kvx:,} tokens), so it decodes more requests at once "
            f"({c.cost.batch * c.dp} vs {x.cost.batch * x.dp})"
        )
    if x.pp > c.pp:
        reasons.append(
            f"{x.label} sends every step through {x.pp} pipeline stages, which idle part of the time (bubble) "
            "and hand activations on"
        )
    if c.dp > x.dp and c.tp < x.tp:
        reasons.append(f"independent replicas avoid {x.label}'s all-reduce ({x.cost.comm_ms:.1f} ms per step)")
    elif c.cost.comm_ms < x.cost.comm_ms:
        reasons.append(f"less all-reduce per step ({c.cost.comm_ms:.1f} vs {x.cost.comm_ms:.1f} ms)")
    if not reasons:
        reasons.append("the cost model's step time is shorter for the batch each holds")
    out = "; ".join(reasons)
    if c.cost.comm_ms > x.cost.comm_ms and c.cost.link != "none":
        out += f"; that outweighs its own all-reduce ({c.cost.comm_ms:.1f} ms per step)"
    return out


def _network_lines(req: PlanRequest, c: Candidate) -> list[str]:
    """What the inter-node link costs the chosen placement; says so when PP across it hurts."""
    nodes = len({g.node for g in c.gpus})
    if nodes < 2 or c.cost is None:
        return []
    net, cost = find_network(req.network), c.cost
    if cost.network_hops == 0:
        return [
            f"Each replica stays inside one node ({c.dp} replicas over {nodes} nodes): no traffic crosses "
            f"the {net.name} between nodes except requests."
        ]
    share = cost.network_hop_ms / cost.step_ms if cost.step_ms else 0.0
    line = (
        f"Pipeline stages span {nodes} nodes over {net.name}: activations cross {cost.network_hops} network "
        f"hop(s) per step, {cost.network_hop_ms:.2f} ms of the {cost.step_ms:.1f} ms decode step ({share:.0%}); "
        f"a {c.estimate.settings.max_num_batched_tokens if c.estimate else 0}-token prefill chunk takes "
        f"{cost.prefill_hop_ms:.1f} ms per hop."
    )
    out = [line]
    if share > SLOW_HOP_FRACTION or cost.prefill_hop_ms / 1e3 > SLOW_PREFILL_HOP_S:
        faster = [n for n in NETWORKS if n.bandwidth > net.bandwidth]
        out.append(
            f"PP across {net.id} hurts: "
            + (f"the link adds {share:.0%} to every decode step" if share > SLOW_HOP_FRACTION else "")
            + (" and " if share > SLOW_HOP_FRACTION and cost.prefill_hop_ms / 1e3 > SLOW_PREFILL_HOP_S else "")
            + (
                f"every prefill chunk waits {cost.prefill_hop_ms:.0f} ms per hop (time to first token grows)"
                if cost.prefill_hop_ms / 1e3 > SLOW_PREFILL_HOP_S
                else ""
            )
            + (
                f"; {faster[-1].id} would move it {faster[-1].bandwidth / net.bandwidth:.0f}× faster."
                if faster
                else "."
            )
        )
    return out


def _suggest(req: PlanRequest, ranked: list[Candidate], max_len: int) -> tuple[str, ...]:
    out: list[str] = []
    freed = _free_the_gpus(req)
    if freed:
        out.append(freed)
    if req.kv_cache_dtype in (None, "auto") and all(g.compute_capability >= (8, 0) for g in req.machine.gpus):
        p = plan(replace(req, kv_cache_dtype="fp8"), suggest=False)
        if p.chosen is not None:
            out.append(f"--kv-cache-dtype fp8: fits with {p.chosen.label} (KV cache {_tokens(p.chosen)} tokens).")
    for variant in req.variants:
        try:
            p = plan(replace(req, spec=variant, quantization=None, variants=()), suggest=False)
        except BadInput:
            continue
        if p.chosen is not None:
            out.append(f"use {variant.id}: fits with {p.chosen.label} (KV cache {_tokens(p.chosen)} tokens).")
            break
    best_short = max((c.max_model_len_fit or 0 for c in ranked if c.status == "shorter"), default=0)
    if best_short:
        holder = next(c for c in ranked if c.status == "shorter" and c.max_model_len_fit == best_short)
        out.append(f"--max-model-len {best_short}: the longest context that fits ({holder.label}).")
    if req.concurrency > 1:
        p = plan(replace(req, concurrency=1), suggest=False)
        if p.chosen is not None:
            out.append(f"--concurrency 1: one {max_len}-token request fits with {p.chosen.label}.")
    more = None if freed else _more_gpus(req)  # freeing the GPUs you have is cheaper than buying more
    if more:
        out.append(more)
    if not out:
        out.append("No single change found that fits; try a smaller model.")
    return tuple(out)


def _tokens(c: Candidate) -> str:
    return f"{c.estimate.kv_cache_tokens:,}" if c.estimate else "?"


def _holders(g: Gpu) -> str:
    procs = sorted(g.processes, key=lambda p: -(p.used_bytes or 0))
    named = [
        f"PID {p.pid}" + (f" ({p.name[:40]})" if p.name else "") + (f" {_gib(p.used_bytes)}" if p.used_bytes else "")
        for p in procs[:3]
    ]
    return ", ".join(named) + (f" and {len(procs) - 3} more" if len(procs) > 3 else "") if named else ""


def _free_the_gpus(req: PlanRequest) -> str | None:
    """When other processes hold the GPUs: does the same request fit on the same GPUs, empty?"""
    busy = [g for g in req.machine.gpus if g.busy]
    if not busy:
        return None
    empty = replace(req.machine, gpus=tuple(g.emptied() for g in req.machine.gpus))
    try:
        p = plan(replace(req, machine=empty), suggest=False)
    except BadInput:
        return None
    if p.chosen is None:
        return None
    held = "; ".join(
        f"GPU {g.index} has {_gib(g.free_bytes)} free" + (f" ({_holders(g)} hold the rest)" if g.processes else "")
        for g in busy
    )
    vllm = any("vllm" in proc.name.lower() for g in busy for proc in g.processes)
    return (
        f"free the GPUs: {held}. Stop those processes"
        + (" (a vLLM server is among them: an earlier `qwendeploy serve` still running?)" if vllm else "")
        + f" and plan again: on the same GPUs, empty, it fits with {p.chosen.label} "
        f"(KV cache {_tokens(p.chosen)} tokens)."
    )


def _more_gpus(req: PlanRequest) -> str | None:
    m = req.machine
    template = m.gpus[0]
    gpn = m.gpus_per_node
    options: list[tuple[int, int]] = []
    for per_node in (2, 4, 8):
        if per_node > gpn:
            options.append((per_node, m.nodes))
    for nodes in (2, 4, 8):
        if nodes > m.nodes:
            options.append((max(gpn, 8), nodes))
    for per_node, nodes in options:
        gpus = tuple(
            replace(template.emptied(), index=node * per_node + i, node=node)
            for node in range(nodes)
            for i in range(per_node)
        )
        bigger = Machine(
            gpus=gpus, interconnect=m.interconnect, simulated=True, nodes=nodes, source=f"{per_node}x{template.name}"
        )
        try:
            p = plan(replace(req, machine=bigger, tp=None, pp=None, dp=None), suggest=False)
        except BadInput:
            continue
        if p.chosen is not None:
            where = f"{per_node}× {template.name}" + (f" on each of {nodes} nodes" if nodes > 1 else "")
            return f"more GPUs: {where} fits with {p.chosen.label}."
    return None


def raise_if_infeasible(p: Plan) -> None:
    """``PlanInfeasible`` (exit 1) with the computed suggestions when nothing fits."""
    if p.fits:
        return
    hint = "Cheapest changes that fit: " + " | ".join(p.suggestions) if p.suggestions else None
    busy = [g for g in p.request.machine.gpus if g.busy]
    used = sum(g.total_bytes - g.free_bytes for g in busy)
    raise PlanInfeasible(
        f"Nothing fits {p.request.spec.id} at {p.max_model_len} tokens"
        + (f" × {p.request.concurrency} requests" if p.request.concurrency > 1 else "")
        + f" on {len(p.request.machine.gpus)}× {p.request.machine.gpus[0].name}"
        + (f": other processes hold {_gib(used)} of GPU {', '.join(str(g.index) for g in busy)}." if busy else "."),
        hint=hint,
    )
