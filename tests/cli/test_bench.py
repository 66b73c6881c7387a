"""``qwendeploy bench`` against the fake vLLM: a real server streaming completions with known delays, and a fake
``vllm`` executable whose ``bench serve`` writes vLLM's result JSON."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.serving import FAKE_VLLM, free_port
from typer.testing import CliRunner

from qwendeploy.cli import app
from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.models import find_model
from qwendeploy.core.planner import PlanRequest, plan

pytestmark = pytest.mark.slow
runner = CliRunner()
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """The fake vLLM on a free port: first token after 50 ms, then one token every 5 ms."""
    port = free_port()
    env = {**os.environ, "FAKE_VLLM_TTFT": "0.05", "FAKE_VLLM_TOKEN_DELAY": "0.005"}
    log = (tmp_path / "fake.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_VLLM), "serve", MODEL, "--port", str(port)], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _profile(tmp_path: Path, port: int) -> Path:
    p = tmp_path / "p.yaml"
    args = ["plan", MODEL, "--gpus", "1xL4", "--context", "4096", "--port", str(port), "-o", str(p)]
    assert runner.invoke(app, args).exit_code == 0
    return p


def test_builtin_client_measures_ttft_tpot_and_throughput(server: int, tmp_path: Path) -> None:
    out = tmp_path / "res"
    args = ["bench", str(_profile(tmp_path, server)), "--client", "builtin", "-c", "1,4", "--input-len", "30"]
    r = runner.invoke(app, [*args, "--output-len", "20", "--num-prompts", "8", "--result-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["client"] == "qwendeploy (built-in)"
    for level in doc["levels"]:
        assert level["completed"] == 8 and level["failed"] == 0
        assert level["output_tokens"] == 8 * 20
        assert 50 <= level["mean_ttft_ms"] < 500  # the fake waits 50 ms before the first token
        assert 5 <= level["mean_tpot_ms"] < 50  # and 5 ms between tokens
        # throughput is the tokens over the wall time of the level
        assert level["output_tokens_per_s"] == pytest.approx(level["output_tokens"] / level["duration_s"], rel=0.01)
        est = level["estimate_output_tokens_per_s"]
        assert est is not None and est > 0
        # the plan's decode rate is set beside the run's: requests at once × 1000 / median TPOT
        c = level["concurrency"]
        assert level["decode_tokens_per_s"] == pytest.approx(c * 1000 / level["median_tpot_ms"], rel=0.01)
        assert level["decode_tokens_per_s"] > level["output_tokens_per_s"]  # the first token's wait is left out
        assert level["estimate_error_pct"] == pytest.approx(
            (est - level["decode_tokens_per_s"]) / level["decode_tokens_per_s"] * 100, abs=0.2
        )
    one, four = doc["levels"]
    assert four["output_tokens_per_s"] > 2 * one["output_tokens_per_s"]  # four streams at once
    assert json.loads((out / "bench.json").read_text())["levels"] == doc["levels"]


def test_vllm_client_runs_vllm_bench_serve_with_the_sweep(server: int, tmp_path: Path) -> None:
    out = tmp_path / "res"
    args = ["bench", f"http://127.0.0.1:{server}/v1", "--vllm-bin", str(FAKE_VLLM), "-c", "2,8"]
    r = runner.invoke(app, [*args, "--result-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["client"] == "vllm bench serve"
    for level, c in zip(doc["levels"], (2, 8), strict=True):
        saved = json.loads((out / f"vllm-c{c}.json").read_text())
        argv = saved["argv"]
        flag = dict(itertools.pairwise(argv))
        assert argv[:2] == ["bench", "serve"] and "--ignore-eos" in argv and "--save-result" in argv
        assert flag["--dataset-name"] == "random" and flag["--base-url"] == f"http://127.0.0.1:{server}"
        assert flag["--random-input-len"] == "1000" and flag["--random-output-len"] == "256"
        assert flag["--max-concurrency"] == str(c) and flag["--num-prompts"] == str(max(8, 4 * c))
        assert flag["--result-dir"] == str(out)
        # the figures are read from vLLM's result file
        assert level["output_tokens_per_s"] == saved["output_throughput"]
        assert level["mean_ttft_ms"] == saved["mean_ttft_ms"] and level["completed"] == saved["completed"]
        assert level["estimate_output_tokens_per_s"] is None  # a URL: no plan to compare with


def test_vllm_bench_failure_is_one_message(server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_BENCH_FAIL", "1")
    args = ["bench", f"http://127.0.0.1:{server}", "--vllm-bin", str(FAKE_VLLM), "-c", "1"]
    r = runner.invoke(app, [*args, "--result-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert "`vllm bench serve` at concurrency 1 exited 1 without saving a result" in r.output
    assert "Cannot connect to host" in r.output and "Traceback" not in r.output


def test_no_server_is_one_message(tmp_path: Path) -> None:
    r = runner.invoke(app, ["bench", f"http://127.0.0.1:{free_port()}", "--result-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert "No OpenAI-compatible server answers at" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("bad", ["0,4", "a,b", ""])
def test_bad_concurrency_is_refused(bad: str) -> None:
    r = runner.invoke(app, ["bench", "http://127.0.0.1:1", "-c", bad])
    assert r.exit_code == 2 and "--concurrency" in r.output


def test_plot_is_drawn_when_matplotlib_is_there(server: int, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    args = ["bench", f"http://127.0.0.1:{server}", "--client", "builtin", "-c", "1,2", "--output-len", "4"]
    r = runner.invoke(app, [*args, "--input-len", "4", "--num-prompts", "2", "--result-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    png = tmp_path / "throughput.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimate_is_the_planners_decode_model_at_the_load() -> None:
    """bench's estimate is §5 (core.planner.decode_cost) at the benchmark's load, not a copy of it: at one request it
    is the planner's single-stream figure, and it tracks the issue's outside measurement through serve on an H200
    (vLLM 0.26, Qwen2.5-7B bf16, 1,000 in / 256 out: 212 and 3,054 output tok/s at 1 and 16 requests) within 15%.
    The outside 10,389 tok/s at 64 requests is not held: vLLM's own client against the same model, card and release
    measured 6,029 tok/s end-to-end and 8,629 tok/s of decode (64 × 1000 / median TPOT 7.42 ms) there
    (tests/fixtures/gpu-runs/h200-bench-vllm0.26/q7_bench), which the model follows within 1%
    (tests/core/test_tok_s_calibration.py); the outside run's settings are not known."""
    from qwendeploy.core.bench import decode_estimate

    spec = find_model("Qwen/Qwen2.5-7B-Instruct")
    assert spec is not None
    p = plan(PlanRequest(spec=spec, machine=parse_inventory("1xH200"), max_model_len=32768, vllm_version="0.26"))
    assert p.chosen is not None and p.chosen.cost is not None
    got = {c: decode_estimate(p.request, p.chosen, concurrency=c, input_len=1000, output_len=256) for c in (1, 16, 64)}
    # One request at the planner's own mean context (half of 32,768 tokens) is the planner's single-stream figure.
    same = decode_estimate(p.request, p.chosen, concurrency=1, input_len=16384 - 128, output_len=256)
    assert same is not None
    assert same.output_tokens_per_s == pytest.approx(p.chosen.cost.single_stream_tokens_per_s, rel=1e-9)
    for c, measured in ((1, 212.0), (16, 3054.0)):
        e = got[c]
        assert e is not None and e.output_tokens_per_s == pytest.approx(measured, rel=0.15), (c, e)
    assert got[64] is not None and got[16] is not None and got[64].output_tokens_per_s > got[16].output_tokens_per_s
