"""Log diagnosis: the shared corpus, one public case per category, phases, ranking, fixes, robustness."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwendeploy.core.diagnosis.engine import (
    Diagnosis,
    DiagnosisContext,
    detect_phase,
    diagnose,
    phase_of_line,
    plan_command,
    signature_literals,
)
from qwendeploy.core.diagnosis.rules import (
    CATEGORIES,
    CatalogError,
    load_catalog,
    parse_catalog,
    troubleshooting_markdown,
)
from qwendeploy.core.profile import ModelSection, Profile
from tests.shared_paths import SHARED

FIXTURES = Path(__file__).parent.parent / "fixtures"
CORPUS = sorted((FIXTURES / "doctor-corpus").glob("*.log"))
CASES = sorted((FIXTURES / "doctor-cases").glob("*.log"))


def read_case(path: Path) -> tuple[dict[str, str], list[str]]:
    """Header fields (``# key: value`` above ``---``) and the log lines below it."""
    lines = path.read_text(encoding="utf-8").split("\n")
    sep = lines.index("---")
    header: dict[str, str] = {}
    for line in lines[:sep]:
        if line.startswith("# ") and ":" in line:
            key, value = line[2:].split(":", 1)
            header.setdefault(key.strip(), value.strip())
    return header, lines[sep + 1 :]


def first(lines: list[str], **ctx: object) -> Diagnosis:
    found = diagnose(lines, DiagnosisContext(**ctx))  # type: ignore[arg-type]
    assert found, "expected a diagnosis"
    return found[0]


# ---------------------------------------------------------------------------------------------- corpus and cases


def test_fixture_sets_are_complete() -> None:
    shared = SHARED / "doctor-corpus"
    if shared.is_dir():
        assert sorted(p.name for p in shared.glob("*.log")) == [p.name for p in CORPUS]
    assert len(CORPUS) >= 23
    assert {read_case(p)[0]["category"] for p in CASES} == set(CATEGORIES)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_log_is_diagnosed_with_its_category_first(path: Path) -> None:
    header, log = read_case(path)
    assert first(log).category == header["category"]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_public_case_is_diagnosed_with_its_category_first(path: Path) -> None:
    header, log = read_case(path)
    assert header.get("source"), "every case names its source"
    assert first(log).category == header["category"]


# Numbers from each corpus log that its header's fix talks about and our fix must carry.
FIX_NUMBERS = {
    "02-shm_too_small.log": ["7340384"],
    "03-tp_heads_not_divisible.log": ["2 or 4", "64 heads"],
    "04-tp_heads_not_divisible.log": ["--tensor-parallel-size 4", "1, 2, 4, 7, 14, 28", "--data-parallel-size 2"],
    "05-kv_cache_no_blocks.log": ["above 0.4", "0.60"],
    "06-max_model_len_exceeds_kv_cache.log": ["--max-model-len 23648 or lower", "--kv-cache-dtype fp8"],
    "07-max_model_len_exceeds_kv_cache.log": ["--max-model-len 7344 or lower"],
    "08-weights_oom_tp_not_set.log": ["--tensor-parallel-size 8"],
    "09-weights_oom_tp_not_set.log": ["--tensor-parallel-size 4", "5 GPUs"],
    "10-cudagraph_capture_oom.log": ["--enforce-eager", "--gpu-memory-utilization"],
    "12-sampler_warmup_oom.log": ["from 1024 to 512"],
    "13-gpu_memory_held_by_other_process.log": ["0.66", "31.44/47.38"],
    "14-p2p_unsupported_consumer_gpu.log": ["--disable-custom-all-reduce", "NCCL_P2P_DISABLE=1"],
    "15-nccl_p2p_hang.log": ["NCCL_P2P_DISABLE=1"],
    "16-acs_iommu_blocks_p2p.log": ["ACS", "IOMMU"],
    "17-custom_allreduce_failure.log": ["--disable-custom-all-reduce", "2.19.3"],
    "18-custom_allreduce_failure.log": ["--disable-custom-all-reduce"],
    "19-multinode_wrong_interface.log": ["GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"],
    "20-cuda_visible_devices_mismatch.log": ["Make 4 GPUs visible"],
    "21-driver_cuda_mismatch.log": ["CUDA 12.4 needs R550"],
    "23-nccl_watchdog_timeout.log": ["--disable-custom-all-reduce"],
}


@pytest.mark.parametrize("name", sorted(FIX_NUMBERS))
def test_corpus_fix_carries_the_numbers_from_the_log(name: str) -> None:
    _, log = read_case(FIXTURES / "doctor-corpus" / name)
    fix = first(log).fix
    for expected in FIX_NUMBERS[name]:
        assert expected in fix, f"{expected!r} not in {fix!r}"


def test_summary_quotes_numbers_and_evidence_points_at_the_lines() -> None:
    _, log = read_case(FIXTURES / "doctor-corpus" / "06-max_model_len_exceeds_kv_cache.log")
    d = first(log)
    assert "29000" in d.summary and "23648" in d.summary
    assert d.phase == "profiling"
    assert d.evidence and all(log[e.line - 1].strip() == e.text for e in d.evidence)
    assert any("23648" in e.text for e in d.evidence)


def test_v1_estimated_length_is_the_fix() -> None:
    _, log = read_case(FIXTURES / "doctor-cases" / "max_model_len_exceeds_kv_cache.log")
    d = first(log)
    assert "--max-model-len 5632 or lower, or --kv-cache-dtype fp8" in d.fix


def test_to_dict_has_the_contract_keys() -> None:
    _, log = read_case(FIXTURES / "doctor-corpus" / "04-tp_heads_not_divisible.log")
    out = first(log).to_dict()
    assert set(out) == {"category", "summary", "evidence", "fix", "confidence", "rule_id", "phase", "recognised"}
    assert out["recognised"] is True
    assert out["evidence"] == [{"line": 1, "text": log[0].strip()}]
    assert 0.0 < out["confidence"] <= 1.0


# ---------------------------------------------------------------------------------------------- phases

STARTUP = [
    "INFO 11-11 14:17:05 api_server.py:585] vLLM API server version 0.6.3.post1",
    "INFO 11-11 14:17:08 pynccl.py:69] vLLM is using nccl==2.21.5",
    "INFO 11-11 14:17:09 model_runner.py:1056] Starting to load model Qwen/Qwen2.5-7B-Instruct...",
    "INFO 11-11 14:17:20 model_runner.py:1067] Loading model weights took 14.2487 GB",
    "INFO 11-11 14:17:22 gpu_executor.py:122] # GPU blocks: 1952, # CPU blocks: 2048",
    "INFO 11-11 14:17:23 model_runner.py:1385] Capturing the model for CUDA graphs. This may lead to unexpected "
    "consequences if the model is not static.",
    "INFO 11-11 14:17:40 api_server.py:232] Started engine process with PID 1234",
    "INFO:     Application startup complete.",
]
OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.20 GiB. GPU 0 has a total capacity of "
    "23.50 GiB of which 120.00 MiB is free. Including non-PyTorch memory, this process has 23.37 GiB memory in use."
)


def test_phase_of_line_and_detect_phase() -> None:
    assert [phase_of_line(x) for x in STARTUP] == [
        "starting",
        "starting",
        "loading",
        "profiling",
        "profiling",
        "cudagraph",
        None,
        "serving",
    ]
    assert detect_phase(STARTUP[:3]) == "loading"
    assert detect_phase(STARTUP) == "serving"
    assert detect_phase([*STARTUP, STARTUP[0]]) == "starting"  # a restart resets the phase
    assert detect_phase([]) is None


@pytest.mark.parametrize(
    "upto, category",
    [
        (3, "weights_oom_tp_not_set"),
        (6, "cudagraph_capture_oom"),
        (8, "unknown"),  # out of memory while serving: named, but no start-up category fits
    ],
)
def test_oom_is_classified_by_the_phase_it_happened_in(upto: int, category: str) -> None:
    d = first([*STARTUP[:upto], OOM])
    assert d.category == category
    assert d.phase == {3: "loading", 6: "cudagraph", 8: "serving"}[upto]


def test_oom_numbers_reach_the_summary() -> None:
    d = first([*STARTUP[:6], OOM])
    assert "1.20 GiB" in d.summary and "120.00 MiB" in d.summary and "23.50 GiB" in d.summary


def test_sampler_phase_oom_without_the_message() -> None:
    lines = [
        '  File "/workspace/vllm/vllm/v1/worker/gpu_model_runner.py", line 1292, in _dummy_sampler_run',
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.32 GiB.",
    ]
    assert first(lines).category == "sampler_warmup_oom"


# ---------------------------------------------------------------------------------------------- ranking


def test_root_cause_ranks_above_the_symptom() -> None:
    _, shm = read_case(FIXTURES / "doctor-corpus" / "02-shm_too_small.log")
    _, watchdog = read_case(FIXTURES / "doctor-corpus" / "23-nccl_watchdog_timeout.log")
    found = diagnose(shm + watchdog)
    cats = [d.category for d in found]
    assert cats[0] == "shm_too_small"
    assert "nccl_watchdog_timeout" in cats
    assert found[0].confidence > found[cats.index("nccl_watchdog_timeout")].confidence


def test_hang_needs_several_gpus_and_no_error() -> None:
    _, log = read_case(FIXTURES / "doctor-corpus" / "15-nccl_p2p_hang.log")
    assert first(log).category == "nccl_p2p_hang"
    single = [x for x in log if "[1]" not in x and "nproc" not in x]
    assert all(d.category != "nccl_p2p_hang" for d in diagnose(single))
    assert first([*log, "RuntimeError: something else broke"]).category != "nccl_p2p_hang"
    # TP > 1 known from the profile/serve side is enough
    assert first(single, tensor_parallel_size=2).category == "nccl_p2p_hang"


def test_clean_log_gives_nothing_and_error_log_never_nothing() -> None:
    assert diagnose(STARTUP) == []
    assert diagnose([]) == []
    d = diagnose([*STARTUP, "KeyError: 'model.layers.0.mlp.gate_proj.weight'"])
    assert [x.category for x in d] == ["unknown"]
    assert d[0].evidence[-1].text == "KeyError: 'model.layers.0.mlp.gate_proj.weight'"


def test_environment_nccl_variables_are_a_finding_only_with_nccl_in_the_log() -> None:
    env = {"NCCL_P2P_DISABLE": "1", "NCCL_ALGO": "Tree", "HOME": "/root"}
    # A start-up cut short says where it stopped (issue 12), but names no NCCL finding without NCCL in the log.
    assert [d.rule_id for d in diagnose(STARTUP[:1], DiagnosisContext(env=env))] == ["startup-stalled"]
    found = diagnose(STARTUP, DiagnosisContext(env=env))
    d = next(x for x in found if x.category == "nccl_env_misconfig")
    assert {e.line for e in d.evidence} == {0}
    assert any("NCCL_P2P_DISABLE=1" in e.text for e in d.evidence)
    assert diagnose(STARTUP, DiagnosisContext(env={"NCCL_P2P_DISABLE": "0"})) == []


# ---------------------------------------------------------------------------------------------- profile → plan


def test_fix_names_the_plan_command_for_a_profile() -> None:
    profile = Profile(
        model=ModelSection(id="Qwen/Qwen2.5-7B-Instruct"),
        generated_by="qwendeploy plan Qwen/Qwen2.5-7B-Instruct --gpus 1xRTX3090 --context 29000 -o p.yaml",
    )
    _, log = read_case(FIXTURES / "doctor-corpus" / "06-max_model_len_exceeds_kv_cache.log")
    d = first(log, profile=profile)
    assert (
        "`qwendeploy plan Qwen/Qwen2.5-7B-Instruct --gpus 1xRTX3090 -o p.yaml --max-model-len 23648 --force`" in d.fix
    )


def test_plan_command_without_generated_by() -> None:
    profile = Profile(model=ModelSection(id="Qwen/Qwen2.5-7B-Instruct"))
    assert plan_command(profile, ["--tensor-parallel-size", "4"]) == (
        "qwendeploy plan Qwen/Qwen2.5-7B-Instruct --tensor-parallel-size 4"
    )


# ---------------------------------------------------------------------------------------------- robustness


def test_a_100k_line_log_completes() -> None:
    _, tail = read_case(FIXTURES / "doctor-corpus" / "06-max_model_len_exceeds_kv_cache.log")
    rng = random.Random(7)
    filler = [
        "INFO 11-11 14:17:08 metrics.py:345] Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 51.3"
        " tokens/s, Running: 1 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: 0.1%",
        'INFO:     127.0.0.1:51234 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "(VllmWorkerProcess pid=18565) INFO 11-11 14:17:08 selector.py:135] Using Flash Attention backend.",
        "omega:18302:18445 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM",
    ]
    lines = [rng.choice(filler) for _ in range(100_000)] + tail
    found = diagnose(lines)
    assert found[0].category == "max_model_len_exceeds_kv_cache"
    assert len(found[0].evidence) <= 4
    assert all(e.line > 100_000 for e in found[0].evidence)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=40))
def test_any_text_never_raises(lines: list[str]) -> None:
    found = diagnose(lines)
    for d in found:
        assert d.category in CATEGORIES
        assert 0.0 <= d.confidence <= 1.0
        assert all(0 <= e.line <= len(lines) for e in d.evidence)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4000))
def test_binary_garbage_never_raises(blob: bytes) -> None:
    lines = blob.decode("latin-1").split("\n")
    diagnose(lines)
    detect_phase(lines)


def test_huge_single_line_is_truncated_not_a_problem() -> None:
    assert diagnose(["x" * 5_000_000]) == []


# ---------------------------------------------------------------------------------------------- catalog


def test_catalog_loads_and_covers_every_category() -> None:
    cat = load_catalog()
    assert {r.category for r in cat.rules} == set(CATEGORIES)
    assert len({r.id for r in cat.rules}) == len(cat.rules)


def test_every_signature_has_a_literal_and_the_literal_is_sound() -> None:
    """The engine skips a regex when none of its literals is in the line; that must never skip a real match."""
    cat = load_catalog()
    lines = [x for p in (*CORPUS, *CASES) for x in read_case(p)[1]]
    for rule in cat.rules:
        for sig in rule.signatures:
            lits, icase = signature_literals(sig.pattern)
            assert lits is not None, f"{rule.id}: {sig.pattern!r} has no certain literal"
            for line in lines:
                if sig.regex.search(line):
                    hay = line.lower() if icase else line
                    assert any(lit in hay for lit in lits), (rule.id, sig.pattern, line)


GOOD_RULE = """
version: 1
phases: [{name: starting, markers: ['x']}]
rules:
  - {id: a, category: shm_too_small, phase: starting, severity: error,
     signatures: [{pattern: 'shm (?P<n>\\d+)', weight: 0.5}], summary: 's {n}', explanation: 'e', fix: 'f {n}',
     looks_for: 'l'}
  - {id: z, category: unknown, phase: null, severity: error, fallback: true, summary: 's', explanation: 'e',
     fix: 'f', looks_for: 'l'}
"""


def test_parse_catalog_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    import qwendeploy.core.diagnosis.schema as schema  # the pydantic models check categories against its CATEGORIES

    monkeypatch.setattr(schema, "CATEGORIES", ("shm_too_small", "unknown"))
    assert len(parse_catalog(GOOD_RULE).rules) == 2
    bad = {
        "category: shm_too_small": "category: no_such",
        "'shm (?P<n>\\d+)'": "'shm (?P<n>\\d+'",
        "fix: 'f {n}'": "fix: 'f {m}'",
        "weight: 0.5": "weight: 2",
        "fallback: true,": "",
    }
    for old, new in bad.items():
        with pytest.raises(CatalogError):
            parse_catalog(GOOD_RULE.replace(old, new))
    with pytest.raises(CatalogError, match=r"rules\.0 \(id 'a'\)\.severity"):
        parse_catalog(GOOD_RULE.replace("severity: error,", "severity: fatal,", 1))
    restart = GOOD_RULE.replace("rules:\n", "restart: {transient: [no_such]}\nrules:\n", 1)
    with pytest.raises(CatalogError, match=r"restart names unknown categories \['no_such'\]"):
        parse_catalog(restart)
    kept = parse_catalog(GOOD_RULE.replace("rules:\n", "restart: {deterministic: [shm_too_small]}\nrules:\n", 1))
    assert kept.deterministic == frozenset({"shm_too_small"}) and kept.transient == frozenset()


def test_troubleshooting_page_has_a_section_per_category() -> None:
    md = troubleshooting_markdown()
    for c in CATEGORIES:
        assert f"\n## {c}\n" in md
    for r in load_catalog().rules:
        assert f"### Rule `{r.id}`" in md
    doc = Path(__file__).parent.parent.parent / "docs" / "troubleshooting.md"
    assert doc.read_text(encoding="utf-8") == md, "run python scripts/gen_docs.py"


def test_a_bare_oom_line_has_no_phase_and_says_so() -> None:
    """One OOM line, no start-up marker: still the likeliest category, but the phase is unknown (null), the
    summary says so instead of "while the weights were loaded", and the confidence is lower than under a
    loading marker."""
    oom = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
        "79.19 GiB of which 3.06 MiB is free."
    )
    (bare,) = diagnose([oom])
    assert bare.category == "weights_oom_tp_not_set" and bare.phase is None
    assert "while the weights were loaded" not in bare.summary and "no start-up phase" in bare.summary
    assert "GPU 0 (79.19 GiB) had 3.06 MiB free" in bare.summary
    loading = diagnose(["INFO 12-27 08:52:20 model_runner.py:1072] Starting to load model Qwen/Qwen2.5-72B", oom])
    assert loading[0].category == "weights_oom_tp_not_set" and loading[0].phase == "loading"
    assert "while the weights were loaded" in loading[0].summary
    assert bare.confidence < 0.6 < loading[0].confidence
    assert bare.to_dict()["phase"] is None
