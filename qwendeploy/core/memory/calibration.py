"""The constants of the estimate that a model's shape does not fix, each with the logs or runs it was fitted to."""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.core.units import MiB


@dataclass(frozen=True)
class Calibration:
    """Constants of the estimate that the model shape does not fix, each with where it comes from.

    Byte constants are per GPU. Two sources: published vLLM 0.17–0.19 start-up logs on H100 (V1 model runner;
    tests/fixtures/published_logs.yaml) and vLLM 0.26 start-ups measured on the project's H200 (V2 model runner;
    tests/fixtures/gpu-runs/measured.yaml). docs/accuracy.md shows both fits.
    """

    cuda_context_bytes: int = 520 * MiB
    """CUDA context + kernel images of the worker; created before vLLM's baseline snapshot (outside the budget).
    Measured: "Free memory on device (139.29/139.8 GiB) on startup" on an empty H200 (0.51 GiB)."""
    non_torch_bytes: int = 250 * MiB
    """V1 runner: non-torch growth during profiling on one GPU (cuBLAS workspaces): 0.24–0.25 GiB in the 0.19 logs."""
    early_non_torch_bytes: int = 138 * MiB
    """V1 runner up to 0.17 (``Accounting.small_non_torch_base``): 0.13 GiB in the llm-d version sweep on 0.15 and 0.17
    (Qwen3-14B, H100) and 0.13–0.14 GiB in H100 runs of Qwen3-0.6B, Qwen3-32B and Llama-3.1-8B on a pre-0.17 image;
    the 0.10.2 8×L40S log shows 0.21 GiB in all at TP 8."""
    v2_non_torch_bytes: int = 225 * MiB
    """V2 runner: 0.22 GiB on every vLLM 0.26 run on the H200 (0.5B to 14B)."""
    nccl_base_bytes: int = 256 * MiB
    """NCCL communicator buffers when TP×PP > 1."""
    nccl_per_peer_bytes: int = 36 * MiB
    """Extra NCCL buffers per other rank of the TP group."""
    custom_all_reduce_bytes: int = 64 * MiB
    """vLLM's custom all-reduce buffers over PCIe peer-to-peer (two GPUs)."""
    nvlink_all_reduce_bytes: int = 1568 * MiB
    """All-reduce buffers over NVLink (custom all-reduce and symmetric-memory workspaces): H100 logs show
    non-torch memory of 2.06–2.13 GiB at TP 2–4 against 0.24 GiB at TP 1."""
    activation_hidden_factor: float = 6.0
    """hidden_size-wide tensors alive per token at the forward peak (residual, normed input, attention out …)."""
    activation_mlp_factor: float = 3.0
    """intermediate-wide tensors per token at the MLP peak (gate_up output = 2, activation output = 1)."""
    activation_scale: float = 1.0
    """V1 runner: multiplier on the forward-pass peak (torch.compile fusions and allocator rounding)."""
    v2_forward_scale: float = 0.85
    """V2 runner: multiplier on the forward-pass peak. Measured: Qwen2.5-7B peaks at 2.15 GiB with 16384 tokens."""
    activation_moe_scale: float = 4.55
    """Multiplier on the fused-MoE per-token width (fitted: Qwen3-30B-A3B peaks at 2.68 GiB with 8192 tokens)."""
    sampler_fp32_copies: float = 3.22
    """V1 runner: fp32 copies of the [max_num_seqs × vocab] logits alive in the dummy sampler run: logs show ~14.9
    bytes per logit (2 for the bf16 logits + 4 × 3.22) for Qwen2.5-7B, Qwen3-8B and Llama-3.1-8B alike."""
    sort_sampler_fp32_copies: float = 9.1
    """V1 runner before 0.17: fp32-equivalent copies of the logits at the dummy sampler's peak when top-k/top-p sort
    the whole vocabulary (``apply_top_k_top_p``: sorted fp32 values + int64 indices + softmax/cumsum + the scattered
    result). Fitted to the llm-d version sweep: Qwen3-14B at 1024 sequences peaks at 5.64 GiB on 0.15 and 0.16
    (2 + 4 × 9.1 ≈ 38.4 B per logit) against 2.23 GiB from 0.17, same settings."""
    v2_vocab_buffer_factor: float = 1.0
    """V2 runner: the profile peak holds a buffer of vocab/tp × hidden × dtype bytes (the LM head's shape) next to the
    hidden states. Measured on 0.26: 7B 1.04 GiB at 2048 tokens / 64 sequences (the buffer is 1.02 GiB) and
    1.06–1.13 at 8192; 0.5B 0.35, Qwen3-8B 1.29, 14B 1.61; an AWQ 7B log on an RTX 4080 shows 1.04 GiB too."""
    v2_sampler_bytes_per_logit: float = 0.5
    """V2 runner: the light default sampler pass of the profile (0.07 GiB at 1024 rows of the Qwen vocabulary)."""
    warmup_base_bytes: int = 128 * MiB
    """Sampler warm-up (fp32 logits pipeline: penalties, top-k/top-p, logprobs) fixed part."""
    warmup_bytes_per_logit: float = 22.7
    """Sampler warm-up bytes per logit of ``max_num_seqs × vocab``. Measured on 0.26 as the serving footprint above
    weights + KV + graphs + context: 3.2–3.5 GiB at 1024 sequences (every model), 0.33 GiB at 64."""
    cuda_graph_base_bytes: int = 560 * MiB
    """V1 runner: CUDA-graph memory independent of depth (capture pool, the largest batch's buffers)."""
    cuda_graph_per_layer_bytes: int = 11776 * 1024
    """V1 runner: CUDA-graph memory per decoder layer on the GPU (11.5 MiB; fitted to the 0.19 logs)."""
    v2_graph_base_bytes: int = 312 * MiB
    """V2 runner: CUDA-graph memory at 512 captured sizes, fixed part (0.26: 0.5B 0.39, 7B 0.89, Qwen3-8B 1.00,
    14B 0.94 GiB; least squares on hidden size)."""
    v2_graph_per_hidden_bytes: int = 157 * 1024
    """V2 runner: CUDA-graph memory per unit of hidden size (0.146 MiB)."""
    cuda_graph_tp_exponent: float = 0.25
    """Graph memory shrinks with TP as tp^-exponent (logged: 0.87 / 0.71 / 0.64 GiB at TP 1 / 2 / 4)."""


DEFAULT_CALIBRATION = Calibration()
