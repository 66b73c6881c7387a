#!/usr/bin/env python3
"""Device side: random-weight Qwen checkpoints for calibration, via the staged recipe's make_models.py.

Adds Qwen2.5-14B-Instruct (dims from its public config.json) to the recipe's configs, then delegates.
usage: make_models_extra.py OUT_ROOT NAME [NAME ...]
"""

from __future__ import annotations

import sys

sys.path.insert(0, ".dev/device-vllm")
import make_models  # type: ignore[import-not-found]

make_models.CONFIGS["qwen2.5-14b-instruct"] = dict(
    make_models.QWEN2_COMMON,
    hidden_size=5120,
    intermediate_size=13824,
    num_hidden_layers=48,
    num_attention_heads=40,
    num_key_value_heads=8,
    vocab_size=152064,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
    max_window_layers=48,
    sliding_window=131072,
)
root = sys.argv[1]
for name in sys.argv[2:]:
    make_models.make(root, name)
