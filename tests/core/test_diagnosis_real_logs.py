"""The diagnosis engine on real vLLM 0.26.0 logs from an H200 (tests/fixtures/gpu-runs/h200-vllm0.26/).

``q7_fail`` is a real start-up failure (KV cache too small for --max-model-len 131072 at utilisation 0.15); every
other case served requests. A clean start-up must produce no diagnosis, and ``phase_of_line`` (which the serve
supervisor's status line uses) must walk the start-up phases in order on the real lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwendeploy.core.diagnosis.engine import DiagnosisContext, detect_phase, diagnose, phase_of_line

RUNS = Path(__file__).parent.parent / "fixtures" / "gpu-runs" / "h200-vllm0.26"
FAIL = RUNS / "q7_fail" / "vllm.log"
ORDER = ["starting", "loading", "profiling", "cudagraph", "sampler", "serving"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _served() -> list[Path]:
    return sorted(p for p in RUNS.glob("*/vllm.log") if "Application startup complete" in p.read_text())


def test_the_served_cases_are_all_but_the_failure() -> None:
    every = sorted(RUNS.glob("*/vllm.log"))
    assert len(every) == 12 and [p for p in every if p not in _served()] == [FAIL]


def test_real_kv_too_small_failure_is_diagnosed_with_the_logs_numbers() -> None:
    found = diagnose(_lines(FAIL), DiagnosisContext())
    assert found, "the real failure must be diagnosed"
    top = found[0]
    assert top.category == "max_model_len_exceeds_kv_cache" and top.confidence >= 0.9
    assert "100416" in top.fix and top.fix.startswith("--max-model-len 100416 or lower")
    assert "131072" in top.summary and "100416" in top.summary
    assert top.phase == "profiling"
    texts = [e.text for e in top.evidence]
    assert any("estimated maximum model length is 100416" in t for t in texts)
    assert any("Available KV cache memory: 5.36 GiB" in t for t in texts)
    assert [d.category for d in found].count("unknown") == 0  # the traceback is explained, not left over
    assert detect_phase(_lines(FAIL)) == "profiling"


@pytest.mark.parametrize("log", _served(), ids=lambda p: p.parent.name)
def test_clean_start_up_gives_no_diagnosis(log: Path) -> None:
    assert diagnose(_lines(log), DiagnosisContext()) == []


@pytest.mark.parametrize("log", _served(), ids=lambda p: p.parent.name)
def test_phase_of_line_walks_the_start_up_in_order(log: Path) -> None:
    seen = [ph for ph in map(phase_of_line, _lines(log)) if ph is not None]
    # The API server's and the engine's first lines both (re)start the run; from the engine's on, never backwards.
    last_start = max(i for i, ph in enumerate(seen) if ph == "starting")
    after = seen[last_start:]
    assert [ORDER.index(p) for p in after] == sorted(ORDER.index(p) for p in after)
    walk = list(dict.fromkeys(after))
    eager = "--enforce-eager" in (log.parent / "cmd.txt").read_text()
    expected = ["starting", "loading", "profiling", *([] if eager else ["cudagraph"]), "sampler", "serving"]
    assert walk == expected
    assert detect_phase(_lines(log)) == "serving"


def _real_line(needle: str) -> str:
    """The first line of the served 7B log (or the eager one) that contains ``needle``."""
    for log in (RUNS / "q7_u90" / "vllm.log", RUNS / "q7_eager" / "vllm.log"):
        for line in _lines(log):
            if needle in line:
                return line
    raise AssertionError(f"no real line has {needle!r}")


@pytest.mark.parametrize(
    ("needle", "phase"),
    [
        ("non-default args:", "starting"),
        ("Initializing a V1 LLM engine (v0.26.0)", "starting"),  # its config mentions cudagraph_mode: still starting
        ("Loading model from scratch", "loading"),
        ("Loading safetensors checkpoint shards:  50%", "loading"),
        ("Model loading took", "profiling"),
        ("Dynamo bytecode transform time", "profiling"),
        ("Initial profiling/warmup run took", "profiling"),
        ("Available KV cache memory", "profiling"),
        ("GPU KV cache size", "profiling"),
        ("Graph capturing finished", "cudagraph"),
        ("Actual usage is", "sampler"),
        ("init engine (profile, create kv cache, warmup model) took", "sampler"),
        ("Starting vLLM server on", "serving"),
        ("Application startup complete", "serving"),
        ("Enforce eager set, disabling torch.compile and CUDAGraphs", None),
        ("Cudagraph is disabled under eager mode", None),
        ("Route: /v1/completions, Methods: POST", None),
    ],
)
def test_phase_of_real_0_26_lines(needle: str, phase: str | None) -> None:
    assert phase_of_line(_real_line(needle)) == phase


def test_phase_of_lines_the_stored_logs_elide() -> None:
    """The stored logs replaced the CUDA-graph progress bars; vLLM's V2 runner titles them like this."""
    bar = "(EngineCore pid=1011) Capturing CUDA graphs (mixed, PIECEWISE): 100%|██████████| 51/51 [00:02<00:00]"
    assert phase_of_line(bar) == "cudagraph"
    assert phase_of_line(bar.replace("mixed, PIECEWISE", "decode, FULL")) == "cudagraph"
    # V1's start-up refusal mentions "Free memory on device" too, but it is no sampler warm-up
    refusal = (
        "ValueError: Free memory on device (13.5/23.6 GiB) on startup is less than desired GPU memory utilization "
        "(0.9, 21.2 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )
    assert phase_of_line(refusal) is None


# ------------------------------------------------------------------ several runs in one log (restarts, journalctl)

CASES = Path(__file__).parent.parent / "fixtures" / "doctor-cases"


def _journal(lines: list[str], start: int = 0) -> list[str]:
    """The lines as `journalctl -u qwendeploy` prints them (vLLM's own output after the unit's prefix)."""
    return [
        f"Nov 25 14:{(start + i // 60) % 60:02d}:{i % 60:02d} gpu-host qwendeploy[566]: {x}"
        for i, x in enumerate(lines)
    ]


def _case_body(name: str) -> list[str]:
    return (CASES / name).read_text().partition("\n---\n")[2].splitlines()


@pytest.mark.parametrize("journal", [False, True], ids=["plain", "journalctl"])
def test_a_failed_restart_after_a_served_run_is_diagnosed_as_on_its_own(journal: bool) -> None:
    """A served run, then the same unit restarted into the real KV-too-small failure: the failure is diagnosed
    as it is alone (phase profiling), not read as something that happened while serving."""
    served = _lines(RUNS / "q7_u90" / "vllm.log")
    log = served + _lines(FAIL)
    if journal:
        log = _journal(log)
    assert "Application startup complete" in "\n".join(served)
    found = diagnose(log, DiagnosisContext())
    assert found and found[0].category == "max_model_len_exceeds_kv_cache" and found[0].phase == "profiling"
    assert detect_phase(log) == "profiling"
    # …and the banner alone (vLLM's ASCII logo line "█  version 0.26.0") starts the new run
    banner = next(x for x in _lines(FAIL) if "version 0.26" in x)
    assert detect_phase([*served, banner]) == "starting"
    assert phase_of_line(banner) == "starting"


@pytest.mark.parametrize("journal", [False, True], ids=["plain", "journalctl"])
def test_a_start_up_excerpt_after_a_serving_line_is_a_new_run(journal: bool) -> None:
    """The review's repro: one serving line, then an excerpt of a start-up that ran out of memory capturing CUDA
    graphs (no banner, no non-default args): the capture lines after serving begin a new run."""
    serving = "INFO 12-17 10:30:59 [loggers.py:123] Engine 000: Avg prompt throughput: 5.0 tokens/s, Running: 1 reqs"
    log = [serving, *_case_body("cudagraph_capture_oom.log")]
    if journal:
        log = _journal(log)
    found = diagnose(log, DiagnosisContext())
    assert found and found[0].category == "cudagraph_capture_oom" and found[0].phase == "cudagraph"
    assert detect_phase(log) == "cudagraph"


def test_traceback_frames_while_serving_do_not_restart_the_run() -> None:
    """Frame names that are also phase markers (model_loader, kv_cache_utils.py) appear in serving-time
    tracebacks; only plain start-up lines begin a new run."""
    served = _lines(RUNS / "q7_u90" / "vllm.log")
    frames = [
        "Traceback (most recent call last):",
        '  File "/usr/lib/python3/dist-packages/vllm/v1/core/kv_cache_utils.py", line 512, in hash_block_tokens',
        '  File "/usr/lib/python3/dist-packages/vllm/model_executor/model_loader/utils.py", line 80, in process',
    ]
    assert detect_phase(served + frames) == "serving"
