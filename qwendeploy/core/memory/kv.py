"""The KV cache: bytes per token on one GPU (full attention, and the hybrid page pool of Qwen3-Next), and vLLM's block
arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, replace

from qwendeploy.core.hybrid_attention import HybridLayout, hybrid_layout
from qwendeploy.core.memory.accounting import Accounting
from qwendeploy.core.memory.dtypes import DTYPE_BYTES, kv_dtype_bytes
from qwendeploy.core.memory.explanation import Explanation
from qwendeploy.core.memory.settings import DEFAULT_BLOCK_SIZE, EngineSettings
from qwendeploy.core.memory.sharding import kv_heads_per_rank, pp_layer_counts
from qwendeploy.core.models import ModelSpec


def kv_bytes_per_token(spec: ModelSpec, *, tp: int, layers: int, kv_cache_dtype: str, dtype: str) -> Explanation:
    """KV-cache bytes one token occupies on one GPU holding ``layers`` decoder layers."""
    heads = kv_heads_per_rank(spec.num_key_value_heads, tp)
    elem = kv_dtype_bytes(kv_cache_dtype, dtype)
    value = 2 * layers * heads * spec.head_dim * elem
    return Explanation(
        "kv_bytes_per_token",
        "2 (K and V) × layers_on_gpu × ceil(kv_heads / tp) × head_dim × kv_dtype_bytes",
        {
            "layers_on_gpu": layers,
            "kv_heads": spec.num_key_value_heads,
            "tp": tp,
            "kv_heads_per_rank": heads,
            "head_dim": spec.head_dim,
            "kv_dtype_bytes": elem,
        },
        value,
    )


def hybrid_settings(
    spec: ModelSpec, settings: EngineSettings, *, tp: int, pp: int, dtype: str, acc: Accounting
) -> tuple[EngineSettings, list[HybridLayout]]:
    """Each stage's page pool and the settings with vLLM's unified attention block size (the largest of the
    stages': vLLM sets one block size for the engine)."""
    counts = pp_layer_counts(spec.num_hidden_layers, pp)
    kv_elem = kv_dtype_bytes(settings.kv_cache_dtype, dtype)
    user_block = settings.block_size if settings.block_size != DEFAULT_BLOCK_SIZE else None
    stage_kinds = [spec.layer_kinds[sum(counts[:i]) : sum(counts[: i + 1])] for i in range(pp)]
    block = max(
        hybrid_layout(
            spec, tp=tp, kinds=kinds, kv_bytes=kv_elem, dtype_bytes=DTYPE_BYTES[dtype], block_size=user_block
        ).block_size
        for kinds in stage_kinds
    )
    layouts = [
        hybrid_layout(
            spec,
            tp=tp,
            kinds=kinds,
            kv_bytes=kv_elem,
            dtype_bytes=DTYPE_BYTES[dtype],
            block_size=block,
            prefix_caching=acc.hybrid_prefix_caching and settings.enable_prefix_caching,
            tokens_from_concurrency=acc.hybrid_tokens_from_concurrency,
        )
        for kinds in stage_kinds
    ]
    return replace(settings, block_size=block), layouts


def hybrid_kv_bytes_per_token(layout: HybridLayout, *, tp: int) -> Explanation:
    """KV bytes per token slot on one GPU of a hybrid model (core/hybrid_attention.py): a block index costs a page
    in each layer of a group, so the group size × the attention bytes per token of one layer."""
    return Explanation(
        "kv_bytes_per_token",
        "hybrid (full + linear attention): one block index costs group_size pages of block_size × "
        "attention_bytes_per_token, so per token slot: group_size × 2 × ceil(kv_heads/tp) × head_dim × kv_dtype_bytes; "
        "linear-attention layers hold conv + recurrent state per sequence in mamba pages padded to the attention page",
        {
            "attention_layers_on_gpu": layout.attention_layers,
            "linear_layers_on_gpu": layout.linear_layers,
            "tp": tp,
            "attention_bytes_per_token_per_layer": layout.attention_bytes_per_token,
            "conv_state_bytes": layout.conv_state_bytes,
            "recurrent_state_bytes": layout.recurrent_state_bytes,
            "block_size": layout.block_size,
            "page_bytes": layout.page_bytes,
            "mamba_padding_pct": round(layout.padding_pct, 2),
            "group_size": layout.group_size,
            "groups": f"{layout.attention_groups} attention + {layout.linear_groups} linear",
        },
        layout.group_size * layout.attention_bytes_per_token,
    )


@dataclass(frozen=True)
class KvPlan:
    """vLLM's block arithmetic for a given KV budget (for tests against the reference table)."""

    num_blocks: int
    tokens: int
    max_concurrency: float


def kv_plan(
    budget_bytes: int, bytes_per_token: int, max_model_len: int, block_size: int = DEFAULT_BLOCK_SIZE
) -> KvPlan:
    """Blocks, tokens and concurrency for ``budget_bytes`` of KV memory on one GPU."""
    blocks = budget_bytes // (bytes_per_token * block_size)
    return KvPlan(blocks, blocks * block_size, blocks * block_size / max_model_len)
