"""KV-cache layout of hybrid models (Qwen3-Next: Gated DeltaNet linear attention + full attention every 4th layer).

vLLM keeps one pool of equally sized pages for both kinds of layer (``vllm/v1/kv_cache_interface.py``,
``vllm/v1/core/kv_cache_utils.py``, ``vllm/model_executor/models/config.py``
``HybridAttentionMambaModelConfig``):

* A linear-attention layer holds, per running sequence, a conv state (``conv_dim/tp × (kernel − 1)``) and a
  recurrent state (``v_heads/tp × k_head_dim × v_head_dim``) in the model dtype: its "mamba page".
* The attention block size is raised to the smallest multiple of 16 whose attention page (``block × 2 × kv_heads
  × head_dim × kv_bytes`` per layer) is at least the mamba page; the mamba page is padded up to it
  ("Setting attention block size to 544 tokens …", "Padding mamba page size by …%" in the start-up log).
* Layers are put into KV-cache groups of equal size (``_get_kv_cache_groups_uniform_page_size``): the group size
  is the smallest per-kind layer count (the largest when all counts are within 1.5× of each other, 0.33); each kind
  fills ceil(count / group size) groups. The pool has ``group_size`` tensors of ``num_blocks`` pages, each shared by
  one layer of every group, so one block costs ``group_size × page`` bytes.
* A request of L tokens takes ceil(L / block) blocks in every attention group and, in every linear-attention group,
  one state block — two with prefix caching (``mamba_cache_mode`` ``align``: ``MambaSpec.max_memory_usage_bytes`` =
  2 pages; ``none``: 1), which vLLM turns on for hybrids by default from 0.33 but not in 0.26
  (``Accounting.hybrid_prefix_caching`` in core/memory/accounting.py says which release does what).
* vLLM logs the maximum concurrency as ``num_blocks / blocks_per_request``
  (``get_max_concurrency_for_kv_cache_config``) and ``GPU KV cache size`` as ``int(concurrency × max_model_len)``
  (read in 0.26 and 0.33); an older ``_report_kv_cache_config`` logged ``num_blocks // groups × smallest block``.

Read in vLLM 0.26.0 (the wheel the real-GPU runs use: ``platforms/interface.py`` ``_align_hybrid_block_size``,
``model_executor/models/config.py`` ``MambaModelConfig``, ``v1/core/kv_cache_utils.py``) and 0.33.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwendeploy.core.models import ModelSpec

KERNEL_BLOCK_ALIGNMENT = 16
"""FlashAttention needs attention blocks in multiples of 16 tokens (``kernel_block_alignment_size``)."""


@dataclass(frozen=True)
class HybridLayout:
    """The shared page pool of one GPU of a hybrid model."""

    attention_layers: int
    linear_layers: int
    attention_bytes_per_token: int
    """One full-attention layer's KV bytes per token on this GPU (2 × kv_heads/tp × head_dim × kv_bytes)."""
    conv_state_bytes: int
    """One linear-attention layer's conv state per sequence on this GPU."""
    recurrent_state_bytes: int
    """One linear-attention layer's recurrent (delta-rule) state per sequence on this GPU."""
    block_size: int
    """Attention tokens per block after page-size unification."""
    group_size: int
    attention_groups: int
    linear_groups: int
    state_blocks: int = 2
    """Blocks each linear-attention group holds per request: 2 with prefix caching (``align``), else 1."""
    tokens_from_concurrency: bool = True
    """0.33 logs the KV cache size as concurrency × max_model_len; older releases as blocks // groups × block."""

    @property
    def mamba_page_bytes(self) -> int:
        return self.conv_state_bytes + self.recurrent_state_bytes

    @property
    def page_bytes(self) -> int:
        """The unified page: the attention page, the mamba page padded up to it."""
        return self.block_size * self.attention_bytes_per_token

    @property
    def block_bytes(self) -> int:
        """Memory of one block index across the pool's ``group_size`` shared tensors."""
        return self.group_size * self.page_bytes

    @property
    def groups(self) -> int:
        return self.attention_groups + self.linear_groups

    @property
    def padding_pct(self) -> float:
        """How much vLLM pads the mamba page (its log line "Padding mamba page size by X%")."""
        return 100 * (self.page_bytes - self.mamba_page_bytes) / self.mamba_page_bytes if self.mamba_page_bytes else 0

    def blocks_per_request(self, max_model_len: int) -> int:
        """Blocks one request of ``max_model_len`` tokens needs: its tokens in every attention group, one state
        page in every linear-attention group."""
        return (
            self.attention_groups * math.ceil(max_model_len / self.block_size) + self.linear_groups * self.state_blocks
        )

    def tokens_logged(self, num_blocks: int, max_model_len: int) -> int:
        """vLLM's "GPU KV cache size: N tokens" for a hybrid."""
        if self.tokens_from_concurrency:
            return int(self.max_concurrency(num_blocks, max_model_len) * max_model_len)
        return num_blocks // self.groups * min(self.block_size, max_model_len)

    def max_concurrency(self, num_blocks: int, max_model_len: int) -> float:
        """vLLM's "Maximum concurrency for L tokens per request": num_blocks / blocks per request."""
        return num_blocks / self.blocks_per_request(max_model_len)

    def max_len_for(self, num_blocks: int, concurrency: int) -> int:
        """Longest max_model_len that leaves room for ``concurrency`` requests (one block is vLLM's null block)."""
        usable = max(0, num_blocks - 1) // max(1, concurrency) - self.linear_groups * self.state_blocks
        if usable <= 0 or self.attention_groups == 0:
            return 0
        return (usable // self.attention_groups) * self.block_size


def state_bytes(spec: ModelSpec, *, tp: int, dtype_bytes: int) -> tuple[int, int]:
    """(conv state, recurrent state) bytes of one linear-attention layer for one sequence on one TP rank.

    vLLM's ``MambaStateShapeCalculator.gated_delta_net_state_shape``: conv (conv_dim/tp, kernel − 1), temporal
    (v_heads/tp, k_head_dim, v_head_dim); both in the model dtype unless ``--mamba-ssm-cache-dtype`` says otherwise.
    """
    la = spec.linear_attention
    if la is None:
        return 0, 0
    conv = (la.conv_dim // tp) * (la.conv_kernel - 1) * dtype_bytes
    recurrent = (la.num_value_heads // tp) * la.key_head_dim * la.value_head_dim * dtype_bytes
    return conv, recurrent


def group_size(counts: list[int]) -> int:
    """vLLM's KV-cache group size for layer kinds with these layer counts (uniform page size)."""
    present = [c for c in counts if c > 0]
    smallest, largest = min(present), max(present)
    return largest if largest < smallest * 1.5 else smallest


def hybrid_layout(
    spec: ModelSpec,
    *,
    tp: int,
    kinds: tuple[str, ...],
    kv_bytes: int,
    dtype_bytes: int,
    block_size: int | None = None,
    prefix_caching: bool = True,
    tokens_from_concurrency: bool = True,
) -> HybridLayout:
    """The page pool of one GPU holding the layers ``kinds`` (its pipeline stage's slice of ``spec.layer_kinds``).

    Args:
        spec: a hybrid model.
        tp: tensor-parallel size.
        kinds: the stage's layer kinds.
        kv_bytes: bytes per KV element (``--kv-cache-dtype``).
        dtype_bytes: bytes per element of the model dtype (the linear-attention state).
        block_size: ``--block-size`` if given; raised when it is too small for the mamba page.
        prefix_caching: vLLM's prefix caching is on (a release's default for hybrids, or asked for): two state
            blocks per request in each linear-attention group.
        tokens_from_concurrency: how the release logs "GPU KV cache size" (see ``HybridLayout``).
    """
    attn = sum(1 for k in kinds if k == "full_attention")
    lin = sum(1 for k in kinds if k == "linear_attention")
    heads = max(1, math.ceil(spec.num_key_value_heads / tp))
    per_token = 2 * heads * spec.head_dim * kv_bytes
    conv, rec = state_bytes(spec, tp=tp, dtype_bytes=dtype_bytes)
    mamba_page = conv + rec if lin else 0
    block = block_size or KERNEL_BLOCK_ALIGNMENT
    if mamba_page:
        # 0.26 (platforms/interface.py _align_hybrid_block_size): the alignment is the larger of the backend's
        # smallest kernel block (16) and the block size already set (--block-size).
        align = max(KERNEL_BLOCK_ALIGNMENT, block)
        needed = align * math.ceil(mamba_page / (align * per_token))
        if block < needed:
            block = needed
    gs = group_size([attn, lin])
    return HybridLayout(
        attention_layers=attn,
        linear_layers=lin,
        attention_bytes_per_token=per_token,
        conv_state_bytes=conv,
        recurrent_state_bytes=rec,
        block_size=block,
        group_size=gs,
        attention_groups=math.ceil(attn / gs) if attn else 0,
        linear_groups=math.ceil(lin / gs) if lin else 0,
        state_blocks=2 if prefix_caching else 1,
        tokens_from_concurrency=tokens_from_concurrency,
    )
