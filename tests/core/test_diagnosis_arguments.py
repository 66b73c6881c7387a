"""vLLM's argument parser refusing the command line: one category, and a fix that names what to change.

The three real logs are tests/fixtures/doctor-cases/invalid_arguments_*.log (checked with every case by
test_diagnosis.py); here each kind of rejection the fix tells apart."""

from __future__ import annotations

import pytest

from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose
from qwendeploy.core.diagnosis.rules import load_catalog


def _top(*lines: str) -> tuple[str, str, str]:
    found = diagnose(list(lines), DiagnosisContext())
    assert found, lines
    return found[0].category, found[0].summary, found[0].fix


@pytest.mark.parametrize(
    ("line", "in_fix"),
    [
        ("vllm: error: unrecognized arguments: serve /models/Qwen3-8B", "entrypoint is `vllm serve`"),
        ("api_server.py: error: unrecognized arguments: /root/models/Qwen3-8B", "--model /root/models/Qwen3-8B"),
        ("vllm: error: unrecognized arguments: --swap-space 16", "--swap-space was removed from vLLM: drop it"),
        ("vllm: error: unrecognized arguments: --max_seq_len_to_capture 8192", "use --max-cudagraph-capture-size"),
        ("vllm: error: unrecognized arguments: --top-p 0.9", "request parameter"),
        ("vllm serve: error: unrecognized arguments: --reasoning-config {}", "--reasoning-config is not a flag of"),
        (
            "vllm serve: error: argument --kv-cache-dtype: invalid choice: 'fp9' (choose from auto, fp8)",
            "Give --kv-cache-dtype one of the values",
        ),
    ],
)
def test_each_rejection_gets_its_own_fix(line: str, in_fix: str) -> None:
    category, summary, fix = _top("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...", line)
    assert category == "invalid_arguments"
    assert "refused the command line" in summary and "exit 2" in summary
    assert in_fix in fix


def test_the_rejected_words_are_quoted_in_the_summary() -> None:
    _, summary, _ = _top("vllm: error: unrecognized arguments: --temperature 0.8")
    assert '("--temperature 0.8" unrecognized)' in summary


def test_serve_does_not_retry_it() -> None:
    assert "invalid_arguments" in load_catalog().deterministic


def test_a_usage_line_alone_is_not_a_rejection() -> None:
    found = diagnose(["usage: vllm [-h] [-v] {chat,complete,serve} ..."], DiagnosisContext())
    assert all(d.category != "invalid_arguments" for d in found)
