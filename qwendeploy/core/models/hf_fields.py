"""Reading one config.json field: typed and checked, with an error that names the model and the field.

Shared by ``hf_config`` and ``hf_quantization``; every reader raises ``BadInput`` (exit 2) for a bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from qwendeploy.errors import BadInput


def bad(source_id: str, field_name: str, problem: str) -> BadInput:
    return BadInput(
        f"config.json of {source_id}: field {field_name!r} {problem}.",
        hint="Check the model's config.json; qwendeploy reads the same fields vLLM does.",
    )


def req_int(cfg: Mapping[str, Any], key: str, source_id: str, *, minimum: int = 1) -> int:
    if key not in cfg or cfg[key] is None:
        raise bad(source_id, key, "is missing")
    return as_int(cfg[key], key, source_id, minimum=minimum)


def as_int(value: Any, key: str, source_id: str, *, minimum: int = 1) -> int:
    # bool is an int subclass; a bool where a count belongs is a broken config, not 0/1.
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise bad(source_id, key, f"must be an integer, got {value!r}")
    if int(value) < minimum:
        raise bad(source_id, key, f"must be at least {minimum}, got {value!r}")
    return int(value)


def opt_int(cfg: Mapping[str, Any], key: str, source_id: str, default: int, *, minimum: int = 1) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    return as_int(value, key, source_id, minimum=minimum)


def as_float(value: Any, key: str, source_id: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise bad(source_id, key, f"must be a positive number, got {value!r}")
    return float(value)


def as_bool(value: Any, key: str, source_id: str) -> bool:
    if not isinstance(value, bool):
        raise bad(source_id, key, f"must be true or false, got {value!r}")
    return value
