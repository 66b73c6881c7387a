"""vLLM's placement rules and the request's checks: which TP sizes a model allows (and why not), the
TP/PP/KV options searched, YaRN, vLLM's default batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwendeploy.core.hardware import Gpu, Machine
from qwendeploy.core.memory import (
    DTYPE_BYTES,
    KV_DTYPE_BYTES,
    effective_quantization,
)
from qwendeploy.core.memory.settings import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    LARGE_GPU_MAX_NUM_BATCHED_TOKENS,
    LARGE_GPU_MAX_NUM_SEQS,
)
from qwendeploy.core.models import ModelSpec, catalog
from qwendeploy.core.networks import find_network
from qwendeploy.core.units import GiB, human_size
from qwendeploy.errors import BadInput

# ----------------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------------


if TYPE_CHECKING:
    from qwendeploy.core.planner.values import PlanRequest


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


@dataclass(frozen=True)
class Batching:
    """vLLM's batching limits: sequences in one step and tokens in one step (prefill chunks included)."""

    max_num_seqs: int
    max_num_batched_tokens: int


def default_batching(gpu: Gpu) -> Batching:
    """vLLM's max_num_seqs and max_num_batched_tokens defaults for the API server on this GPU.

    Large GPUs (≥ 70 GiB, not A100) get 1024 / 8192, others 256 / 2048 (vLLM's ``EngineArgs`` defaults).
    """
    if gpu.total_bytes >= 70 * GiB and "A100" not in gpu.name.upper():
        return Batching(max_num_seqs=LARGE_GPU_MAX_NUM_SEQS, max_num_batched_tokens=LARGE_GPU_MAX_NUM_BATCHED_TOKENS)
    return Batching(max_num_seqs=DEFAULT_MAX_NUM_SEQS, max_num_batched_tokens=DEFAULT_MAX_NUM_BATCHED_TOKENS)


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
