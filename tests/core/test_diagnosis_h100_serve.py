"""The diagnosis engine on the real vLLM 0.26 logs of `qwendeploy serve` on an H100.

The logs are in tests/fixtures/gpu-runs/h100-vllm0.26/.

``h100_q7_32k`` served, then its engine core was killed with SIGKILL (benchmarks/gpu/serve_suite.sh, case crash32k);
``h100_q7_32k_restart`` is the server serve started after that crash, stopped with SIGTERM like ``h100_q7_yarn`` and
``h100_q7_fp8``; ``h100_q7_fail`` is the profile edited to utilisation 0.21, which vLLM refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose
from qwendeploy.core.restart import diagnose_lines
from qwendeploy.core.restart import is_deterministic as _deterministic

RUNS = Path(__file__).parent.parent / "fixtures" / "gpu-runs" / "h100-vllm0.26"
MPCLIENT = "MPClient: engine core exited unexpectedly"


def _lines(case: str) -> list[str]:
    return (RUNS / case / "vllm.log").read_text().splitlines()


def test_killed_engine_core_is_named_not_left_unknown() -> None:
    found = diagnose(_lines("h100_q7_32k"), DiagnosisContext())
    assert [f.rule_id for f in found] == ["engine-core-died"]
    top = found[0]
    assert "engine-core process" in top.summary and "without logging an error" in top.summary
    assert "dmesg" in top.fix
    assert any(MPCLIENT in e.text for e in top.evidence)


def test_older_v1_wording_names_the_process() -> None:
    """vLLM 0.8–0.11 said it this way (e.g. vllm-project/vllm issue text quoting core_client.py:564)."""
    line = (
        "ERROR 01-04 21:58:22 [core_client.py:564] Engine core proc EngineCore_DP0 died unexpectedly, "
        "shutting down client."
    )
    found = diagnose(["INFO Application startup complete.", line], DiagnosisContext())
    assert found and found[0].rule_id == "engine-core-died"
    assert "(EngineCore_DP0)" in found[0].summary


def test_an_error_of_the_engine_core_itself_ranks_above_its_death() -> None:
    """When the engine core logged why it died (here a CUDA OOM while serving), that cause speaks (both rules are of
    category unknown, and one diagnosis per category is shown)."""
    served = _lines("h100_q7_32k")
    cut = next(i for i, x in enumerate(served) if MPCLIENT in x)
    oom = (
        "(EngineCore pid=1704) ERROR 11-25 15:03:26 [core.py:1330] torch.OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.18 GiB of which 1.01 GiB is free."
    )
    found = diagnose([*served[:cut], oom, *served[cut:]], DiagnosisContext())
    assert found[0].rule_id == "oom-while-serving" and "out of memory" in found[0].summary.lower()


def test_engine_core_death_before_ready_is_restarted_not_called_deterministic() -> None:
    """A kill during start-up (the host's OOM killer, say) may not repeat: serve retries it."""
    served = _lines("h100_q7_32k")
    start = next(i for i, x in enumerate(served) if "Graph capturing finished" in x)
    tail = [*served[: start + 1], *[x for x in served if MPCLIENT in x]]
    findings = diagnose_lines(tail, None)
    assert "engine-core process" in findings[0].summary
    assert not _deterministic(0, tail, findings)


@pytest.mark.parametrize("case", ["h100_q7_32k_restart", "h100_q7_yarn", "h100_q7_fp8"])
def test_servers_stopped_with_sigterm_leave_no_diagnosis(case: str) -> None:
    assert diagnose(_lines(case), DiagnosisContext()) == []


def test_teardown_errors_after_sigterm_are_not_the_failure_but_a_new_run_counts_again() -> None:
    """h100_q7_fp8's teardown logged an EngineDeadError traceback after SIGTERM; the same lines in a run that was not
    asked to stop are an error, and a later start in the same log is judged on its own."""
    fp8 = _lines("h100_q7_fp8")
    stop = [x for x in fp8 if "shutdown triggered" in x or "received signal=SIGTERM" in x]
    assert stop, "the real log has vLLM's stop lines"
    unasked = [x for x in fp8 if x not in stop]
    assert [d.rule_id for d in diagnose(unasked, DiagnosisContext())] == ["unknown-error"]
    again = [*fp8, *_lines("h100_q7_32k_restart")[:40], *[x for x in unasked if "EngineDeadError" in x]]
    assert [d.rule_id for d in diagnose(again, DiagnosisContext())] == ["unknown-error"]


def test_refused_start_on_the_h100_quotes_vllms_own_estimate() -> None:
    found = diagnose(_lines("h100_q7_fail"), DiagnosisContext())
    top = found[0]
    assert top.category == "max_model_len_exceeds_kv_cache" and top.confidence >= 0.9
    assert top.fix.startswith("--max-model-len 19648 or lower")
    assert "32768" in top.summary
    assert [f.category for f in found].count("unknown") == 0
