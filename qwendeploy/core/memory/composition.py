"""The estimate of one replica: every term per GPU, the KV budget each leaves, and the replica's KV-cache figures.

Three steps, as vLLM sizes its cache: settle what holds for the whole replica (``Replica``: the release's runner, the
dtypes, the checkpoint scale, the hybrid page pools); per GPU, the terms vLLM's profile charges and the blocks the rest
holds (``GpuBudget``); then the replica's block count, the minimum over its GPUs, which every GPU allocates
(``GpuMemory``, ``MemoryEstimate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.hybrid_attention import HybridLayout
from qwendeploy.core.memory.accounting import CURRENT_VLLM, Accounting, accounting_for
from qwendeploy.core.memory.activations import activation_bytes, with_encoder, working_bytes
from qwendeploy.core.memory.calibration import DEFAULT_CALIBRATION, Calibration
from qwendeploy.core.memory.dtypes import effective_quantization, resolve_dtype
from qwendeploy.core.memory.explanation import Explanation
from qwendeploy.core.memory.kv import hybrid_kv_bytes_per_token, hybrid_settings, kv_bytes_per_token
from qwendeploy.core.memory.overheads import cuda_graph_bytes, cuda_graph_capture_size, non_torch_bytes
from qwendeploy.core.memory.results import GpuMemory, MemoryEstimate
from qwendeploy.core.memory.settings import EngineSettings
from qwendeploy.core.memory.sharding import pp_layer_counts
from qwendeploy.core.memory.weights import WeightShard, checkpoint_scale, rotary_cache_bytes, weight_shard
from qwendeploy.core.models import ModelSpec, Quantization
from qwendeploy.core.params import ParamBreakdown, param_breakdown


@dataclass(frozen=True)
class Replica:
    """What holds for every GPU of one replica, settled once before its GPUs are looked at."""

    spec: ModelSpec
    tp: int
    pp: int
    ep: int
    settings: EngineSettings
    """The engine arguments, with vLLM's unified block size for a hybrid model."""
    acc: Accounting
    cal: Calibration
    runner: str
    """``v1`` or ``v2``: the model runner the release uses for the model."""
    graphs_in_budget: bool
    """Whether the release subtracts its CUDA-graph estimate from the KV budget."""
    dtype: str
    """The activation dtype (bfloat16 falls back to float16 below compute capability 8.0)."""
    quantization: Quantization | None
    breakdown: ParamBreakdown
    layer_counts: tuple[int, ...]
    """Decoder layers per pipeline stage."""
    rotary_bytes: int
    checkpoint_scale: float
    cuda_graph_capture_size: int
    layouts: tuple[HybridLayout, ...]
    """Hybrid models: each stage's page pool; empty otherwise."""

    def samples(self, stage: int) -> bool:
        """Whether ``stage`` computes logits and runs the sampler: the last pipeline stage, unless the model pools
        (a pooling model's profile ends with the pooler)."""
        return stage == self.pp - 1 and not self.spec.is_pooling

    def runs_encoder(self, stage: int) -> bool:
        """Whether ``stage`` runs the vision encoder: the first stage of a vision-language model."""
        return self.spec.is_multimodal and stage == 0


@dataclass(frozen=True)
class GpuBudget:
    """One GPU up to its KV budget: what vLLM's profile charges, and the blocks the rest would hold on its own."""

    gpu: Gpu
    stage: int
    layers: int
    shard: WeightShard
    weights: int
    """Bytes loaded: the shard scaled to the checkpoint, plus the rotary cache."""
    activation: Explanation
    non_torch: Explanation
    cuda_graphs: Explanation
    kv_bytes_per_token: Explanation
    capacity: int
    """gpu_memory_utilization × total."""
    graphs_taken: int
    """The CUDA graphs the budget pays for: all of them where the release subtracts its estimate, else 0."""
    context_taken: int
    """The CUDA context where the release charges it to the budget (0.8), else 0."""
    budget: int
    """capacity − weights − activation − non-torch − graphs taken − context taken (negative: the rest does not fit)."""
    blocks: int
    """Whole blocks of the budget: what this GPU alone could hold."""


def estimate(
    spec: ModelSpec,
    gpus: tuple[Gpu, ...],
    *,
    tp: int,
    pp: int,
    settings: EngineSettings,
    accounting: Accounting | None = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
    ep: int = 1,
) -> MemoryEstimate:
    """Estimate one replica of ``spec`` on ``gpus`` (``tp × pp`` of them, stage-major: stage 0's TP ranks first).

    Args:
        spec: the model.
        gpus: the replica's GPUs; their ``total_bytes`` is what ``gpu_memory_utilization`` multiplies.
        tp: tensor-parallel size. Validity (heads divisible …) is the planner's job.
        pp: pipeline-parallel size.
        settings: engine arguments.
        accounting: the vLLM release's rules (default: the current release).
        calibration: constants of the activation/overhead terms.
        ep: expert-parallel spread of routed experts beyond TP (1 = experts split over TP only).

    Returns:
        The per-GPU breakdown and the replica's KV-cache figures.
    """
    if len(gpus) != tp * pp:
        raise ValueError(f"a replica with tp={tp} pp={pp} needs {tp * pp} GPUs, got {len(gpus)}")
    acc = accounting or accounting_for(CURRENT_VLLM)
    r = replica(spec, gpus, tp=tp, pp=pp, ep=ep, settings=settings, acc=acc, cal=calibration)
    budgets = [gpu_budget(r, i, gpu) for i, gpu in enumerate(gpus)]
    num_blocks = min(b.blocks for b in budgets)
    per_gpu = tuple(gpu_memory(r, b, num_blocks) for b in budgets)
    return _replica_estimate(r, budgets, per_gpu, num_blocks)


def replica(
    spec: ModelSpec,
    gpus: tuple[Gpu, ...],
    *,
    tp: int,
    pp: int,
    ep: int,
    settings: EngineSettings,
    acc: Accounting,
    cal: Calibration,
) -> Replica:
    """The replica-wide values: runner and rules of the release, dtypes, checkpoint scale, rotary cache, page pools."""
    dtype = resolve_dtype(spec, settings.dtype)
    if dtype == "bfloat16" and settings.dtype == "auto" and not all(g.bf16 for g in gpus):
        dtype = "float16"  # no bf16 below compute capability 8.0; same bytes, and the profile says --dtype float16
    quant = effective_quantization(spec, settings.quantization)
    bd = param_breakdown(spec)
    layouts: list[HybridLayout] = []
    engine = settings
    if spec.is_hybrid:
        engine, layouts = hybrid_settings(spec, settings, tp=tp, pp=pp, dtype=dtype, acc=acc)
    return Replica(
        spec=spec,
        tp=tp,
        pp=pp,
        ep=ep,
        settings=engine,
        acc=acc,
        cal=cal,
        runner=acc.runner(spec),
        graphs_in_budget=acc.graphs_subtracted(spec),
        dtype=dtype,
        quantization=quant,
        breakdown=bd,
        layer_counts=pp_layer_counts(spec.num_hidden_layers, pp),
        rotary_bytes=rotary_cache_bytes(spec, max_model_len=settings.max_model_len, dtype=dtype),
        checkpoint_scale=checkpoint_scale(spec, dtype=dtype, quantization=quant, breakdown=bd),
        cuda_graph_capture_size=cuda_graph_capture_size(settings),
        layouts=tuple(layouts),
    )


def gpu_budget(r: Replica, index: int, gpu: Gpu) -> GpuBudget:
    """GPU ``index`` of the replica (stage-major) up to its KV budget: weights, the profile's activation peak,
    non-torch memory and, where the release charges them, the CUDA graphs and context; the blocks the rest holds."""
    spec, tp, settings, cal = r.spec, r.tp, r.settings, r.cal
    stage = index // tp
    layers = r.layer_counts[stage]
    shard = weight_shard(
        spec, tp=tp, pp_rank=stage, pp=r.pp, dtype=r.dtype, quantization=r.quantization, ep=r.ep, breakdown=r.breakdown
    )
    nt = non_torch_bytes(
        tp=tp,
        pp=r.pp,
        custom_all_reduce=settings.custom_all_reduce,
        cal=cal,
        nvlink=settings.nvlink,
        runner=r.runner,
        all_reduce=r.acc.all_reduce_buffers,
        small_base=r.acc.small_non_torch_base,
    )
    cg = cuda_graph_bytes(
        layers=layers,
        enforce_eager=settings.enforce_eager,
        cal=cal,
        tp=tp,
        runner=r.runner,
        hidden=spec.hidden_size,
        capture_size=r.cuda_graph_capture_size,
    )
    if r.layouts:
        kvt = hybrid_kv_bytes_per_token(r.layouts[stage], tp=tp)
    else:
        kvt = kv_bytes_per_token(spec, tp=tp, layers=layers, kv_cache_dtype=settings.kv_cache_dtype, dtype=r.dtype)
    act = _profile_activation(r, stage, layers)
    capacity = math.ceil(gpu.total_bytes * settings.gpu_memory_utilization)
    weights = round(shard.bytes * r.checkpoint_scale) + r.rotary_bytes
    graphs_taken = int(cg.value) if r.graphs_in_budget else 0
    # vLLM 0.8 charges the CUDA context (all of total − free that torch did not allocate) to the budget.
    context_taken = cal.cuda_context_bytes if r.acc.context_in_budget else 0
    budget = capacity - weights - int(act.value) - int(nt.value) - graphs_taken - context_taken
    per_block = int(kvt.value) * settings.block_size
    blocks = max(0, budget) // per_block if per_block else 0
    return GpuBudget(
        gpu=gpu,
        stage=stage,
        layers=layers,
        shard=shard,
        weights=weights,
        activation=act,
        non_torch=nt,
        cuda_graphs=cg,
        kv_bytes_per_token=kvt,
        capacity=capacity,
        graphs_taken=graphs_taken,
        context_taken=context_taken,
        budget=budget,
        blocks=blocks,
    )


def _profile_activation(r: Replica, stage: int, layers: int) -> Explanation:
    """The torch peak of the profiling run on a GPU of ``stage``, with the vision encoder where the profile runs it."""
    act = activation_bytes(
        r.spec,
        tp=r.tp,
        layers=layers,
        settings=r.settings,
        dtype=r.dtype,
        cal=r.cal,
        runner=r.runner,
        warmup_profiled=r.runner == "v2" and r.acc.sampler_warmup_profiled,
        last_stage=r.samples(stage),
        sampler_sorts_vocab=r.acc.sampler_sorts_vocab,
    )
    if r.runs_encoder(stage) and (r.runner == "v1" or r.acc.v2_profiles_encoder):
        act = with_encoder(act, r.spec, tp=r.tp, dtype=r.dtype, settings=r.settings)
    return act


def gpu_memory(r: Replica, b: GpuBudget, num_blocks: int) -> GpuMemory:
    """One GPU once the replica's block count is known: its KV cache, working memory, footprint, and every term's
    explanation."""
    cal = r.cal
    kv_bytes = num_blocks * int(b.kv_bytes_per_token.value) * r.settings.block_size
    work = working_bytes(
        r.spec,
        tp=r.tp,
        layers=b.layers,
        settings=r.settings,
        dtype=r.dtype,
        cal=cal,
        runner=r.runner,
        last_stage=r.samples(b.stage),
    )
    if r.runs_encoder(b.stage):
        # The first image request runs the encoder while serving, whether or not the profile did.
        work = with_encoder(work, r.spec, tp=r.tp, dtype=r.dtype, settings=r.settings)
    context = Explanation(
        "cuda_context",
        "CUDA context of the worker, created before vLLM's memory snapshot: outside the budget, must fit in "
        "(1 − gpu_memory_utilization) × total of free memory",
        {"cuda_context": cal.cuda_context_bytes},
        cal.cuda_context_bytes,
    )
    return GpuMemory(
        gpu=b.gpu,
        pp_rank=b.stage,
        layers=b.layers,
        weights_bytes=b.weights,
        activation_bytes=int(b.activation.value),
        non_torch_bytes=int(b.non_torch.value),
        cuda_graph_bytes=int(b.cuda_graphs.value),
        cuda_context_bytes=cal.cuda_context_bytes,
        kv_budget_bytes=b.budget,
        kv_bytes_per_token=int(b.kv_bytes_per_token.value),
        num_blocks=b.blocks,
        kv_cache_bytes=kv_bytes,
        capacity_bytes=b.capacity,
        explanations=(
            _weights_explanation(r, b),
            b.activation,
            b.non_torch,
            b.cuda_graphs,
            context,
            b.kv_bytes_per_token,
            _budget_explanation(r, b),
            _blocks_explanation(r, b),
            work,
            _footprint_explanation(r, b, kv_bytes, work),
        ),
        graphs_in_budget=r.graphs_in_budget,
        working_bytes=int(work.value),
    )


def _weights_explanation(r: Replica, b: GpuBudget) -> Explanation:
    shard, scale = b.shard, r.checkpoint_scale
    return Explanation(
        "weights",
        "embedding (first stage) + lm_head (last stage) rows × hidden × dtype_bytes, vocab padded to 64 and "
        "split over tp; + replicated norms/routers × dtype_bytes; + sharded linear elements at their stored "
        "size (q/o/MLP ÷ tp, k/v × ceil(kv/tp)/kv, experts ÷ tp×ep); + rotary cache (positions × head_dim × "
        "dtype_bytes)"
        + (
            "; × checkpoint_scale = safetensors bytes ÷ config-derived bytes (the headers' total, split as the "
            "config says)"
            if scale != 1.0
            else ""
        ),
        {
            "pp_rank": b.stage,
            "layers_on_gpu": b.layers,
            "tp": r.tp,
            "embedding_elements": int(shard.embedding),
            "lm_head_elements": int(shard.lm_head),
            "linear_elements": int(shard.layers_linear),
            "replicated_elements": int(shard.layers_replicated + shard.final_norm),
            "dtype": r.dtype,
            "quantization": r.quantization.method if r.quantization else None,
            "rotary_cache_bytes": r.rotary_bytes,
            "checkpoint_bytes": r.spec.weight_bytes,
            "checkpoint_scale": round(scale, 4),
        },
        b.weights,
    )


def _budget_explanation(r: Replica, b: GpuBudget) -> Explanation:
    return Explanation(
        "kv_budget",
        "gpu_memory_utilization × total − weights − activation − non_torch"
        + (
            " − cuda_graphs (the release subtracts its graph estimate)"
            if r.graphs_in_budget
            else " (CUDA graphs are captured afterwards, on top of the budget)"
        )
        + (" − cuda_context (vLLM 0.8 charges total − free − torch memory)" if r.acc.context_in_budget else ""),
        {
            "vllm": r.acc.vllm_version,
            "runner": r.runner,
            "gpu_memory_utilization": r.settings.gpu_memory_utilization,
            "total": b.gpu.total_bytes,
            "capacity": b.capacity,
            "weights": b.weights,
            "activation": int(b.activation.value),
            "non_torch": int(b.non_torch.value),
            "cuda_graphs": b.graphs_taken,
            "cuda_context": b.context_taken,
        },
        b.budget,
    )


def _blocks_explanation(r: Replica, b: GpuBudget) -> Explanation:
    return Explanation(
        "num_blocks",
        "floor(kv_budget / (block_size × kv_bytes_per_token)); the replica uses the minimum over its GPUs",
        {
            "kv_budget": b.budget,
            "block_size": r.settings.block_size,
            "kv_bytes_per_token": int(b.kv_bytes_per_token.value),
        },
        b.blocks,
        unit="blocks",
    )


def _footprint_explanation(r: Replica, b: GpuBudget, kv_bytes: int, work: Explanation) -> Explanation:
    context = r.cal.cuda_context_bytes
    terms = {
        "cuda_context": context,
        "weights": b.weights,
        "non_torch": int(b.non_torch.value),
        "kv_cache": kv_bytes,
        "cuda_graphs": int(b.cuda_graphs.value),
        "working": int(work.value),
    }
    return Explanation(
        "footprint",
        "cuda_context + weights + non_torch + kv_cache + cuda_graphs + working (what nvidia-smi shows while "
        "serving; may exceed the budget)",
        terms,
        sum(terms.values()),
    )


def _replica_estimate(
    r: Replica, budgets: list[GpuBudget], per_gpu: tuple[GpuMemory, ...], num_blocks: int
) -> MemoryEstimate:
    """The replica's KV-cache figures as vLLM logs them, from its block count (a hybrid's from the page pool of the
    GPU with the fewest blocks)."""
    settings = r.settings
    tokens = num_blocks * settings.block_size
    conc = tokens / settings.max_model_len
    fit_len = max(0, num_blocks - 1) * settings.block_size
    layout: HybridLayout | None = None
    if r.layouts:
        layout = r.layouts[min(budgets, key=lambda b: b.blocks).stage]
        tokens = layout.tokens_logged(num_blocks, settings.max_model_len)
        conc = layout.max_concurrency(num_blocks, settings.max_model_len)
        fit_len = layout.max_len_for(num_blocks, 1)
    summary = (
        Explanation(
            "kv_cache_tokens",
            "num_blocks × block_size (vLLM: GPU KV cache size: N tokens)",
            {"num_blocks": num_blocks, "block_size": settings.block_size},
            tokens,
            unit="tokens",
        ),
        Explanation(
            "max_concurrency",
            "kv_cache_tokens / max_model_len (vLLM: Maximum concurrency for L tokens per request: X×)",
            {"kv_cache_tokens": tokens, "max_model_len": settings.max_model_len},
            round(conc, 2),
            unit="requests",
        ),
        Explanation(
            "max_model_len_fit",
            "(num_blocks − 1) × block_size (one block is vLLM's reserved null block; --max-model-len auto)",
            {"num_blocks": num_blocks, "block_size": settings.block_size},
            fit_len,
            unit="tokens",
        ),
    )
    return MemoryEstimate(
        per_gpu=per_gpu,
        settings=settings,
        accounting=r.acc,
        tp=r.tp,
        pp=r.pp,
        dtype=r.dtype,
        num_blocks=num_blocks,
        kv_cache_tokens=tokens,
        max_concurrency=conc,
        max_model_len_fit=fit_len,
        explanations=summary,
        runner=r.runner,
        graphs_in_budget=r.graphs_in_budget,
        hybrid=layout,
    )
