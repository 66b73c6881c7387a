"""config.json ``quantization_config`` → ``Quantization``: awq, gptq, fp8, compressed-tensors, bitsandbytes and
any other method that states its bits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qwendeploy.core.models.hf_fields import as_int, bad
from qwendeploy.core.models.spec import Quantization


def quantization(cfg: Mapping[str, Any], source_id: str) -> Quantization | None:
    q = cfg.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, Mapping):
        raise bad(source_id, "quantization_config", "must be a mapping")
    method = q.get("quant_method")
    if not isinstance(method, str) or not method:
        raise bad(source_id, "quantization_config.quant_method", "is missing")
    method = method.lower()
    if method == "awq":
        bits = as_int(q.get("bits", q.get("w_bit")), "quantization_config.bits", source_id)
        group = q.get("group_size", q.get("q_group_size"))
        return Quantization(
            method="awq",
            bits=bits,
            group_size=_group(group, source_id),
            zero_point=bool(q.get("zero_point", True)),
        )
    if method == "gptq":
        bits = as_int(q.get("bits"), "quantization_config.bits", source_id)
        # GPTQ checkpoints always carry qzeros, even when ``sym: true``.
        return Quantization(
            method="gptq",
            bits=bits,
            group_size=_group(q.get("group_size"), source_id),
            zero_point=True,
            desc_act=bool(q.get("desc_act", False)),
        )
    if method == "fp8":
        block = q.get("weight_block_size")
        block_size: tuple[int, int] | None = None
        if block is not None:
            if not isinstance(block, list | tuple) or len(block) != 2:
                raise bad(source_id, "quantization_config.weight_block_size", f"must be [n, k], got {block!r}")
            block_size = (
                as_int(block[0], "quantization_config.weight_block_size", source_id),
                as_int(block[1], "quantization_config.weight_block_size", source_id),
            )
        scheme = q.get("activation_scheme")
        return Quantization(
            method="fp8",
            bits=8,
            block_size=block_size,
            activation_scheme=str(scheme) if scheme is not None else None,
        )
    if method == "compressed-tensors":
        return _compressed_tensors(q, source_id)
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8
        return Quantization(method="bitsandbytes", bits=bits, group_size=64 if bits == 4 else None)
    bits_raw = q.get("bits", q.get("w_bit"))
    if bits_raw is None:
        raise bad(source_id, "quantization_config.bits", f"is missing (quant_method {method!r})")
    return Quantization(
        method=method,
        bits=as_int(bits_raw, "quantization_config.bits", source_id),
        group_size=_group(q.get("group_size"), source_id),
    )


def _group(value: Any, source_id: str) -> int | None:
    if value is None or value == -1:
        return None  # per-channel
    return as_int(value, "quantization_config.group_size", source_id)


def _compressed_tensors(q: Mapping[str, Any], source_id: str) -> Quantization:
    groups = q.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise bad(source_id, "quantization_config.config_groups", "is missing")
    first = next(iter(groups.values()))
    weights = first.get("weights") if isinstance(first, Mapping) else None
    if not isinstance(weights, Mapping):
        raise bad(source_id, "quantization_config.config_groups.*.weights", "is missing")
    bits = as_int(weights.get("num_bits"), "quantization_config.config_groups.*.weights.num_bits", source_id)
    block = weights.get("block_structure")
    block_size: tuple[int, int] | None = None
    if isinstance(block, list | tuple) and len(block) == 2:
        block_size = (int(block[0]), int(block[1]))
    scheme = None
    acts = first.get("input_activations") if isinstance(first, Mapping) else None
    if isinstance(acts, Mapping):
        scheme = "dynamic" if acts.get("dynamic") else "static"
    return Quantization(
        method="compressed-tensors",
        bits=bits,
        group_size=_group(weights.get("group_size"), source_id),
        block_size=block_size,
        zero_point=not bool(weights.get("symmetric", True)),
        activation_scheme=scheme,
    )
