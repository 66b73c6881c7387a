"""The torch peak of vLLM's profiling run (forward pass, dummy sampler, vision encoder) and the working memory the
allocator keeps while serving (forward pass or sampler warm-up)."""

from __future__ import annotations

from qwendeploy.core import multimodal
from qwendeploy.core.memory.calibration import Calibration
from qwendeploy.core.memory.dtypes import DTYPE_BYTES
from qwendeploy.core.memory.explanation import Explanation
from qwendeploy.core.memory.settings import EngineSettings
from qwendeploy.core.memory.sharding import kv_heads_per_rank, vocab_rows_per_rank
from qwendeploy.core.models import ModelSpec


def sampler_warmup_bytes(spec: ModelSpec, *, rows: int, cal: Calibration) -> int:
    """The sampler warm-up's fp32 logits pipeline over ``rows`` × vocab logits (measured on vLLM 0.26)."""
    return int(cal.warmup_base_bytes + rows * spec.vocab_size * cal.warmup_bytes_per_logit)


def _forward_bytes(
    spec: ModelSpec, *, tp: int, layers: int, tokens: int, dt: int, scale: float, cal: Calibration
) -> tuple[float, float]:
    """(bytes at the forward peak over ``tokens`` tokens — 0 on a stage without decoder layers, MLP width) on one TP
    rank: ``tokens`` × elements per token × ``dt`` × ``scale``."""
    h = spec.hidden_size
    q_local = spec.num_attention_heads * spec.head_dim / tp
    kv_local = kv_heads_per_rank(spec.num_key_value_heads, tp) * spec.head_dim
    if spec.moe is not None:
        # Fused MoE keeps per-(token, chosen expert) intermediate caches: gate_up (2×) and activation (1×) of the
        # expert width, plus the un-reduced expert outputs (hidden-wide per chosen expert).
        k = spec.moe.num_experts_per_tok
        per_expert = spec.moe.moe_intermediate_size / tp * cal.activation_mlp_factor + h
        mlp_width = k * per_expert * cal.activation_moe_scale
    else:
        mlp_width = spec.intermediate_size / tp * cal.activation_mlp_factor
    per_token = cal.activation_hidden_factor * h + mlp_width + q_local + 2 * kv_local
    return (tokens * per_token * dt * scale if layers > 0 else 0.0), mlp_width


def activation_bytes(
    spec: ModelSpec,
    *,
    tp: int,
    layers: int,
    settings: EngineSettings,
    dtype: str,
    cal: Calibration,
    runner: str = "v1",
    warmup_profiled: bool = False,
    last_stage: bool = True,
    sampler_sorts_vocab: bool = False,
) -> Explanation:
    """Torch peak of vLLM's profiling run: a forward pass over max_num_batched_tokens, then the dummy sampler.

    Only the last pipeline stage computes logits and runs the dummy sampler (vLLM's profile run calls it on the
    last PP rank only); other stages hold the forward pass and the hidden states they pass on.

    ``runner`` ``v1``: max(forward, hidden states + sampler with fp32 copies of the logits) — published 0.17–0.19
    logs. ``v2``: max(forward, vocab/tp × hidden buffer + hidden states + light sampler) — measured on 0.26;
    ``warmup_profiled`` (0.33) adds a third candidate: hidden states + logits + the sampler's fp32 warm-up pass
    (derived from the 0.33 source and the 0.26 serving footprint; not measured on 0.33). ``sampler_sorts_vocab``
    (V1 before 0.17): top-k/top-p sort the whole vocabulary, ``sort_sampler_fp32_copies`` instead.
    """
    if runner == "v2":
        peak = _v2_profile_peak(
            spec,
            tp=tp,
            layers=layers,
            settings=settings,
            dtype=dtype,
            cal=cal,
            warmup_profiled=warmup_profiled,
            last_stage=last_stage,
        )
    else:
        peak = _v1_profile_peak(
            spec,
            tp=tp,
            layers=layers,
            settings=settings,
            dtype=dtype,
            cal=cal,
            last_stage=last_stage,
            sampler_sorts_vocab=sampler_sorts_vocab,
        )
    if last_stage:
        return peak
    return Explanation(
        peak.name,
        peak.formula + " (not the last pipeline stage: no logits, vocab buffer or sampler)",
        {**peak.inputs, "last_stage": False},
        peak.value,
    )


def _v1_profile_peak(
    spec: ModelSpec,
    *,
    tp: int,
    layers: int,
    settings: EngineSettings,
    dtype: str,
    cal: Calibration,
    last_stage: bool,
    sampler_sorts_vocab: bool,
) -> Explanation:
    """V1 runner: max(forward, hidden states + the dummy sampler's fp32 copies of the logits)."""
    dt = DTYPE_BYTES[dtype]
    tokens = settings.max_num_batched_tokens
    rows = min(settings.max_num_seqs, tokens)
    scale = cal.activation_scale
    forward, mlp_width = _forward_bytes(spec, tp=tp, layers=layers, tokens=tokens, dt=dt, scale=scale, cal=cal)
    copies = cal.sort_sampler_fp32_copies if sampler_sorts_vocab else cal.sampler_fp32_copies
    sampler = rows * spec.vocab_size * (dt + 4 * copies) if last_stage else 0
    held = tokens * spec.hidden_size * dt + sampler
    formula = (
        "V1 runner: max(forward, hidden_states + sampler) with forward = T × (a_h × hidden + mlp_width + q/tp + "
        "2 × kv/tp) × dtype_bytes × scale; hidden_states = T × hidden × dtype_bytes; sampler = "
        "min(max_num_seqs, T) × vocab × (dtype_bytes + 4 × fp32_copies)"
    )
    inputs = {
        "T": tokens,
        "a_h": cal.activation_hidden_factor,
        "hidden": spec.hidden_size,
        "mlp_width": round(mlp_width, 1),
        "dtype_bytes": dt,
        "scale": scale,
        "forward_bytes": int(forward),
        "max_num_seqs": settings.max_num_seqs,
        "vocab": spec.vocab_size,
        "fp32_copies": copies,
        "sampler_sorts_vocab": sampler_sorts_vocab,
        "sampler_bytes": int(sampler),
    }
    return Explanation("activation", formula, inputs, int(max(forward, held)))


def _v2_profile_peak(
    spec: ModelSpec,
    *,
    tp: int,
    layers: int,
    settings: EngineSettings,
    dtype: str,
    cal: Calibration,
    warmup_profiled: bool,
    last_stage: bool,
) -> Explanation:
    """V2 runner: max(forward, vocab-sized buffer + hidden states + light sampler), and from 0.33 the fp32 sampler
    warm-up over the profile's logits."""
    dt = DTYPE_BYTES[dtype]
    tokens = settings.max_num_batched_tokens
    h = spec.hidden_size
    rows = min(settings.max_num_seqs, tokens)
    hidden_states = tokens * h * dt
    scale = cal.v2_forward_scale
    forward, mlp_width = _forward_bytes(spec, tp=tp, layers=layers, tokens=tokens, dt=dt, scale=scale, cal=cal)
    vocab_buffer = vocab_rows_per_rank(spec.vocab_size, tp) * h * dt * cal.v2_vocab_buffer_factor
    sampler = rows * spec.vocab_size * cal.v2_sampler_bytes_per_logit
    if not last_stage:
        vocab_buffer = sampler = 0.0
    held = vocab_buffer + hidden_states + sampler
    warmup = 0
    if warmup_profiled and last_stage:
        # 0.33 runs the fp32 warm-up pass on the profile's logits; the vocab-sized buffer belongs to the logits
        # computation, which the warm-up pass does not repeat.
        warmup = sampler_warmup_bytes(spec, rows=rows, cal=cal)
        held = max(held, hidden_states + rows * spec.vocab_size * dt + warmup)
    formula = (
        "V2 runner: max(forward, vocab_buffer + hidden_states + sampler"
        + (", hidden_states + logits + sampler_warmup" if warmup_profiled else "")
        + ") with forward = T × (a_h × hidden + mlp_width + q/tp + 2 × kv/tp) × dtype_bytes × scale; "
        "vocab_buffer = pad64(vocab)/tp × hidden × dtype_bytes; hidden_states = T × hidden × dtype_bytes; "
        "sampler = min(max_num_seqs, T) × vocab × bytes_per_logit"
        + ("; logits = min(max_num_seqs, T) × vocab × dtype_bytes" if warmup_profiled else "")
    )
    inputs: dict[str, object] = {
        "T": tokens,
        "a_h": cal.activation_hidden_factor,
        "hidden": h,
        "mlp_width": round(mlp_width, 1),
        "dtype_bytes": dt,
        "scale": scale,
        "forward_bytes": int(forward),
        "vocab": spec.vocab_size,
        "vocab_buffer_bytes": int(vocab_buffer),
        "hidden_states_bytes": int(hidden_states),
        "max_num_seqs": settings.max_num_seqs,
        "bytes_per_logit": cal.v2_sampler_bytes_per_logit,
        "sampler_bytes": int(sampler),
    }
    if warmup_profiled:
        inputs["sampler_warmup_bytes"] = int(warmup)
    return Explanation("activation", formula, inputs, int(max(forward, held)))


def working_bytes(
    spec: ModelSpec,
    *,
    tp: int,
    layers: int,
    settings: EngineSettings,
    dtype: str,
    cal: Calibration,
    runner: str,
    last_stage: bool = True,
) -> Explanation:
    """Allocator memory the worker keeps while serving: the larger of a forward pass and the sampler warm-up
    (the warm-up runs on the last pipeline stage only)."""
    dt = DTYPE_BYTES[dtype]
    tokens = settings.max_num_batched_tokens
    scale = cal.v2_forward_scale if runner == "v2" else cal.activation_scale
    forward, _ = _forward_bytes(spec, tp=tp, layers=layers, tokens=tokens, dt=dt, scale=scale, cal=cal)
    rows = min(settings.max_num_seqs, tokens)
    warmup = sampler_warmup_bytes(spec, rows=rows, cal=cal) if last_stage else 0
    return Explanation(
        "working",
        "max(forward, sampler_warmup) with sampler_warmup = warmup_base + min(max_num_seqs, T) × vocab × "
        "bytes_per_logit (fp32 logits pipeline run after the KV cache is allocated; last pipeline stage only)",
        {
            "forward_bytes": int(forward),
            "warmup_base": cal.warmup_base_bytes,
            "max_num_seqs": settings.max_num_seqs,
            "vocab": spec.vocab_size,
            "bytes_per_logit": cal.warmup_bytes_per_logit,
            "sampler_warmup_bytes": warmup,
        },
        int(max(forward, warmup)),
    )


def with_encoder(act: Explanation, spec: ModelSpec, *, tp: int, dtype: str, settings: EngineSettings) -> Explanation:
    """A peak (the profile's activation, or the working memory while serving) with the vision encoder's run on the
    largest default item (first pipeline stage): the larger of the two."""
    encoder = multimodal.encoder_profile_bytes(
        spec, tp=tp, dtype_bytes=DTYPE_BYTES[dtype], max_num_batched_tokens=settings.max_num_batched_tokens
    )
    inputs = dict(act.inputs)
    inputs.update(
        decoder_bytes=int(act.value), encoder_bytes=encoder, max_item_patches=multimodal.max_item_patches(spec)
    )
    return Explanation(
        act.name,
        "max(decoder peak, vision encoder peak) with encoder = patches of the largest default image × "
        "(6 × vision_hidden + mlp × vision_intermediate/tp) × dtype_bytes + cached encoder outputs; decoder: "
        + act.formula,
        inputs,
        max(int(act.value), encoder),
    )
