"""What exists: the model catalog and the GPU catalog as rows for ``qwendeploy models`` / ``qwendeploy gpus``.

Pure. Rows are read through the catalogs' own API (``core.models.catalog``, ``core.gpus.gpu_catalog``), so an entry
added there is listed without a change here. "Fits common cards" asks the planner itself, one card at a time, at the
model's native context with one request: the same answer ``qwendeploy plan MODEL --gpus 1xCARD`` gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qwendeploy.core.gpus import GpuType, gpu_catalog, parse_inventory
from qwendeploy.core.hardware import Machine
from qwendeploy.core.models import ModelSpec, catalog
from qwendeploy.core.params import param_breakdown
from qwendeploy.errors import QwendeployError

COMMON_CARDS: tuple[str, ...] = ("L4", "RTX4090", "A100-80GB", "H100-80GB", "H200")
"""Single cards a reader is likely to hold or rent, smallest first: ``models`` says which of them hold each model."""

_FAMILY_RE = re.compile(r"^(qwq|qwen\d+(?:\.\d+)?(?:-(?:next|vl|omni|coder|math|embedding|reranker))?)", re.I)


@dataclass(frozen=True)
class ModelRow:
    """One catalog model as ``qwendeploy models`` lists it."""

    id: str
    family: str
    params: int
    """Parameters (published where the catalog has the figure, else counted from the config)."""
    active_params: int
    """Parameters one token uses (equal to ``params`` for a dense model)."""
    native_context: int
    longest_context: int
    """With the published YaRN recipe, where there is one."""
    quantization: str | None
    base_model: str | None
    variants: tuple[str, ...]
    """Quantized checkpoints of this model in the catalog."""
    fits_on: tuple[str, ...]
    """Of COMMON_CARDS: one card of each that holds the model at its native context (one request)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "params": self.params,
            "active_params": self.active_params,
            "native_context": self.native_context,
            "longest_context": self.longest_context,
            "quantization": self.quantization,
            "base_model": self.base_model,
            "quantized_variants": list(self.variants),
            "fits_one_card_at_native_context": list(self.fits_on),
        }


def family_of(spec: ModelSpec) -> str:
    """``Qwen2.5``, ``Qwen3``, ``Qwen3-VL``, ``QwQ`` …: the catalog's own ``family`` where it has one, else the
    leading part of the repo name."""
    own = getattr(spec, "family", None)
    if isinstance(own, str) and own:
        return own
    name = spec.id.rsplit("/", 1)[-1]
    m = _FAMILY_RE.match(name)
    if m is None:
        return name.split("-", 1)[0]
    word = m.group(1)
    head, _, tail = word.partition("-")
    head = "QwQ" if head.lower() == "qwq" else "Qwen" + head[4:]
    known = {"next": "Next", "vl": "VL", "omni": "Omni", "coder": "Coder", "math": "Math"}
    return head + (f"-{known.get(tail.lower(), tail.capitalize())}" if tail else "")


def _params(spec: ModelSpec) -> tuple[int, int]:
    try:
        bd = param_breakdown(spec)
        total, active = bd.total(), bd.active()
    except (ValueError, KeyError, TypeError, ZeroDivisionError, AttributeError, NotImplementedError):
        # a model kind the counter does not know: the published figure alone
        total = active = 0
    if spec.published_params:
        # The published figure for the total; the active share from the config's own count.
        active = round(spec.published_params * active / total) if total else spec.published_params
        total = spec.published_params
    return total, active


def fits_one_card(spec: ModelSpec, card: Machine) -> bool:
    """Whether the planner places ``spec`` on this one card at its native context with one request."""
    from qwendeploy.core.planner import PlanRequest, plan

    try:
        return plan(
            PlanRequest(spec=spec, machine=card, max_model_len=spec.max_position_embeddings, tp=1, pp=1, dp=1),
            suggest=False,
        ).fits
    except QwendeployError:  # a rule the model breaks on one card, or a kind the planner refuses
        return False
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError, NotImplementedError):
        # A catalog kind the planner cannot size yet (a new architecture): the listing still lists it.
        return False


def model_rows(*, fits: bool = True) -> list[ModelRow]:
    """Every catalog model, in catalog order. ``fits=False`` skips the planner runs (the fast path)."""
    specs = catalog()
    cards = [(name, parse_inventory(f"1x{name}")) for name in COMMON_CARDS] if fits else []
    variants: dict[str, list[str]] = {}
    for s in specs:
        if s.base_model:
            variants.setdefault(s.base_model, []).append(s.id)
    rows = []
    for s in specs:
        total, active = _params(s)
        rows.append(
            ModelRow(
                id=s.id,
                family=family_of(s),
                params=total,
                active_params=active,
                native_context=s.max_position_embeddings,
                longest_context=max(s.max_position_embeddings, s.max_context_with_yarn),
                quantization=s.quantization.method if s.quantization else None,
                base_model=s.base_model,
                variants=tuple(variants.get(s.id, ())),
                fits_on=tuple(name for name, m in cards if fits_one_card(s, m)),
            )
        )
    return rows


@dataclass(frozen=True)
class GpuRow:
    """One GPU catalog card as ``qwendeploy gpus`` lists it."""

    card: GpuType

    def to_dict(self) -> dict[str, Any]:
        g = self.card
        return {
            "id": g.id,
            "name": g.name,
            "nvml_name": g.nvml_name,
            "aliases": list(g.aliases),
            "memory_type": g.memory_type,
            "total_bytes": g.total_bytes,
            "nvml_total_bytes": g.nvml_total_bytes,
            "bandwidth_gbps": g.bandwidth_gbps,
            "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}",
            "bf16": g.bf16,
            "fp8": g.fp8,
            "interconnect": g.interconnect,
            "p2p": g.p2p,
            "confidence": g.confidence,
        }


def gpu_rows() -> list[GpuRow]:
    return [GpuRow(g) for g in gpu_catalog()]


def machine_json(machine: Machine) -> dict[str, Any]:
    """What NVML sees here, as ``qwendeploy gpus --json`` prints it under ``local``."""
    return {
        "driver_version": machine.driver_version,
        "cuda_driver_version": machine.cuda_driver_version,
        "interconnect": machine.interconnect,
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "catalog_id": g.catalog_id,
                "total_bytes": g.total_bytes,
                "free_bytes": g.free_bytes,
                "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}",
                "processes": len(g.processes),
            }
            for g in machine.gpus
        ],
        "notes": list(machine.notes),
    }
