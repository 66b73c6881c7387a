"""Memory outside the torch allocator's activation peak: non-torch growth (cuBLAS, NCCL, all-reduce buffers) and
CUDA graphs."""

from __future__ import annotations

from qwendeploy.core.memory.calibration import Calibration
from qwendeploy.core.memory.explanation import Explanation
from qwendeploy.core.memory.settings import EngineSettings


def non_torch_bytes(
    *,
    tp: int,
    pp: int,
    custom_all_reduce: bool,
    cal: Calibration,
    nvlink: bool = False,
    runner: str = "v1",
    all_reduce: str = "fusion",
    small_base: bool = False,
) -> Explanation:
    """Non-torch growth during profiling: cuBLAS workspaces, NCCL and all-reduce buffers.

    ``all_reduce`` is the release's ``Accounting.all_reduce_buffers``: ``fusion`` charges the NVLink fusion workspace
    (or the custom all-reduce buffers over PCIe P2P), ``custom`` the custom all-reduce buffers on either link, ``none``
    nothing (they exist before the snapshot: the value is what the budget pays; they still occupy the GPU)."""
    nccl = cal.nccl_base_bytes + cal.nccl_per_peer_bytes * (tp - 1) if tp * pp > 1 else 0
    car = 0
    # vLLM allocates these only where custom all-reduce is enabled: P2P between the ranks, one node, not
    # --disable-custom-all-reduce (CustomAllreduce.__init__ returns early otherwise).
    if tp > 1 and custom_all_reduce and all_reduce != "none":
        car = cal.nvlink_all_reduce_bytes if nvlink and all_reduce == "fusion" else cal.custom_all_reduce_bytes
    base = cal.v2_non_torch_bytes if runner == "v2" else cal.non_torch_bytes
    if small_base and runner == "v1":
        base = cal.early_non_torch_bytes
    return Explanation(
        "non_torch",
        "base + (tp×pp > 1: nccl_base + nccl_per_peer × (tp − 1)) + (tp > 1 and custom all-reduce enabled: NVLink "
        "all-reduce workspaces, or custom all-reduce buffers over PCIe P2P)",
        {
            "base": base,
            "nccl_base": cal.nccl_base_bytes,
            "nccl_per_peer": cal.nccl_per_peer_bytes,
            "tp": tp,
            "pp": pp,
            "all_reduce_buffers": car,
            "all_reduce_charged": all_reduce,
        },
        base + nccl + car,
    )


def cuda_graph_capture_size(settings: EngineSettings) -> int:
    """vLLM's largest captured batch: min(2 × max_num_seqs, 512, max_num_batched_tokens); 0 with --enforce-eager."""
    if settings.enforce_eager:
        return 0
    return min(2 * settings.max_num_seqs, 512, settings.max_num_batched_tokens)


def cuda_graph_bytes(
    *,
    layers: int,
    enforce_eager: bool,
    cal: Calibration,
    tp: int = 1,
    runner: str = "v1",
    hidden: int = 0,
    capture_size: int = 512,
) -> Explanation:
    """CUDA-graph memory on one GPU: a fixed part plus one per decoder layer (V1) or per unit of hidden size (V2),
    scaled to the largest captured batch and shrinking with TP."""
    shrink = tp ** (-cal.cuda_graph_tp_exponent)
    size = capture_size / 512
    if runner == "v2":
        base = cal.v2_graph_base_bytes + cal.v2_graph_per_hidden_bytes * hidden
        formula = (
            "0 with --enforce-eager, else (graph_base + graph_per_hidden × hidden) × capture_size/512 × tp^-exponent"
        )
    else:
        base = cal.cuda_graph_base_bytes + cal.cuda_graph_per_layer_bytes * layers
        formula = (
            "0 with --enforce-eager, else (graph_base + graph_per_layer × layers_on_gpu) × capture_size/512 × "
            "tp^-exponent"
        )
    value = 0 if enforce_eager or capture_size <= 0 else int(base * size * shrink)
    inputs: dict[str, object] = {"tp": tp, "exponent": cal.cuda_graph_tp_exponent, "enforce_eager": enforce_eager}
    if runner == "v2":
        inputs.update(graph_base=cal.v2_graph_base_bytes, graph_per_hidden=cal.v2_graph_per_hidden_bytes, hidden=hidden)
    else:
        inputs.update(
            graph_base=cal.cuda_graph_base_bytes, graph_per_layer=cal.cuda_graph_per_layer_bytes, layers_on_gpu=layers
        )
    inputs["capture_size"] = capture_size
    return Explanation("cuda_graphs", formula, inputs, value)
