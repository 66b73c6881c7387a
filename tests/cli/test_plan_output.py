"""What ``plan`` gives a user to copy: the vLLM argv/env in ``--json``, the wrapped command, how clients reach the
replicas (one endpoint with vLLM's data-parallel mode), and ``serve --runtime docker`` pinned to the release."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwendeploy.cli import app
from qwendeploy.cli.launch_text import wrapped_command

runner = CliRunner()
SEED = ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "4xRTX4090D", "--context", "131072"]
DP4 = ["plan", "Qwen/Qwen2.5-0.5B-Instruct", "--gpus", "4xL4", "--context", "8192"]


def test_json_carries_the_argv_and_environment_serve_runs() -> None:
    r = runner.invoke(app, [*SEED, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    launch = d["launch"]
    argv = launch["argv"]
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    tp = d["placement"]["tensor_parallel_size"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == str(tp)
    assert argv[argv.index("--max-model-len") + 1] == "131072"
    assert launch["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(str(g) for g in d["placement"]["gpus"][:tp])
    assert launch["endpoints"] == ["http://127.0.0.1:8000/v1"]


def test_json_launch_is_null_when_nothing_fits() -> None:
    r = runner.invoke(app, ["plan", "Qwen/Qwen2.5-72B-Instruct", "--gpus", "1xL4", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["launch"] is None


def test_terminal_command_is_wrapped_and_short_summary() -> None:
    r = runner.invoke(app, SEED, env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    start = lines.index("The vLLM command:")
    block = []
    for line in lines[start + 1 :]:
        block.append(line)
        if not line.endswith(" \\"):
            break
    assert len(block) > 5 and all(len(x) <= 100 for x in block if "--hf-overrides" not in x)
    assert block[-1].startswith("  --served-model-name")
    assert len(lines[-1]) < 160 and lines[-1].startswith("qwendeploy plan: Qwen/Qwen2.5-7B-Instruct on 4x")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_wrapped_command_is_the_same_command_in_a_shell() -> None:
    argv = ["vllm", "serve", "Qwen/Q", "--hf-overrides", '{"a": 1}', "--enforce-eager", "--port", "8000"]
    text = wrapped_command(argv, {"CUDA_VISIBLE_DEVICES": "0,1", "X": "a b"})
    script = 'vllm() { printf "%s\\n" "$CUDA_VISIBLE_DEVICES|$X" "$@"; }\n' + text
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["0,1|a b", *argv[1:]]


def test_data_parallel_is_one_endpoint_with_vllms_own_mode(tmp_path: Path) -> None:
    r = runner.invoke(app, [*DP4, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    dp = d["placement"]["data_parallel_size"]
    assert dp == 4
    launch = d["launch"]
    assert launch["data_parallel_mode"] == "vllm" and len(launch["servers"]) == 1
    assert launch["argv"][launch["argv"].index("--data-parallel-size") + 1] == "4"
    assert launch["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert "one endpoint, http://127.0.0.1:8000/v1" in launch["clients"]
    text = runner.invoke(app, DP4).stdout
    assert "Clients: 4 replicas behind one endpoint, http://127.0.0.1:8000/v1" in text
    # the profile serve runs says the same, in its dry run too
    prof = tmp_path / "p.yaml"
    assert runner.invoke(app, [*DP4, "-o", str(prof)]).exit_code == 0
    assert "# Clients: 4 replicas behind one endpoint, http://127.0.0.1:8000/v1" in prof.read_text()
    dry = runner.invoke(app, ["serve", str(prof), "--dry-run"]).stdout
    assert "--data-parallel-size 4" in dry and "# clients: 4 replicas behind one endpoint" in dry
    dry_json = json.loads(runner.invoke(app, ["serve", str(prof), "--dry-run", "--json"]).stdout)
    assert dry_json["data_parallel_mode"] == "vllm" and "one endpoint" in dry_json["clients"]


def test_data_parallel_on_an_older_release_says_where_the_servers_are(tmp_path: Path) -> None:
    from qwendeploy.cli.launch_text import launch_specs, reach_words
    from qwendeploy.core.gpus import parse_inventory
    from qwendeploy.core.models import find_model
    from qwendeploy.core.planner import PlanRequest, plan

    spec = find_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert spec is not None
    p = plan(PlanRequest(spec=spec, machine=parse_inventory("2xL4"), max_model_len=8192, dp=2, vllm_version="0.11"))
    specs = launch_specs(p)
    assert [s.port for s in specs] == [8000, 8001]
    words = reach_words(specs, 2)
    assert "http://127.0.0.1:8000/v1, http://127.0.0.1:8001/v1" in words and "load balancer" in words


@pytest.mark.parametrize(("version", "tag"), [("0.26", "v0.26.0"), ("0.33", "v0.33.0")])
def test_docker_image_follows_the_planned_release(tmp_path: Path, version: str, tag: str) -> None:
    prof = tmp_path / "p.yaml"
    args = ["plan", "Qwen/Qwen2.5-0.5B-Instruct", "--gpus", "1xL4", "--context", "4096", "--vllm-version", version]
    assert runner.invoke(app, [*args, "-o", str(prof)]).exit_code == 0
    out = runner.invoke(app, ["serve", str(prof), "--dry-run", "--runtime", "docker"]).stdout
    assert f"vllm/vllm-openai:{tag}" in out and ":latest" not in out
    out = runner.invoke(app, ["serve", str(prof), "--dry-run", "--runtime", "docker", "--image", "my/img:1"]).stdout
    assert "my/img:1" in out


def _why(*args: str) -> list[str]:
    r = runner.invoke(app, ["plan", *args, "--json"])
    assert r.exit_code == 0, r.output
    return list(json.loads(r.stdout)["why"])


def test_why_does_not_credit_gpu_count_when_both_use_the_same_gpus() -> None:
    why = " ".join(_why("Qwen/Qwen2.5-72B-Instruct", "--gpus", "8xH100-80GB", "--context", "32K"))
    assert "TP8 wins" in why and "Against TP4×PP2" in why
    # both hold 1/8 of the weights per GPU: the difference is the pipeline, and the text says so
    assert "splitting the weights" not in why and "holds and reads" not in why
    assert "TP4×PP2 sends every step through 2 pipeline stages" in why


def test_moe_reads_only_its_active_experts() -> None:
    import re

    why = " ".join(_why("Qwen/Qwen3-30B-A3B", "--gpus", "1xH100-80GB", "--context", "32K"))
    m = re.search(r"reads ([\d.]+) GiB of weights per GPU \(the active experts of the ([\d.]+) GiB it holds\)", why)
    assert m is not None, why
    read, held = float(m.group(1)), float(m.group(2))
    assert read < held / 5  # 3.3B of 30.5B parameters are active per token


def test_one_gpu_has_no_all_reduce_to_speak_of() -> None:
    why = " ".join(_why("Qwen/Qwen2.5-7B-Instruct", "--gpus", "1xH100-80GB"))
    assert "with no all-reduce (TP 1)" in why and "over no all-reduce" not in why


def test_context_auto_says_what_it_chose_and_what_yarn_allows() -> None:
    import re

    args = ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "1xRTX4090"]
    r = runner.invoke(app, [*args, "--context", "auto", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["max_model_len"] == 32768
    note = d["notes"][0]
    assert note.startswith("--context auto chose 32,768 tokens: the model's native window")
    m = re.search(r"--context (\d+) asks for it", note)
    assert m is not None, note
    # the length it names does fit when asked for, with the same placement and the default KV cache
    again = json.loads(runner.invoke(app, [*args, "--context", m.group(1), "--json"]).stdout)
    assert again["fits"] is True and again["engine"]["kv_cache_dtype"] == "auto"
    assert int(m.group(1)) > 65536
    text = runner.invoke(app, [*args, "--context", "auto"], env={"COLUMNS": "200"}).stdout
    assert "target 32,768 tokens (chosen by --context auto: see the note)" in text


def test_context_auto_shorter_than_native_says_so() -> None:
    r = runner.invoke(app, ["plan", "Qwen/Qwen2.5-14B-Instruct-AWQ", "--gpus", "1xT4", "--context", "auto", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["max_model_len"] < 32768
    assert d["notes"][0].startswith(f"--context auto chose {d['max_model_len']:,} tokens: the longest that fits")


@pytest.mark.slow
def test_serve_banner_says_where_clients_connect(tmp_path: Path) -> None:
    import os
    import signal
    import sys

    import yaml
    from fakes.serving import FAKE_VLLM, free_port

    port = free_port()
    doc = {
        "version": 1,
        "name": "t",
        "model": {"id": "m", "max_model_len": 4096},
        "placement": {"data_parallel_size": 2, "data_parallel_mode": "vllm", "gpus": ["0", "1"]},
        "engine": {"gpu_memory_utilization": 0.01},
        "server": {"port": port, "ready_timeout_s": 20, "shutdown_grace_s": 2},
        "restart": {"policy": "never"},
    }
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, QWENDEPLOY_VLLM_BIN=str(FAKE_VLLM), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "qwendeploy", "serve", str(prof), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            seen.append(line)
            if "ready after" in line or "exits" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    out = "".join(seen)
    assert f"Clients: 2 replicas behind one endpoint, http://127.0.0.1:{port}/v1" in out, out
