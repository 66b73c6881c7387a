"""How a model is split over GPUs: decoder layers over pipeline stages, KV heads and the vocabulary over TP ranks."""

from __future__ import annotations

import math

VOCAB_PADDING = 64
"""vLLM pads the vocabulary to a multiple of this before splitting it over TP ranks."""


def pp_layer_counts(num_layers: int, pp: int) -> tuple[int, ...]:
    """Decoder layers per pipeline stage, as vLLM's ``get_pp_indices`` splits them without an override.

    Even split; the remainder goes one layer each to the stages just before the last one, walking towards the
    first (the last stage already holds the LM head). 28 layers over 3 stages → (9, 10, 9); 5 over 3 →
    (2, 2, 1).
    """
    if pp < 1 or pp > num_layers:
        raise ValueError(f"pipeline_parallel_size {pp} must be between 1 and the {num_layers} layers")
    counts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        counts[-i] += 1
    return tuple(counts)


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """KV heads each TP rank stores: kv/TP while TP ≤ kv, else one (replicated)."""
    return max(1, math.ceil(num_kv_heads / tp))


def vocab_rows_per_rank(vocab_size: int, tp: int) -> int:
    """Rows of the embedding / LM head on one TP rank: the vocabulary padded to ``VOCAB_PADDING``, split over TP."""
    padded_vocab = math.ceil(vocab_size / VOCAB_PADDING) * VOCAB_PADDING
    return math.ceil(padded_vocab / tp)
