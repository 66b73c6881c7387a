"""Model families beyond the plain decoder: what a config.json says about hybrid attention, vision towers, pooling
and dual-chunk attention, and which of vLLM's Qwen architectures the estimator models.

The list of architectures is data (``qwendeploy/data/architectures.yaml``, enumerated from vLLM's model registry);
``check_architecture`` refuses — with the reason — every one that is not modelled, so that no architecture gets a
silent, wrong estimate.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from qwendeploy.core import safe_yaml
from qwendeploy.errors import BadInput

Task = Literal["generate", "embed", "classify", "reward"]


@dataclass(frozen=True)
class LinearAttention:
    """Gated DeltaNet (Qwen3-Next) linear-attention layers: a fixed state per sequence instead of a KV cache."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    @property
    def key_dim(self) -> int:
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.num_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv1d: q, k (key_dim each) and v (value_dim)."""
        return 2 * self.key_dim + self.value_dim


@dataclass(frozen=True)
class VisionTower:
    """A vision encoder as its ``vision_config`` describes it."""

    kind: str
    """``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl`` (the layout of the blocks and mergers)."""
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    in_channels: int = 3
    deepstack_layers: int = 0
    """Qwen3-VL: extra mergers feeding vision features into early decoder layers."""
    num_position_embeddings: int = 0
    """Qwen3-VL: learned position embeddings of the vision tower."""


VISION_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


# --------------------------------------------------------------------------------------------------------------
# The registry of architectures
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchitectureEntry:
    """One architecture of vLLM's registry that a Qwen checkpoint can name."""

    name: str
    status: Literal["modelled", "refused"]
    family: str
    """``dense``, ``moe``, ``hybrid``, ``vision``, ``pooling``, ``omni``, ``audio`` …"""
    task: Task = "generate"
    reason: str = ""
    """For a refused architecture: what is not modelled (shown to the user)."""
    via: str = ""
    """``convert``: not a registry key, a name vLLM reaches by converting a *ForCausalLM."""


@functools.cache
def architectures() -> Mapping[str, ArchitectureEntry]:
    """Every Qwen architecture of vLLM's registry with its status, from ``data/architectures.yaml``."""
    text = resources.files("qwendeploy").joinpath("data/architectures.yaml").read_text(encoding="utf-8")
    doc = safe_yaml.load(text)
    out: dict[str, ArchitectureEntry] = {}
    for raw in doc["architectures"]:
        entry = ArchitectureEntry(
            name=raw["name"],
            status=raw["status"],
            family=raw["family"],
            task=raw.get("task", "generate"),
            reason=raw.get("reason", ""),
            via=raw.get("via", ""),
        )
        out[entry.name] = entry
    return out


def check_architecture(architecture: str, source_id: str) -> ArchitectureEntry | None:
    """The registry entry of ``architecture``; raises for one that is listed as not modelled.

    Returns None for an architecture outside the list (a Llama-shaped config read by the generic decoder rules).

    Raises:
        BadInput: the architecture is one of vLLM's Qwen architectures the estimator does not model (exit 2).
    """
    entry = architectures().get(architecture)
    if entry is not None and entry.status == "refused":
        raise BadInput(
            f"{source_id}: architecture {architecture} is not modelled by qwendeploy's memory estimator: "
            f"{entry.reason} Planning it would give a wrong number, so plan refuses.",
            hint="Modelled Qwen architectures: " + ", ".join(modelled_architectures()) + ".",
        )
    return entry


def modelled_architectures() -> tuple[str, ...]:
    return tuple(sorted(name for name, e in architectures().items() if e.status == "modelled"))


# --------------------------------------------------------------------------------------------------------------
# config.json → family fields
# --------------------------------------------------------------------------------------------------------------

MEMORY_KEYS = (
    "layer_types",
    "full_attention_interval",
    "linear_num_key_heads",
    "linear_num_value_heads",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "linear_conv_kernel_dim",
    "vision_config",
    "audio_config",
    "thinker_config",
    "talker_config",
    "dual_chunk_attention_config",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "num_nextn_predict_layers",
    "mtp_num_hidden_layers",
)
"""Config keys that change how vLLM allocates memory (read by this module, or reported when not understood)."""


def _int(cfg: Mapping[str, Any], key: str, source_id: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(
            f"config.json of {source_id}: field {key!r} must be a positive integer, got {value!r}.",
            hint="Check the model's config.json; qwendeploy reads the same fields vLLM does.",
        )
    return value


def layer_kinds(cfg: Mapping[str, Any], num_layers: int, source_id: str) -> tuple[str, ...]:
    """Per decoder layer ``full_attention`` or ``linear_attention`` (empty: every layer is full attention).

    Qwen3-Next: ``layer_types`` when given, else every ``full_attention_interval``-th layer (1-based) is full
    attention, as vLLM's Qwen3NextConfig derives it.
    """
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != num_layers or not all(isinstance(t, str) for t in types):
            raise BadInput(
                f"config.json of {source_id}: 'layer_types' must list one string per layer ({num_layers}).",
                hint="Check the model's config.json.",
            )
        kinds = tuple(types)
        if all(k == "full_attention" for k in kinds):
            return ()
        return kinds
    if "full_attention_interval" in cfg and any(k.startswith("linear_") for k in cfg):
        interval = _int(cfg, "full_attention_interval", source_id)
        return tuple("full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers))
    return ()


def linear_attention(cfg: Mapping[str, Any], source_id: str) -> LinearAttention:
    return LinearAttention(
        num_key_heads=_int(cfg, "linear_num_key_heads", source_id),
        num_value_heads=_int(cfg, "linear_num_value_heads", source_id),
        key_head_dim=_int(cfg, "linear_key_head_dim", source_id),
        value_head_dim=_int(cfg, "linear_value_head_dim", source_id),
        conv_kernel=_int(cfg, "linear_conv_kernel_dim", source_id),
    )


def vision_tower(config: Mapping[str, Any], architecture: str, source_id: str) -> VisionTower | None:
    """The vision tower of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL config; None without ``vision_config``."""
    vc = config.get("vision_config")
    if vc is None:
        return None
    if not isinstance(vc, Mapping):
        raise BadInput(f"config.json of {source_id}: 'vision_config' must be a mapping.")
    arch = architecture.lower()
    if arch.startswith("qwen3vl") or str(vc.get("model_type", "")).startswith("qwen3_vl"):
        kind = "qwen3_vl"
    elif arch.startswith("qwen2_5_vl") or str(vc.get("model_type", "")).startswith("qwen2_5_vl"):
        kind = "qwen2_5_vl"
    elif arch.startswith("qwen2vl") or str(vc.get("model_type", "")).startswith("qwen2_vl"):
        kind = "qwen2_vl"
    else:
        raise BadInput(
            f"config.json of {source_id}: a vision tower of {architecture} is not modelled (only Qwen2-VL, "
            "Qwen2.5-VL and Qwen3-VL towers are).",
        )
    if kind == "qwen2_vl":
        hidden = _int(vc, "embed_dim", source_id)
        inter = int(hidden * float(vc.get("mlp_ratio", 4)))
        out = _int(vc, "hidden_size", source_id)
    else:
        hidden = _int(vc, "hidden_size", source_id)
        inter = _int(vc, "intermediate_size", source_id)
        out = _int(vc, "out_hidden_size", source_id)
    deepstack = vc.get("deepstack_visual_indexes") or []
    return VisionTower(
        kind=kind,
        depth=_int(vc, "depth", source_id),
        hidden_size=hidden,
        intermediate_size=inter,
        num_heads=_int(vc, "num_heads", source_id),
        patch_size=_int(vc, "patch_size", source_id, 14),
        temporal_patch_size=_int(vc, "temporal_patch_size", source_id, 2),
        spatial_merge_size=_int(vc, "spatial_merge_size", source_id, 2),
        out_hidden_size=out,
        in_channels=_int(vc, "in_channels", source_id, vc.get("in_chans", 3)),
        deepstack_layers=len(deepstack) if isinstance(deepstack, list) else 0,
        num_position_embeddings=int(vc.get("num_position_embeddings", 0) or 0),
    )


def vision_params(v: VisionTower) -> int:
    """Parameters of the vision tower (patch embedding, blocks, mergers), as the checkpoint stores them.

    * Qwen2-VL: LayerNorm blocks, fc1/fc2 MLP; one merger (LayerNorm, 2 linears).
    * Qwen2.5-VL: RMSNorm blocks, gated (gate/up/down) MLP with biases; one merger (RMSNorm, 2 linears).
    * Qwen3-VL: LayerNorm blocks, fc1/fc2 MLP, learned position embeddings, a biased patch embedding; one merger
      plus one per deepstack layer (the deepstack mergers norm the 4×-wide shuffled input).
    """
    h, i = v.hidden_size, v.intermediate_size
    patch = v.in_channels * v.temporal_patch_size * v.patch_size**2 * h
    qkv = h * 3 * h + 3 * h
    proj = h * h + h
    if v.kind == "qwen2_5_vl":
        mlp = 3 * h * i + 2 * i + h
        norms = 2 * h
    else:
        mlp = 2 * h * i + i + h
        norms = 4 * h
    blocks = v.depth * (qkv + proj + mlp + norms)
    merged = h * v.spatial_merge_size**2
    merger_linears = merged * merged + merged + merged * v.out_hidden_size + v.out_hidden_size
    if v.kind == "qwen3_vl":
        patch += h  # conv bias
        main = merger_linears + 2 * h
        deep = v.deepstack_layers * (merger_linears + 2 * merged)
        return patch + blocks + main + deep + v.num_position_embeddings * h
    norm = 2 * h if v.kind == "qwen2_vl" else h
    return patch + blocks + merger_linears + norm


def task_of(architecture: str, config: Mapping[str, Any]) -> Task:
    """What vLLM's runner does with the checkpoint: generate, or a pooling task (embed/classify/reward)."""
    entry = architectures().get(architecture)
    if entry is not None:
        return entry.task
    return "generate"


def dual_chunk_trained_length(config: Mapping[str, Any]) -> int | None:
    """The trained window of a dual-chunk-attention (Qwen2.5-*-1M) config; None without DCA."""
    dca = config.get("dual_chunk_attention_config")
    if not isinstance(dca, Mapping):
        return None
    raw = dca.get("original_max_position_embeddings", dca.get("chunk_size"))
    return int(raw) if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else None


def mtp_layers(config: Mapping[str, Any]) -> int:
    """Multi-token-prediction layers the checkpoint ships (used only with speculative decoding)."""
    for key in ("num_nextn_predict_layers", "mtp_num_hidden_layers"):
        raw = config.get(key)
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            return raw
    return 0


def unmodelled_keys(
    config: Mapping[str, Any], *, hybrid: bool, vision: bool, dca: bool, sliding_window_off: bool
) -> tuple[str, ...]:
    """Memory-relevant keys present in ``config`` whose effect the estimate does not model."""
    understood = set()
    if hybrid:
        understood |= {k for k in MEMORY_KEYS if k.startswith("linear_")} | {"layer_types", "full_attention_interval"}
    if vision:
        understood.add("vision_config")
    if dca:
        understood.add("dual_chunk_attention_config")
    if sliding_window_off:
        understood |= {"use_sliding_window", "sliding_window", "max_window_layers"}
    understood |= {"num_nextn_predict_layers", "mtp_num_hidden_layers"}  # noted separately (MTP)
    return tuple(k for k in MEMORY_KEYS if k in config and config[k] not in (None, False) and k not in understood)
