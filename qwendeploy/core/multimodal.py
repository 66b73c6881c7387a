"""Vision-language checkpoints (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): the vision tower's weights and the encoder's
share of vLLM's profiling run.

* Weights: the tower's parameters (``families.vision_params``; Qwen2.5-VL-7B ≈ 0.68 B, Qwen3-VL-8B ≈ 0.58 B),
  split over TP (vLLM's vision blocks use column/row-parallel linears) and kept in 16 bits (AWQ/GPTQ/FP8
  checkpoints of Qwen's VL models leave ``visual`` unquantized). The whole checkpoint's safetensors bytes, when
  known, still scale the total (memory.checkpoint_scale).
* Profiling: vLLM's ``profile_run`` first runs the encoder on the largest dummy multimodal batch its encoder budget
  allows (``max(max_num_batched_tokens, max tokens of one item)``), keeps the outputs in the encoder cache, then
  runs the decoder. With vLLM's defaults one image of the processor's max pixels is the largest item: 16,384
  merged tokens (Qwen2.5-VL ``max_pixels`` 12,845,056 = 16,384 × 28²; Qwen3-VL ``longest_edge`` 16,777,216 =
  16,384 × 32²), i.e. 65,536 patches through the tower. ``--limit-mm-per-prompt '{"image":0,"video":0}'`` (text
  only) removes it; ``--mm-processor-kwargs '{"max_pixels": N}'`` bounds it.
"""

from __future__ import annotations

import math

from qwendeploy.core.families import vision_params
from qwendeploy.core.models import ModelSpec

DEFAULT_MAX_ITEM_TOKENS = 16384
"""Merged vision tokens of the largest default image (Qwen2.5-VL and Qwen3-VL processors alike)."""

ENCODER_HIDDEN_FACTOR = 6.0
"""Hidden-wide tensors alive per patch at the encoder's peak (qkv 3, attention out, residual, normed input)."""


def vision_elements_per_gpu(spec: ModelSpec, *, tp: int) -> float:
    """Vision-tower elements one TP rank of the first pipeline stage loads."""
    if spec.vision is None:
        return 0.0
    return vision_params(spec.vision) / tp


def max_item_patches(spec: ModelSpec, max_item_tokens: int = DEFAULT_MAX_ITEM_TOKENS) -> int:
    """Patches the tower sees for the largest item: merged tokens × spatial_merge_size²."""
    if spec.vision is None:
        return 0
    return max_item_tokens * spec.vision.spatial_merge_size**2


def encoder_profile_bytes(spec: ModelSpec, *, tp: int, dtype_bytes: int, max_num_batched_tokens: int) -> int:
    """Torch peak of the encoder's dummy run on one GPU (0 for a text-only model).

    patches × (a_h × vision_hidden + mlp × vision_intermediate/tp) × dtype_bytes, with mlp = 3 for the gated
    Qwen2.5-VL MLP (gate+up, activation) and 2 for fc1/GELU; plus the cached outputs (tokens × out_hidden).
    Derived from the tower's shapes and vLLM's profile_run; not yet measured on a GPU.
    """
    v = spec.vision
    if v is None:
        return 0
    items_tokens = max(DEFAULT_MAX_ITEM_TOKENS, 0)
    budget = max(max_num_batched_tokens, items_tokens)
    items = max(1, budget // items_tokens)
    patches = items * max_item_patches(spec)
    mlp = 3.0 if v.kind == "qwen2_5_vl" else 2.0
    per_patch = ENCODER_HIDDEN_FACTOR * v.hidden_size + mlp * math.ceil(v.intermediate_size / tp)
    outputs = items * DEFAULT_MAX_ITEM_TOKENS * v.out_hidden_size * (1 + v.deepstack_layers)
    return int((patches * per_patch + outputs) * dtype_bytes)
