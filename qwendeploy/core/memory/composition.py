"""The estimate of one replica: every term per GPU, the KV budget each leaves, and the replica's KV-cache figures."""

from __future__ import annotations

import math

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
from qwendeploy.core.models import ModelSpec
from qwendeploy.core.params import param_breakdown


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
    runner = acc.runner(spec)
    graphs_in = acc.graphs_subtracted(spec)
    warmup_profiled = runner == "v2" and acc.sampler_warmup_profiled
    dtype = resolve_dtype(spec, settings.dtype)
    if dtype == "bfloat16" and settings.dtype == "auto" and not all(g.bf16 for g in gpus):
        dtype = "float16"  # no bf16 below compute capability 8.0; same bytes, and the profile says --dtype float16
    quant = effective_quantization(spec, settings.quantization)
    bd = param_breakdown(spec)
    counts = pp_layer_counts(spec.num_hidden_layers, pp)
    cal = calibration
    rotary = rotary_cache_bytes(spec, max_model_len=settings.max_model_len, dtype=dtype)
    ckpt_scale = checkpoint_scale(spec, dtype=dtype, quantization=quant, breakdown=bd)
    capture = cuda_graph_capture_size(settings)
    layouts: list[HybridLayout] = []
    if spec.is_hybrid:
        settings, layouts = hybrid_settings(spec, settings, tp=tp, pp=pp, dtype=dtype, acc=acc)
    rows: list[tuple[Gpu, int, int, WeightShard, Explanation, Explanation, Explanation, Explanation, int, int]] = []
    for i, gpu in enumerate(gpus):
        stage = i // tp
        layers = counts[stage]
        shard = weight_shard(spec, tp=tp, pp_rank=stage, pp=pp, dtype=dtype, quantization=quant, ep=ep, breakdown=bd)
        act = activation_bytes(
            spec,
            tp=tp,
            layers=layers,
            settings=settings,
            dtype=dtype,
            cal=cal,
            runner=runner,
            warmup_profiled=warmup_profiled,
            # A pooling model computes no logits and runs no sampler: its profile ends with the pooler.
            last_stage=stage == pp - 1 and not spec.is_pooling,
            sampler_sorts_vocab=acc.sampler_sorts_vocab,
        )
        if spec.is_multimodal and stage == 0 and (runner == "v1" or acc.v2_profiles_encoder):
            act = with_encoder(act, spec, tp=tp, dtype=dtype, settings=settings)
        nt = non_torch_bytes(
            tp=tp,
            pp=pp,
            custom_all_reduce=settings.custom_all_reduce,
            cal=cal,
            nvlink=settings.nvlink,
            runner=runner,
            all_reduce=acc.all_reduce_buffers,
            small_base=acc.small_non_torch_base,
        )
        cg = cuda_graph_bytes(
            layers=layers,
            enforce_eager=settings.enforce_eager,
            cal=cal,
            tp=tp,
            runner=runner,
            hidden=spec.hidden_size,
            capture_size=capture,
        )
        if layouts:
            kvt = hybrid_kv_bytes_per_token(layouts[stage], tp=tp)
        else:
            kvt = kv_bytes_per_token(spec, tp=tp, layers=layers, kv_cache_dtype=settings.kv_cache_dtype, dtype=dtype)
        capacity = math.ceil(gpu.total_bytes * settings.gpu_memory_utilization)
        weights = round(shard.bytes * ckpt_scale) + rotary
        graphs_taken = int(cg.value) if graphs_in else 0
        # vLLM 0.8 charges the CUDA context (all of total − free that torch did not allocate) to the budget.
        context_taken = cal.cuda_context_bytes if acc.context_in_budget else 0
        budget = capacity - weights - int(act.value) - int(nt.value) - graphs_taken - context_taken
        per_block = int(kvt.value) * settings.block_size
        blocks = max(0, budget) // per_block if per_block else 0
        rows.append((gpu, stage, layers, shard, act, nt, cg, kvt, budget, blocks))

    num_blocks = min(r[9] for r in rows)
    per_gpu: list[GpuMemory] = []
    for gpu, stage, layers, shard, act, nt, cg, kvt, budget, blocks in rows:
        capacity = math.ceil(gpu.total_bytes * settings.gpu_memory_utilization)
        per_block = int(kvt.value) * settings.block_size
        weights = round(shard.bytes * ckpt_scale) + rotary
        last = stage == pp - 1 and not spec.is_pooling
        work = working_bytes(
            spec, tp=tp, layers=layers, settings=settings, dtype=dtype, cal=cal, runner=runner, last_stage=last
        )
        if spec.is_multimodal and stage == 0:
            # The first image request runs the encoder while serving, whether or not the profile did.
            work = with_encoder(work, spec, tp=tp, dtype=dtype, settings=settings)
        weights_exp = Explanation(
            "weights",
            "embedding (first stage) + lm_head (last stage) rows × hidden × dtype_bytes, vocab padded to 64 and "
            "split over tp; + replicated norms/routers × dtype_bytes; + sharded linear elements at their stored "
            "size (q/o/MLP ÷ tp, k/v × ceil(kv/tp)/kv, experts ÷ tp×ep); + rotary cache (positions × head_dim × "
            "dtype_bytes)"
            + (
                "; × checkpoint_scale = safetensors bytes ÷ config-derived bytes (the headers' total, split as the "
                "config says)"
                if ckpt_scale != 1.0
                else ""
            ),
            {
                "pp_rank": stage,
                "layers_on_gpu": layers,
                "tp": tp,
                "embedding_elements": int(shard.embedding),
                "lm_head_elements": int(shard.lm_head),
                "linear_elements": int(shard.layers_linear),
                "replicated_elements": int(shard.layers_replicated + shard.final_norm),
                "dtype": dtype,
                "quantization": quant.method if quant else None,
                "rotary_cache_bytes": rotary,
                "checkpoint_bytes": spec.weight_bytes,
                "checkpoint_scale": round(ckpt_scale, 4),
            },
            weights,
        )
        budget_exp = Explanation(
            "kv_budget",
            "gpu_memory_utilization × total − weights − activation − non_torch"
            + (
                " − cuda_graphs (the release subtracts its graph estimate)"
                if graphs_in
                else " (CUDA graphs are captured afterwards, on top of the budget)"
            )
            + (" − cuda_context (vLLM 0.8 charges total − free − torch memory)" if acc.context_in_budget else ""),
            {
                "vllm": acc.vllm_version,
                "runner": runner,
                "gpu_memory_utilization": settings.gpu_memory_utilization,
                "total": gpu.total_bytes,
                "capacity": capacity,
                "weights": weights,
                "activation": int(act.value),
                "non_torch": int(nt.value),
                "cuda_graphs": int(cg.value) if graphs_in else 0,
                "cuda_context": context_taken,
            },
            budget,
        )
        blocks_exp = Explanation(
            "num_blocks",
            "floor(kv_budget / (block_size × kv_bytes_per_token)); the replica uses the minimum over its GPUs",
            {"kv_budget": budget, "block_size": settings.block_size, "kv_bytes_per_token": int(kvt.value)},
            blocks,
            unit="blocks",
        )
        context_exp = Explanation(
            "cuda_context",
            "CUDA context of the worker, created before vLLM's memory snapshot: outside the budget, must fit in "
            "(1 − gpu_memory_utilization) × total of free memory",
            {"cuda_context": cal.cuda_context_bytes},
            cal.cuda_context_bytes,
        )
        kv_bytes = num_blocks * per_block
        footprint = cal.cuda_context_bytes + weights + int(nt.value) + kv_bytes + int(cg.value) + int(work.value)
        footprint_exp = Explanation(
            "footprint",
            "cuda_context + weights + non_torch + kv_cache + cuda_graphs + working (what nvidia-smi shows while "
            "serving; may exceed the budget)",
            {
                "cuda_context": cal.cuda_context_bytes,
                "weights": weights,
                "non_torch": int(nt.value),
                "kv_cache": kv_bytes,
                "cuda_graphs": int(cg.value),
                "working": int(work.value),
            },
            footprint,
        )
        per_gpu.append(
            GpuMemory(
                gpu=gpu,
                pp_rank=stage,
                layers=layers,
                weights_bytes=weights,
                activation_bytes=int(act.value),
                non_torch_bytes=int(nt.value),
                cuda_graph_bytes=int(cg.value),
                cuda_context_bytes=cal.cuda_context_bytes,
                kv_budget_bytes=budget,
                kv_bytes_per_token=int(kvt.value),
                num_blocks=blocks,
                kv_cache_bytes=kv_bytes,
                capacity_bytes=capacity,
                explanations=(
                    weights_exp,
                    act,
                    nt,
                    cg,
                    context_exp,
                    kvt,
                    budget_exp,
                    blocks_exp,
                    work,
                    footprint_exp,
                ),
                graphs_in_budget=graphs_in,
                working_bytes=int(work.value),
            )
        )
    tokens = num_blocks * settings.block_size
    conc = tokens / settings.max_model_len
    fit_len = max(0, num_blocks - 1) * settings.block_size
    layout: HybridLayout | None = None
    if layouts:
        layout = layouts[min(range(len(rows)), key=lambda i: rows[i][9]) // tp]
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
        per_gpu=tuple(per_gpu),
        settings=settings,
        accounting=acc,
        tp=tp,
        pp=pp,
        dtype=dtype,
        num_blocks=num_blocks,
        kv_cache_tokens=tokens,
        max_concurrency=conc,
        max_model_len_fit=fit_len,
        explanations=summary,
        runner=runner,
        graphs_in_budget=graphs_in,
        hybrid=layout,
    )
