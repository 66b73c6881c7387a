"""The estimator against published vLLM start-up logs (tests/fixtures/published_logs.yaml).

Targets (issue 2): weights within ±2% of "Model loading took X GiB" and KV-cache tokens within ±5% of "GPU KV cache
size: N tokens", where the log states every input. ``benchmarks/accuracy.py`` prints the same comparison as the
table in docs/accuracy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwendeploy.core.hardware import Gpu
from qwendeploy.core.memory import EngineSettings, MemoryEstimate, accounting_for, estimate
from qwendeploy.core.models import ModelSpec, Moe, find_model
from qwendeploy.core.units import GiB

LOGS = Path(__file__).parent.parent / "fixtures" / "published_logs.yaml"

LLAMA_31_8B = ModelSpec(
    id="meta-llama/Llama-3.1-8B-Instruct",
    architecture="LlamaForCausalLM",
    num_hidden_layers=32,
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    tie_word_embeddings=False,
    max_position_embeddings=131072,
)
QWEN15_MOE = ModelSpec(
    id="Qwen/Qwen1.5-MoE-A2.7B",
    architecture="Qwen2MoeForCausalLM",
    num_hidden_layers=24,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=128,
    vocab_size=151936,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    attention_bias=True,
    moe=Moe(num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408, shared_expert_intermediate_size=5632),
)

# Published model → (spec, --quantization to apply). Models outside the catalog are spelled out above.
SPECIAL: dict[str, tuple[ModelSpec | str, str | None]] = {
    "meta-llama/Llama-3.1-8B-Instruct": (LLAMA_31_8B, None),
    "Qwen/Qwen1.5-MoE-A2.7B": (QWEN15_MOE, None),
    # W8A8 checkpoints of Qwen2.5-7B: 1 byte per linear weight, like online FP8.
    "RedHatAI/Qwen2.5-7B-Instruct-fp8-dynamic": ("Qwen/Qwen2.5-7B-Instruct", "fp8"),
    "RedHatAI/Qwen2.5-7B-Instruct-quantized.w8a8": ("Qwen/Qwen2.5-7B-Instruct", "fp8"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8": ("Qwen/Qwen3-235B-A22B-FP8", None),
}

EXCLUDED = {
    "vllm-10517-rtx3090-llama-3.1-8b-v06": "vLLM 0.6 (V0 engine): different profiling run and budget rules",
}


@dataclass(frozen=True)
class Row:
    id: str
    source: str
    settings: str
    weights_pub: float
    weights_pred: float
    tokens_pub: int
    tokens_pred: int

    @property
    def weights_err(self) -> float:
        return (self.weights_pred - self.weights_pub) / self.weights_pub * 100

    @property
    def tokens_err(self) -> float:
        return (self.tokens_pred - self.tokens_pub) / self.tokens_pub * 100


def _spec(model: str) -> tuple[ModelSpec, str | None] | None:
    if model in SPECIAL:
        ref, quant = SPECIAL[model]
        spec = find_model(ref) if isinstance(ref, str) else ref
        return (spec, quant) if spec is not None else None
    spec = find_model(model)
    return (spec, None) if spec is not None else None


def usable(entry: dict[str, Any]) -> bool:
    i, o = entry["inputs"], entry["outputs"]
    return bool(
        entry.get("complete_for_kv_comparison")
        and entry["id"] not in EXCLUDED
        and i.get("gpu_total_gib_printed")
        and o.get("kv_tokens")
        and o.get("weights_gib")
        and isinstance(i.get("tensor_parallel_size"), int)
        and _spec(str(i.get("model"))) is not None
    )


def entries() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = yaml.safe_load(LOGS.read_text(encoding="utf-8"))
    return [e for e in data if usable(e)]


def predict(entry: dict[str, Any]) -> tuple[MemoryEstimate, Row]:
    i, o = entry["inputs"], entry["outputs"]
    found = _spec(str(i["model"]))
    assert found is not None
    spec, quant = found
    tp, pp = int(i["tensor_parallel_size"]), int(i.get("pipeline_parallel_size") or 1)
    total = int(float(i["gpu_total_gib_printed"]) * GiB)
    big = total >= 70 * GiB
    gpu = Gpu(0, str(i.get("gpu") or "GPU"), total, total, (9, 0))
    gpus = tuple(replace(gpu, index=k) for k in range(tp * pp))
    nvlink = "H100" in str(i.get("gpu")) and tp > 1
    settings = EngineSettings(
        max_model_len=int(i["max_model_len"]),
        max_num_seqs=int(i.get("max_num_seqs") or (1024 if big else 256)),
        max_num_batched_tokens=int(i.get("max_num_batched_tokens") or (8192 if big else 2048)),
        gpu_memory_utilization=float(i["gpu_memory_utilization"]),
        kv_cache_dtype=str(i.get("kv_cache_dtype") or "auto"),
        quantization=quant,
        enforce_eager=bool(i.get("enforce_eager")),
        custom_all_reduce=nvlink,
        nvlink=nvlink,
    )
    version = str(entry["vllm_version"]).split()[0]
    est = estimate(spec, gpus, tp=tp, pp=pp, settings=settings, accounting=accounting_for(version))
    described = (
        f"{i['model']}, {tp * pp}× {str(i.get('gpu')).split('(')[0].strip()}, TP{tp}"
        + (f" PP{pp}" if pp > 1 else "")
        + f", util {i['gpu_memory_utilization']}, len {i['max_model_len']}, kv {settings.kv_cache_dtype}, "
        f"vLLM {version}"
    )
    row = Row(
        id=entry["id"],
        source=entry["source"],
        settings=described,
        weights_pub=float(o["weights_gib"]),
        weights_pred=est.per_gpu[0].weights_bytes / GiB,
        tokens_pub=int(o["kv_tokens"]),
        tokens_pred=est.kv_cache_tokens,
    )
    return est, row


ENTRIES = entries()


def test_enough_published_logs_are_comparable() -> None:
    assert len(ENTRIES) >= 10


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_weights_within_2_percent(entry: dict[str, Any]) -> None:
    _, row = predict(entry)
    assert abs(row.weights_err) <= 2.0, row


# Entries whose KV figure the estimator misses by more than 5%, with the reason (kept visible in docs/accuracy.md).
KV_KNOWN_MISSES: dict[str, str] = {}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_kv_tokens_within_5_percent(entry: dict[str, Any]) -> None:
    _, row = predict(entry)
    if entry["id"] in KV_KNOWN_MISSES and abs(row.tokens_err) > 5.0:
        pytest.xfail(KV_KNOWN_MISSES[entry["id"]])
    assert abs(row.tokens_err) <= 5.0, row


def test_median_and_worst_kv_error_with_their_own_release() -> None:
    """Every comparable published start-up planned with the release that produced it (the excluded ones too, except
    the V0 engine): the median and worst KV-token error, against issue 14's targets of 5% and 12%. The 0.15 log
    (a 5.64 GiB sampler peak: top-k/top-p sorted the vocabulary before 0.17) and the 0.10.2 one are planned with
    their releases' rules (``Accounting.sampler_sorts_vocab``)."""
    import statistics

    data: list[dict[str, Any]] = yaml.safe_load(LOGS.read_text(encoding="utf-8"))
    errors: dict[str, float] = {}
    for entry in data:
        if entry["id"] in EXCLUDED and "V0" in EXCLUDED[entry["id"]]:
            continue
        if not usable({**entry, "id": "_"}):
            continue
        _, row = predict(entry)
        errors[entry["id"]] = abs(row.tokens_err)
    median, worst = statistics.median(errors.values()), max(errors.values())
    print(f"published start-ups: {len(errors)}, KV-token error median {median:.2f}%, worst {worst:.2f}%")
    assert len(errors) >= 20
    assert median <= 5.0
    assert worst <= 12.0, max(errors, key=lambda k: errors[k])
