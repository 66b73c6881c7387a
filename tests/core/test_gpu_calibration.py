"""The estimator against real vLLM start-ups measured on a GPU (tests/fixtures/gpu-runs/measured.yaml).

Targets (issue 7): for every measured run, KV-cache tokens within 2% of "GPU KV cache size: N tokens", weights within
1% of "Model loading took X GiB", and no wrong fit verdict (a run that started must be predicted to fit; the refused
one must be predicted not to fit, with the longest context within 2% of vLLM's own "estimated maximum model length").
``benchmarks/accuracy.py`` prints the same comparison as the "Measured on a GPU" tables of docs/accuracy.md;
``benchmarks/gpu/parse_runs.py`` regenerates measured.yaml from the logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwendeploy.core.gpus import find_gpu
from qwendeploy.core.hardware import Gpu
from qwendeploy.core.memory import EngineSettings, MemoryEstimate, accounting_for, estimate
from qwendeploy.core.models import ModelSpec, find_model, spec_from_hf_config
from qwendeploy.core.units import GiB, MiB

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ROOT / "tests" / "fixtures" / "gpu-runs" / "measured.yaml"
ALL_RUNS: list[dict[str, Any]] = yaml.safe_load(MEASURED.read_text(encoding="utf-8"))
# Every start-up is checked, the families of issue 14 among them (Qwen3-Next with 8 of its 48 layers, a 12-layer
# Qwen3-30B-A3B, Qwen2.5-VL-7B, Qwen3-Embedding-0.6B on vLLM 0.26).
RUNS = ALL_RUNS
FAMILIES = {"next_l8", "moe_l12", "vl7", "emb06"}


@dataclass(frozen=True)
class Term:
    name: str
    unit: str
    predicted: float
    measured: float | None

    @property
    def error_pct(self) -> float | None:
        if self.measured is None or self.measured == 0:
            return None
        return (self.predicted - self.measured) / self.measured * 100


def settings_of(run: dict[str, Any]) -> EngineSettings:
    """vLLM's effective settings of a measured run (its flags; vLLM's defaults for a ≥ 70 GiB card otherwise)."""
    s = run["settings"]
    acc = accounting_for(str(run["vllm_version"]))
    big = int(run["cuda_total_bytes"]) >= 70 * GiB
    return EngineSettings(
        max_model_len=int(s.get("max_model_len") or s["max_model_len_effective"]),
        max_num_seqs=int(s.get("max_num_seqs") or (1024 if big else 256)),
        max_num_batched_tokens=int(
            s.get("max_num_batched_tokens") or s.get("max_num_batched_tokens_effective") or (8192 if big else 2048)
        ),
        gpu_memory_utilization=float(s.get("gpu_memory_utilization") or acc.default_gpu_memory_utilization),
        kv_cache_dtype=str(s.get("kv_cache_dtype") or "auto"),
        enforce_eager=bool(s.get("enforce_eager")),
    )


def spec_of(run: dict[str, Any]) -> ModelSpec:
    """The catalog's spec, or the checkpoint's own config.json where the run carries one (reduced-layer models)."""
    s = run["settings"]
    if "hf_config" in s:
        cfg = json.loads((ROOT / str(s["hf_config"])).read_text(encoding="utf-8"))
        spec = spec_from_hf_config(cfg, id=str(s["model"]), source=f"local:{s['hf_config']}")
    else:
        found = find_model(str(s["model"]))
        assert found is not None, s["model"]
        spec = found
    if run["measured"].get("runner_resolved") == "pooling" and not spec.is_pooling:
        # The checkpoint's sentence-transformers files (modules.json), which vLLM read, are not in the fixture: the
        # catalog entry of the same model says what it is.
        catalog = find_model(str(s["model"]))
        assert catalog is not None and catalog.is_pooling, s["model"]
        spec = replace(spec, task=catalog.task)
    return spec


def predict(run: dict[str, Any]) -> MemoryEstimate:
    spec = spec_of(run)
    total = int(run["cuda_total_bytes"])
    gpu = Gpu(0, str(run["card"]), total, total, (9, 0))
    return estimate(
        spec, (gpu,), tp=1, pp=1, settings=settings_of(run), accounting=accounting_for(str(run["vllm_version"]))
    )


def terms(run: dict[str, Any]) -> list[Term]:
    """Predicted vs measured for every term vLLM reports (GiB as vLLM prints them; tokens; MiB for nvidia-smi)."""
    est = predict(run)
    m = est.per_gpu[0]
    meas = run["measured"]
    out = [
        Term("weights", "GiB", m.weights_bytes / GiB, meas.get("weights_gib")),
        Term("activation", "GiB", m.activation_bytes / GiB, meas.get("activation_gib")),
        Term("non-torch", "GiB", m.non_torch_bytes / GiB, meas.get("non_torch_gib")),
        Term("CUDA graphs", "GiB", m.cuda_graph_bytes / GiB, meas.get("graphs_captured_gib")),
        Term("available KV", "GiB", max(0, m.kv_budget_bytes) / GiB, meas.get("available_kv_gib")),
        Term("KV tokens", "tokens", est.kv_cache_tokens, meas.get("kv_cache_tokens")),
        Term("footprint", "MiB", m.footprint_bytes / MiB, meas.get("process_mib")),
    ]
    if "estimated_max_model_len" in meas:
        out.append(Term("longest context", "tokens", est.max_model_len_fit, meas["estimated_max_model_len"]))
    return out


def describe(run: dict[str, Any]) -> str:
    s, st = run["settings"], settings_of(run)
    parts = [str(s["model"]).split("/")[-1], f"len {st.max_model_len}", f"util {st.gpu_memory_utilization}"]
    if st.kv_cache_dtype != "auto":
        parts.append(f"kv {st.kv_cache_dtype}")
    if st.enforce_eager:
        parts.append("eager")
    if "max_num_batched_tokens" in s:
        parts.append(f"mbt {st.max_num_batched_tokens}")
    if "max_num_seqs" in s:
        parts.append(f"seqs {st.max_num_seqs}")
    if "hf_overrides" in s:
        parts.append("YaRN")
    return ", ".join(parts)


IDS = [r["case"] for r in RUNS]
STARTED = [r for r in RUNS if r["measured"].get("started")]


def _term(run: dict[str, Any], name: str) -> Term:
    return next(t for t in terms(run) if t.name == name)


def test_measured_table_is_generated_from_the_logs() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "parse_runs.py"
    spec = importlib.util.spec_from_file_location("parse_runs", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render(mod.collect()) == MEASURED.read_text(encoding="utf-8")


REFUSED = [r for r in RUNS if not r["measured"].get("started")]

# A refused start leaves a small KV pool (about 1 GiB of a 79 GiB card at utilisation 0.21), where an offset of 0.02
# GiB is already 2%: those pools are held to 0.05 GiB of memory (under 1,000 tokens of Qwen2.5-7B's bf16 KV) instead.
SMALL_POOL_GIB = 0.05


def test_enough_runs_and_the_refusals() -> None:
    assert len(RUNS) >= 19
    assert [r["case"] for r in REFUSED] == ["h100_q7_fail", "q7_fail"]
    assert {r["card"] for r in RUNS} == {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}


def test_catalog_h200_total_is_the_measured_cuda_total() -> None:
    h200 = find_gpu("H200")
    assert h200 is not None
    assert {r["cuda_total_bytes"] for r in RUNS if r["card"] == "NVIDIA H200"} == {h200.total_bytes}


def test_h100_runs_agree_with_the_catalog_total_vllm_printed() -> None:
    """Five H100 runs had no mem_get_info (parse_runs took the catalog's CUDA total, which must match vLLM's line);
    h100_q7_32k_b measured it while serving, and it is the catalog's."""
    h100 = find_gpu("NVIDIA H100 80GB HBM3")
    rows = [r for r in RUNS if r["card"] == "NVIDIA H100 80GB HBM3"]
    assert len(rows) == 7 and {r["cuda_total_bytes"] for r in rows} == {h100.total_bytes}
    measured = (MEASURED.parent / "h100-vllm0.26" / "h100_q7_32k_b" / "mem_get_info.txt").read_text()
    assert f"total={h100.total_bytes}" in measured
    assert {r["measured"]["cuda_total_gib"] for r in rows if "cuda_total_gib" in r["measured"]} == {79.18}


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_weights_within_1_percent(run: dict[str, Any]) -> None:
    t = _term(run, "weights")
    assert t.error_pct is not None and abs(t.error_pct) <= 1.0, t


@pytest.mark.parametrize("run", STARTED, ids=[r["case"] for r in STARTED])
def test_kv_tokens_within_2_percent(run: dict[str, Any]) -> None:
    t = _term(run, "KV tokens")
    assert t.error_pct is not None and abs(t.error_pct) <= 2.0, t


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_available_kv_memory_within_2_percent(run: dict[str, Any]) -> None:
    t = _term(run, "available KV")
    assert t.error_pct is not None and t.measured is not None, t
    assert abs(t.error_pct) <= 2.0 or abs(t.predicted - t.measured) <= SMALL_POOL_GIB, t


@pytest.mark.parametrize("run", STARTED, ids=[r["case"] for r in STARTED])
def test_started_runs_are_predicted_to_fit(run: dict[str, Any]) -> None:
    est = predict(run)
    assert est.fits_one_request
    # and the whole process fits on the card (what nvidia-smi showed did)
    assert est.per_gpu[0].footprint_bytes < run["nvml_total_mib"] * MiB


SMI = [r for r in STARTED if "process_mib" in r["measured"]]  # a restart in the same run has no snapshot of its own


@pytest.mark.parametrize("run", SMI, ids=[r["case"] for r in SMI])
def test_footprint_within_3_percent_of_nvidia_smi(run: dict[str, Any]) -> None:
    t = _term(run, "footprint")
    assert t.error_pct is not None and abs(t.error_pct) <= 3.0, t


@pytest.mark.parametrize(("case", "max_model_len"), [("q7_fail", 131072), ("h100_q7_fail", 32768)])
def test_refused_start_is_predicted_not_to_fit_and_its_longest_context_matches_vllm(
    case: str, max_model_len: int
) -> None:
    run = next(r for r in RUNS if r["case"] == case)
    est = predict(run)
    assert est.settings.max_model_len == max_model_len
    assert not est.fits_one_request
    t = _term(run, "longest context")
    assert t.error_pct is not None and t.measured is not None, t
    kv_per_token = est.per_gpu[0].kv_bytes_per_token
    assert abs(t.error_pct) <= 2.0 or abs(t.predicted - t.measured) * kv_per_token <= SMALL_POOL_GIB * GiB, t
    # at vLLM's own estimate the same settings are predicted to start
    shorter = EngineSettings(**{**est.settings.__dict__, "max_model_len": run["measured"]["estimated_max_model_len"]})
    spec = find_model(str(run["settings"]["model"]))
    assert spec is not None
    again = estimate(spec, (est.per_gpu[0].gpu,), tp=1, pp=1, settings=shorter, accounting=est.accounting)
    assert again.fits_one_request


def test_activation_model_explains_both_releases() -> None:
    """vLLM 0.26 (V2 runner) peaks near 1.1 GiB for Qwen2.5-7B at 8192 tokens; 0.19 (V1) at 2.21 GiB."""
    run = next(r for r in RUNS if r["case"] == "q7_u90")
    st = settings_of(run)
    spec = find_model("Qwen/Qwen2.5-7B-Instruct")
    assert spec is not None
    h100 = Gpu(0, "NVIDIA H100 80GB HBM3", int(79.19 * GiB), int(79.19 * GiB), (9, 0))
    new = estimate(spec, (h100,), tp=1, pp=1, settings=st, accounting=accounting_for("0.26"))
    old = estimate(spec, (h100,), tp=1, pp=1, settings=st, accounting=accounting_for("0.19"))
    assert new.runner == "v2" and old.runner == "v1"
    assert new.per_gpu[0].activation_bytes / GiB == pytest.approx(1.13, abs=0.06)
    assert old.per_gpu[0].activation_bytes / GiB == pytest.approx(2.21, abs=0.06)


def test_the_family_start_ups_are_checked_like_the_others() -> None:
    """Qwen3-Next's hybrid layout as vLLM logged it: the attention block raised to 544 tokens to match the padded
    linear-attention page, and the maximum concurrency (blocks per request = attention blocks + one state block per
    linear group: prefix caching is off for hybrids in 0.26) within 2%; the embedding model on the pooling runner."""
    by_case = {r["case"]: r for r in RUNS}
    assert set(by_case) >= FAMILIES and all(by_case[c]["measured"]["started"] for c in FAMILIES)
    nxt = by_case["next_l8"]
    est = predict(nxt)
    assert est.hybrid is not None
    assert est.settings.block_size == nxt["measured"]["attention_block_size"] == 544
    assert est.max_concurrency == pytest.approx(nxt["measured"]["max_concurrency"], rel=0.02)
    assert by_case["emb06"]["measured"]["runner_resolved"] == "pooling"
    assert spec_of(by_case["emb06"]).is_pooling and spec_of(by_case["vl7"]).is_multimodal
