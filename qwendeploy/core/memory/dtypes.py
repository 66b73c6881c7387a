"""Bytes per element: the activation dtype vLLM runs with, the KV-cache dtype, and online quantization."""

from __future__ import annotations

from collections.abc import Mapping

from qwendeploy.core.models import ModelSpec, Quantization

DTYPE_BYTES: Mapping[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
}

KV_DTYPE_BYTES: Mapping[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
}
"""Bytes per KV element; ``auto`` means the activation dtype. vLLM stores fp8 KV as uint8."""


def kv_dtype_bytes(kv_cache_dtype: str, dtype: str) -> int:
    """Bytes per KV element for ``--kv-cache-dtype`` (``auto`` → the activation dtype)."""
    if kv_cache_dtype == "auto":
        return DTYPE_BYTES[dtype]
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise ValueError(f"unsupported kv_cache_dtype {kv_cache_dtype!r}; known: auto, {', '.join(KV_DTYPE_BYTES)}")
    return KV_DTYPE_BYTES[kv_cache_dtype]


def resolve_dtype(spec: ModelSpec, dtype: str = "auto") -> str:
    """The activation dtype vLLM runs with: ``--dtype``, else the checkpoint's (AWQ/GPTQ run in float16)."""
    if dtype != "auto":
        return {"half": "float16", "float": "float32"}.get(dtype, dtype)
    if spec.quantization is not None and spec.quantization.method in ("awq", "gptq"):
        return "float16"
    return spec.torch_dtype


def effective_quantization(spec: ModelSpec, quantization: str | None) -> Quantization | None:
    """The checkpoint's quantization, or online FP8 when ``--quantization fp8`` is asked of a 16-bit model."""
    if spec.quantization is not None:
        return spec.quantization
    if quantization in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
        return Quantization(method="fp8", bits=8)
    return None
