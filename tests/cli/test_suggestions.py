"""When nothing fits: engine changes are suggested only when the planner, re-run with them, fits — and the
suggested flags, passed back to ``plan``, do fit. ``--json`` says why nothing did."""

from __future__ import annotations

import json
import shlex

import pytest
from typer.testing import CliRunner

from qwendeploy.cli import app

runner = CliRunner()


def _plan(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = runner.invoke(app, ["plan", *args, "--json"])
    return r.exit_code, json.loads(r.stdout)


def _flags(suggestion: str) -> list[str]:
    """The flags a suggestion starts with (up to the first ':' or '(')."""
    head = suggestion.split(":", 1)[0].split(" (", 1)[0]
    return shlex.split(head)


CASES = [
    (["Qwen/Qwen2.5-14B-Instruct-AWQ", "--gpus", "1xT4", "--context", "8K"], "--enforce-eager"),
    (["Qwen/QwQ-32B", "--gpus", "1xH100-80GB", "--context", "128K"], "--quantization fp8"),
    (
        ["Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", "--gpus", "2xRTX4090", "--context", "16K"],
        "--gpu-memory-utilization",
    ),
]


@pytest.mark.parametrize(("args", "flag"), CASES)
def test_suggested_engine_change_fits_when_applied(args: list[str], flag: str) -> None:
    code, d = _plan(*args)
    assert code == 1 and d["fits"] is False
    hits = [s for s in d["suggestions"] if s.startswith("--") and flag in s.split(":", 1)[0]]
    assert hits, d["suggestions"]
    code, again = _plan(*args, *_flags(hits[0]))
    assert code == 0 and again["fits"] is True


def test_every_engine_suggestion_fits_when_applied() -> None:
    args = CASES[0][0]
    _, d = _plan(*args)
    engine = [s for s in d["suggestions"] if s.startswith("--") and not s.startswith("--max-model-len")]
    assert len(engine) >= 2  # --enforce-eager and a higher --gpu-memory-utilization both fit on the T4
    for s in engine:
        code, _ = _plan(*args, *_flags(s))
        assert code == 0, s


def test_online_fp8_is_not_suggested_without_fp8_tensor_cores() -> None:
    _, d = _plan("Qwen/QwQ-32B", "--gpus", "1xA100-80GB", "--context", "128K")
    assert not any(s.startswith("--quantization fp8") for s in d["suggestions"])


def test_json_says_why_nothing_fits() -> None:
    _, d = _plan(*CASES[0][0])
    (closest,) = [c for c in d["candidates"] if c["status"] == "shorter"]
    short = closest["shortfall_bytes_per_gpu"]
    assert short > 0
    capacity = d["per_gpu"][0]["capacity_bytes"]
    assert closest["needed_bytes_per_gpu"] - capacity == short
    assert any(w.startswith("Closest: TP1 needs") and f"{short / 2**30:.1f} GiB short" in w for w in d["why"])
    r = runner.invoke(app, ["plan", *CASES[0][0], "--explain"])
    assert "GiB short per GPU" in r.stdout and "kv_bytes_per_token" in r.stdout
