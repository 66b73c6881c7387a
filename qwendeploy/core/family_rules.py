"""What a plan must do and say for a model family beyond the plain chat decoder: the default and the limit of the
context (dual-chunk-attention models), the vLLM flags a family needs (the pooling runner), and the notes that keep
no estimate silent (hybrid layout, vision tower, pooling, config keys the estimate does not model, MTP layers).
"""

from __future__ import annotations

from typing import Any

from qwendeploy.core.memory import MemoryEstimate
from qwendeploy.core.models import ModelSpec
from qwendeploy.core.units import human_size
from qwendeploy.errors import BadInput

RERANKER_OVERRIDES: dict[str, Any] = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
"""vLLM's documented way to serve Qwen3-Reranker (a Qwen3ForCausalLM checkpoint) as a sequence classifier."""


def default_context(spec: ModelSpec) -> int:
    """The context a plan targets when none is asked: the model's window, or a DCA model's trained window."""
    if spec.dual_chunk_trained_length:
        return min(spec.max_position_embeddings, spec.dual_chunk_trained_length)
    return spec.max_position_embeddings


def check_context(spec: ModelSpec, max_model_len: int, *, allow_untrained: bool) -> None:
    """Refuse a dual-chunk-attention model past its trained window unless the user accepts it.

    Raises:
        BadInput: ``max_model_len`` is beyond the trained window of a DCA model and ``allow_untrained`` is off.
    """
    trained = spec.dual_chunk_trained_length
    if trained is None or max_model_len <= trained or allow_untrained:
        return
    raise BadInput(
        f"{spec.id} reaches {spec.max_position_embeddings:,} tokens only with dual-chunk attention, which vLLM's V1 "
        f"engine does not have (its DCA backend was removed, vllm-project/vllm PR #25351). Past the trained "
        f"{trained:,} tokens vLLM runs plain attention out of range, so quality degrades; the memory figures would "
        f"still be right.",
        hint=f"Use --context {trained} or less, or add --allow-untrained-context to plan it anyway.",
    )


def runner_args(spec: ModelSpec) -> list[str]:
    """vLLM flags the family needs: the pooling runner for embedding/reranker models."""
    if not spec.is_pooling:
        return []
    convert = {"embed": "embed", "classify": "classify", "reward": "reward"}[spec.task]
    return ["--runner", "pooling", "--convert", convert]


def hf_overrides(spec: ModelSpec) -> dict[str, Any] | None:
    """``--hf-overrides`` a family needs (Qwen3-Reranker served as a classifier); None otherwise."""
    if spec.task == "classify" and spec.architecture == "Qwen3ForCausalLM":
        return dict(RERANKER_OVERRIDES)
    return None


def without_decode_speed(why: tuple[str, ...], label: str | None) -> tuple[str, ...]:
    """The plan's explanation for a pooling model: no line that quotes a decode speed (a pooling model decodes
    nothing; its work is prefill)."""
    kept = tuple(line for line in why if "tok/s" not in line and "decode step" not in line)
    if label is None:
        return kept
    head = f"{label} chosen for a pooling model: no decode speed applies; each request is one prefill."
    return (head, *kept)


def notes(spec: ModelSpec, est: MemoryEstimate | None, *, allow_untrained: bool, max_model_len: int) -> list[str]:
    """Plain-language notes for the plan about what the family changes in the estimate."""
    out: list[str] = []
    if spec.is_hybrid and spec.linear_attention is not None:
        layers = spec.num_hidden_layers
        full = spec.full_attention_layers
        line = (
            f"Hybrid attention: {full} of {layers} layers are full attention and hold the KV cache; the other "
            f"{layers - full} (Gated DeltaNet) keep a fixed conv + recurrent state per running sequence."
        )
        if est is not None and est.hybrid is not None:
            h = est.hybrid
            line += (
                f" vLLM unifies the page size: attention block {h.block_size} tokens, state page "
                f"{human_size(h.mamba_page_bytes)} padded by {h.padding_pct:.2f}%; {h.groups} KV-cache groups of "
                f"{h.group_size} layers; a {max_model_len:,}-token request takes {h.blocks_per_request(max_model_len)} "
                f"blocks, so at most {est.max_concurrency:.2f} such requests run at once."
            )
        out.append(line)
    if spec.mtp_layers:
        out.append(
            f"The checkpoint ships {spec.mtp_layers} multi-token-prediction layer(s); they are loaded only with "
            "--speculative-config (method mtp), which adds their weights and one more attention layer's KV cache: "
            "not in this plan."
        )
    if spec.vision is not None:
        v = spec.vision
        out.append(
            f"Multimodal ({v.kind.replace('_', '.')} vision tower, {v.depth} blocks): its weights are counted and the "
            "start-up profile includes the encoder on vLLM's largest default image (16,384 vision tokens). Bound it "
            'with --limit-mm-per-prompt \'{"image":N,"video":0}\' and --mm-processor-kwargs \'{"max_pixels":P}\', '
            'or serve text only with --limit-mm-per-prompt \'{"image":0,"video":0}\'.'
        )
    if spec.is_pooling:
        out.append(
            f"Pooling model ({spec.task}): served with --runner pooling (no LM head, no sampler warm-up, no decode "
            "speed: throughput is prompt tokens). vLLM keeps chunked prefill and the chat batching defaults for "
            "last-token pooling (ModelConfig.is_chunked_prefill_supported)."
        )
    if spec.dual_chunk_trained_length and max_model_len > spec.dual_chunk_trained_length and allow_untrained:
        out.append(
            f"--allow-untrained-context: {max_model_len:,} tokens is past the trained "
            f"{spec.dual_chunk_trained_length:,}; vLLM has no dual-chunk attention, so quality degrades there."
        )
    elif spec.dual_chunk_trained_length:
        out.append(
            f"Dual-chunk-attention model: vLLM's V1 engine has no DCA, so the plan stays within the trained "
            f"{spec.dual_chunk_trained_length:,} tokens."
        )
    if spec.unmodelled_keys:
        out.append(
            "config.json sets " + ", ".join(spec.unmodelled_keys) + ", which change vLLM's memory use in ways this "
            "estimate does not model: treat the figures as approximate."
        )
    return out
