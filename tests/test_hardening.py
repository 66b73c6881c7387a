"""Issue #11: hostile inputs at the edge. Each kind of attack ends in one message and exit 2 (or exit 3 for a
failed write), quickly and without a traceback, for every command that reads the input."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qwendeploy.cli import app
from qwendeploy.core import limits
from qwendeploy.core.vllm_args import shell_command

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "fixtures" / "hf_configs"
runner = CliRunner()
QD = [sys.executable, "-m", "qwendeploy"]
PLAN_72B_2_NODES = [
    "plan",
    "Qwen/Qwen2.5-72B-Instruct",
    "--gpus",
    "8xH100-80GB",
    "--nodes",
    "2",
    "--tp",
    "8",
    "--pp",
    "2",
]

GOOD = {"version": 1, "name": "t", "model": {"id": "m", "max_model_len": 4096}}
READERS = [
    ["serve", "{p}", "--dry-run"],
    ["export", "k8s", "{p}"],
    ["doctor", "--profile", "{p}", "--json"],
    ["cluster", "head", "{p}", "--dry-run"],
]
"""Every command that reads a profile."""


def _one_error(output: str) -> None:
    assert "Traceback" not in output
    assert output.count("Error:") == 1, output


def _invoke(args: list[str]) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = runner.invoke(app, args)
    took = time.monotonic() - t0
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output, took


def _bomb(levels: int = 9) -> str:
    lines = ["version: 1", "model: {id: m}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, doc: object, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return p


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c[:2]))
def test_alias_bomb_is_refused_at_once_by_every_reader(tmp_path: Path, cmd: list[str]) -> None:
    text = _bomb()
    assert len(text) < 4096
    p = _write(tmp_path, text)
    code, out, took = _invoke([a.format(p=p) for a in cmd])
    assert code == 2 and took < 5
    _one_error(out)
    assert "aliases" in out and len(out) < 1000


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c[:2]))
def test_special_files_are_refused_without_reading(tmp_path: Path, cmd: list[str]) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * limits.MAX_PROFILE_BYTES + "\n")
    for path, why in ((fifo, "FIFO"), (zero, "device"), (big, "the limit")):
        # a subprocess: a reader that blocked on the FIFO would hang the test run
        proc = subprocess.run(
            [sys.executable, "-m", "qwendeploy", *[a.format(p=path) for a in cmd]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        _one_error(proc.stderr)
        assert why in proc.stderr


BAD_PROFILES: dict[str, tuple[dict[str, object], str]] = {
    "hf_overrides date": ({"model": {"id": "m", "hf_overrides": {"d": "DATE"}}}, "hf_overrides.d"),
    "nul in env value": ({"env": {"A": "x\x00y"}}, "NUL"),
    "nul in extra args": ({"engine": {"extra_args": ["--x\x00"]}}, "NUL"),
    "nul in model id": ({"model": {"id": "m\x00"}}, "NUL"),
    "= in env name": ({"env": {"A=B": "1"}}, "env"),
    "shell in env name": ({"env": {"X;touch pwned;Y": "1"}}, "env"),
    "empty name": ({"name": ""}, "name"),
    "multi-line name": ({"name": "a\nb"}, "name"),
    "parent name": ({"name": "../../x"}, "name"),
    "absolute name": ({"name": "/tmp/x"}, "name"),
    "empty host": ({"server": {"host": ""}}, "server.host"),
    "spaces in host": ({"server": {"host": "bad host!"}}, "server.host"),
    "huge max_model_len": ({"model": {"id": "m", "max_model_len": 1e30}}, "model.max_model_len"),
    "garbage gpus": ({"placement": {"gpus": ["0; rm -rf /"]}}, "placement.gpus"),
    "infinite backoff": ({"restart": {"backoff_max_s": float("inf")}}, "backoff_max_s"),
    "infinite grace": ({"server": {"shutdown_grace_s": float("inf")}}, "shutdown_grace_s"),
    "huge grace": ({"server": {"shutdown_grace_s": 1e9}}, "shutdown_grace_s"),
    "nan utilization": ({"engine": {"gpu_memory_utilization": float("nan")}}, "gpu_memory_utilization"),
    "huge nodes": ({"placement": {"nodes": 10**9}}, "placement.nodes"),
    "key as key env": ({"server": {"api_key_env": "sk-123"}}, "api_key_env"),
    "model id as a flag": ({"model": {"id": "--trust-remote-code"}}, "model.id"),
    "served name as a flag": ({"server": {"served_model_name": "--api-key=x"}}, "served_model_name"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_bad_values_fail_the_dry_run_with_the_field_named(tmp_path: Path, case: str) -> None:
    override, field = BAD_PROFILES[case]
    doc: dict[str, object] = {**GOOD, **override}
    text = yaml.safe_dump(doc).replace("d: DATE", "d: 2024-01-01")
    p = _write(tmp_path, text)
    code, out, _ = _invoke(["serve", str(p), "--dry-run"])
    assert code == 2, out
    _one_error(out)
    assert field in out


@pytest.mark.parametrize("tag", ["!!set {a, b}", "!!binary aGVsbG8=", "2024-01-01T10:00:00Z"])
def test_hf_overrides_hold_json_values_only(tmp_path: Path, tag: str) -> None:
    p = _write(tmp_path, f"version: 1\nmodel:\n  id: m\n  hf_overrides:\n    x: {tag}\n")
    code, out, _ = _invoke(["serve", str(p), "--dry-run"])
    assert code == 2
    _one_error(out)
    assert "hf_overrides.x" in out and "only JSON values" in out


def test_errors_quote_the_field_not_the_document(tmp_path: Path) -> None:
    doc = {"version": 1, "name": "t", "engine": {"extra_args": [f"--flag-{i}-" + "v" * 40 for i in range(40)]}}
    p = _write(tmp_path, doc)
    code, out, _ = _invoke(["serve", str(p), "--dry-run"])
    assert code == 2 and "model: Field required" in out
    assert "flag-3" not in out and len(out) < 400


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    deep = "version: 1\nmodel: {id: m, hf_overrides: " + "{a: " * 60 + "1" + "}" * 60 + "}\n"
    code, out, _ = _invoke(["serve", str(_write(tmp_path, deep)), "--dry-run"])
    assert code == 2 and "levels deep" in out
    _one_error(out)


def _model_dir(tmp_path: Path, config: dict[str, object] | str, **extra: str) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name, text in extra.items():
        (d / name.replace("__", ".")).write_text(text)
    return d


def _qwen_config() -> dict[str, object]:
    return dict(json.loads((CONFIGS / "Qwen2.5-7B-Instruct.json").read_text()))


CONFIG_ATTACKS: dict[str, str] = {
    "nested 200000 deep": "[" * 200_000 + "]" * 200_000,
    "NaN": json.dumps(_qwen_config()).replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN'),
    "Infinity": json.dumps({**_qwen_config(), "vocab_size": 1}).replace('"vocab_size": 1', '"vocab_size": Infinity'),
    "1e400 layers": json.dumps({**_qwen_config(), "num_hidden_layers": 1}).replace(
        '"num_hidden_layers": 1', '"num_hidden_layers": 1e400'
    ),
    "10**12 layers": json.dumps({**_qwen_config(), "num_hidden_layers": 10**12}),
    "nul": json.dumps({**_qwen_config(), "model_type": "qwen2\x00"}),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ATTACKS))
def test_hostile_config_json_is_refused(tmp_path: Path, case: str) -> None:
    d = _model_dir(tmp_path, CONFIG_ATTACKS[case])
    code, out, took = _invoke(["plan", str(d), "--gpus", "1xH100-80GB", "--context", "4096"])
    assert code == 2 and took < 10, out
    _one_error(out)
    assert "config.json" in out


@pytest.mark.parametrize(
    "index",
    [
        {"weight_map": ["model.safetensors"]},
        {"weight_map": {"w": 3}},
        {"weight_map": {"w": "../../etc/passwd"}},
        [1, 2],
    ],
    ids=["list", "non-string", "path escape", "not an object"],
)
def test_bad_safetensors_index_is_refused(tmp_path: Path, index: object) -> None:
    d = _model_dir(tmp_path, _qwen_config(), model__safetensors__index__json=json.dumps(index))
    code, out, _ = _invoke(["plan", str(d), "--gpus", "1xH100-80GB", "--context", "4096"])
    assert code == 2, out
    _one_error(out)
    assert "safetensors" in out


@pytest.mark.parametrize(
    "flags",
    [
        ["--nodes", "1000000"],
        ["--gpus", "64xH100-80GB", "--nodes", "64"],
        ["--name", "../../x"],
        ["--name", "/abs/path"],
        ["--name", ""],
        ["--host", "bad host!"],
        ["--host", ""],
        ["--ifname", "eth0; reboot"],
        ["--concurrency", str(10**12)],
        ["--tensor-parallel-size", str(10**9)],
    ],
    ids=lambda f: " ".join(f)[:30],
)
def test_plan_flags_are_bounded(flags: list[str], tmp_path: Path) -> None:
    args = ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "8xH100-80GB", *flags, "-o", str(tmp_path / "p.yaml")]
    code, out, took = _invoke(args)
    assert code == 2 and took < 10, out
    _one_error(out)
    assert flags[0] in out
    assert not (tmp_path / "p.yaml").exists()


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))


def test_a_failed_write_is_exit_3_with_a_message(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    proc = subprocess.run(
        [
            *QD,
            "plan",
            "Qwen/Qwen2.5-7B-Instruct",
            "--gpus",
            "1xH100-80GB",
            "--context",
            "4096",
            "--json",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 3, proc.stderr
    _one_error(proc.stderr)
    assert f"Cannot write {out}" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".p.yaml.*"))  # no partial file left behind


def test_export_output_write_failure_is_exit_3(tmp_path: Path) -> None:
    prof = tmp_path / "mn.yaml"
    plan = runner.invoke(
        app,
        [*PLAN_72B_2_NODES, "-o", str(prof)],
    )
    assert plan.exit_code == 0, plan.output
    proc = subprocess.run(
        [sys.executable, "-m", "qwendeploy", "export", "k8s", str(prof), "-o", str(tmp_path / "lws.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 3, proc.stderr
    _one_error(proc.stderr)


def test_shell_line_never_runs_an_env_name() -> None:
    line = shell_command(["vllm", "serve", "m"], {"OK_NAME": "a b", "X;touch pwned;Y": "1"})
    assert line.startswith("env ")
    assert "'X;touch pwned;Y=1'" in line and "OK_NAME='a b'" in line
    # the shell sees the hostile name as one quoted word, never as a command
    words = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "X;touch pwned;Y=1" in words


@pytest.mark.parametrize("kind", ["fifo", "urandom"])
def test_special_weight_files_are_refused_without_reading(tmp_path: Path, kind: str) -> None:
    d = _model_dir(tmp_path, _qwen_config())
    shard = d / "model.safetensors"
    if kind == "fifo":
        os.mkfifo(shard)
    else:
        shard.symlink_to("/dev/urandom")
    proc = subprocess.run(
        [*QD, "plan", str(d), "--gpus", "1xH100-80GB", "--context", "4096"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    _one_error(proc.stderr)
    assert "only regular files are read" in proc.stderr


def test_a_huge_unknown_key_is_not_repeated(tmp_path: Path) -> None:
    p = _write(tmp_path, {**GOOD, "k" * 100_000: 1})
    code, out, _ = _invoke(["serve", str(p), "--dry-run"])
    assert code == 2 and "unknown field" in out and len(out) < 400


@pytest.mark.parametrize(
    "args",
    [
        ["join", "head; reboot", "{p}"],
        ["join", "10.0.0.1", "{p}", "--ifname", "eth0 && reboot"],
        ["head", "{p}", "--node-ip", "$(reboot)"],
        ["head", "{p}", "--num-gpus", "-5"],
    ],
    ids=["head address", "ifname", "node ip", "num gpus"],
)
def test_cluster_flags_are_checked_like_the_profile(tmp_path: Path, args: list[str]) -> None:
    prof = tmp_path / "mn.yaml"
    plan = runner.invoke(app, [*PLAN_72B_2_NODES, "-o", str(prof)])
    assert plan.exit_code == 0, plan.output
    code, out, _ = _invoke(["cluster", *[a.format(p=prof) for a in args], "--dry-run"])
    assert code == 2, out
    _one_error(out)


def test_nccl_interface_lists_are_still_accepted(tmp_path: Path) -> None:
    p = _write(tmp_path, {**GOOD, "cluster": {"socket_ifname": "^lo,docker0"}})
    code, out, _ = _invoke(["serve", str(p), "--dry-run"])
    assert code == 0, out


def test_a_derived_name_is_always_a_valid_profile_name(tmp_path: Path) -> None:
    d = tmp_path / ("模型-" + "x" * 80)
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_qwen_config()))
    out = tmp_path / "p.yaml"
    code, text, _ = _invoke(["plan", str(d), "--gpus", "1xH100-80GB", "--context", "4096", "-o", str(out)])
    assert code == 0, text
    name = yaml.safe_load(out.read_text())["name"]
    assert limits.NAME_RE.fullmatch(name) and len(name) <= limits.MAX_NAME


def test_export_replicas_are_bounded(tmp_path: Path) -> None:
    prof = tmp_path / "mn.yaml"
    assert runner.invoke(app, [*PLAN_72B_2_NODES, "-o", str(prof)]).exit_code == 0
    code, out, _ = _invoke(["export", "k8s", str(prof), "--replicas", str(10**12)])
    assert code == 2 and "--replicas" in out


@pytest.mark.parametrize(
    "flags",
    [["--revision", "r" * 5000], ["--revision", "a\nb"], ["--kv-cache-dtype=--x"], ["--quantization=-q"]],
    ids=["long revision", "multi-line revision", "dtype as a flag", "quantization as a flag"],
)
def test_plan_values_that_reach_the_profile_are_checked_first(tmp_path: Path, flags: list[str]) -> None:
    out = tmp_path / "p.yaml"
    code, text, _ = _invoke(["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "1xH100-80GB", *flags, "-o", str(out)])
    assert code == 2, text
    _one_error(text)
    assert not out.exists() and "{" not in text  # refused before any plan was printed
