"""Property-based fuzzing of the input edge (issue #11): the profile loader, the config.json reader and the CLI
flags. The property: success, or one message and exit 2 (1 for plan's "nothing fits"); never a traceback, never
unbounded time (hypothesis' per-example deadline) or memory (the process' peak RSS).

The budget is fixed (``max_examples``, ``deadline``) and the examples are derandomised, so CI runs the same
~15 s every time; set ``QWENDEPLOY_FUZZ_EXAMPLES`` to search longer locally.
"""

from __future__ import annotations

import json
import math
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qwendeploy.adapters.hub import load_local_dir
from qwendeploy.adapters.profile_files import read_profile
from qwendeploy.cli import app
from qwendeploy.core.vllm_args import build_launch_specs, render_spec
from qwendeploy.errors import QwendeployError

ROOT = Path(__file__).resolve().parents[1]
QWEN_CONFIG = json.loads((ROOT / "tests" / "fixtures" / "hf_configs" / "Qwen2.5-7B-Instruct.json").read_text())
EXAMPLES = int(os.environ.get("QWENDEPLOY_FUZZ_EXAMPLES", "0"))
MAX_RSS_BYTES = 2 << 30
runner = CliRunner()


def _budget(n: int, deadline_ms: int = 3000) -> Any:
    return settings(
        max_examples=EXAMPLES or n,
        deadline=deadline_ms,
        derandomize=not EXAMPLES,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )


def _rss_bounded() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert peak < MAX_RSS_BYTES, f"peak RSS {peak / 2**20:.0f} MiB"


def _user_error(e: QwendeployError) -> None:
    assert e.exit_code == 2, e
    assert e.message and len(e.message) < 2000 and "Traceback" not in e.message


# ------------------------------------------------------------------------------------------ values

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "../../x", "/abs", "a\nb", "A=B", "$(touch x)", "0", "GPU-1", "1e400", "-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)

BASE_PROFILE: dict[str, Any] = {
    "version": 1,
    "name": "t",
    "model": {"id": "m", "max_model_len": 4096, "hf_overrides": None},
    "placement": {"tensor_parallel_size": 1, "gpus": []},
    "engine": {"gpu_memory_utilization": 0.9, "extra_args": []},
    "server": {"host": "127.0.0.1", "port": 8000, "api_key_env": None, "shutdown_grace_s": 30.0},
    "restart": {"backoff_initial_s": 2.0, "backoff_max_s": 60.0},
    "env": {},
}
PATHS = [(k,) for k in BASE_PROFILE] + [(k, f) for k, v in BASE_PROFILE.items() if isinstance(v, dict) for f in v]
YAML_SNIPPETS = [
    "a: &a [x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n",
    "x: !!set {a, b}\n",
    "x: !!binary aGVsbG8=\n",
    "x: 2024-01-01T00:00:00Z\n",
    "x: !!python/object/apply:os.system ['true']\n",
    "x: &r [*r]\n",
    "x: .nan\n",
    "x: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    "? [a, b]\n: c\n",
    "x: 1e400\n",
]


def _mutate(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    here = out
    for part in path[:-1]:
        if not isinstance(here.get(part), dict):  # an earlier mutation replaced the section
            here[part] = {}
        here = here[part]
    here[path[-1]] = value
    return out


def _profile_text(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=300))
    if kind == 1:
        snippet = draw(st.sampled_from(YAML_SNIPPETS))
        return yaml.safe_dump(BASE_PROFILE) + snippet.replace("x:", draw(st.sampled_from(["env:", "name:", "zz:"])))
    doc = BASE_PROFILE
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate(doc, draw(st.sampled_from(PATHS)), draw(values))
    try:
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    except yaml.YAMLError:
        return json.dumps(doc, default=str)


profile_texts = st.composite(_profile_text)()


@_budget(250, deadline_ms=2000)
@given(text=profile_texts)
def test_profile_loader_validates_or_refuses(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "p.yaml"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            prof = read_profile(p)
        except QwendeployError as e:
            _user_error(e)
            return
        # a profile that loads also renders: the launch specs and the printed command
        try:
            for spec in build_launch_specs(prof, vllm_bin="vllm", base_env={"PATH": "/bin"}):
                rendered = render_spec(spec)
                assert "\x00" not in rendered["command"]
        except QwendeployError as e:
            _user_error(e)
    _rss_bounded()


# ------------------------------------------------------------------------------------------ config.json

CONFIG_KEYS = [*sorted(QWEN_CONFIG), "text_config", "quantization_config", "rope_scaling", "num_experts"]


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    cfg = dict(QWEN_CONFIG)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(CONFIG_KEYS))
        if draw(st.booleans()):
            cfg.pop(key, None)
        else:
            cfg[key] = draw(values)
    text = json.dumps(cfg)  # writes NaN/Infinity for non-finite floats, as a hostile file would
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from(["[" * 5000 + "]" * 5000, '{"a": NaN}', "", "null", text[: len(text) // 2]]))
    return text


@_budget(60, deadline_ms=4000)
@given(text=config_texts())
def test_config_reader_parses_or_refuses(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            spec = load_local_dir(Path(d))
        except QwendeployError as e:
            _user_error(e)
            return
        assert spec.num_hidden_layers >= 1 and math.isfinite(spec.hidden_size)
        # and the planner takes what the reader accepted: plan it on one simulated GPU
        r = runner.invoke(app, ["plan", d, "--gpus", "1xH100-80GB", "--context", "4096", "--json"])
        _cli_ok(r)
    _rss_bounded()


# ------------------------------------------------------------------------------------------ CLI flags


def _cli_ok(r: Any) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in (0, 1, 2), (r.exit_code, r.output)
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        assert r.output.count("Error:") + r.output.count("Usage:") == 1, r.output


flag_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0", "-1", "1e400", "nan", "inf", "99999999999999999999", "128K", "auto", "", "../x", "a b"]),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
)
PLAN_FLAGS = [
    "--nodes",
    "--context",
    "--concurrency",
    "--tp",
    "--pp",
    "--dp",
    "--gpu-memory-utilization",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--kv-cache-dtype",
    "--dtype",
    "--name",
    "--host",
    "--port",
    "--gpus",
    "--network",
    "--ifname",
    "--head-address",
    "--objective",
    "--revision",
    "--quantization",
    "--vllm-version",
]


@_budget(80, deadline_ms=5000)
@given(flags=st.lists(st.tuples(st.sampled_from(PLAN_FLAGS), flag_text), min_size=1, max_size=3))
def test_plan_flags_succeed_or_refuse(flags: list[tuple[str, str]]) -> None:
    args = ["plan", "Qwen/Qwen2.5-0.5B-Instruct", "--gpus", "2xL4", "--json"]
    for flag, value in flags:
        args += [flag, value]
    with tempfile.TemporaryDirectory() as d:
        r = runner.invoke(app, [*args, "-o", str(Path(d) / "p.yaml")])
    _cli_ok(r)
    _rss_bounded()


@_budget(60, deadline_ms=3000)
@given(
    port=flag_text,
    host=flag_text,
    runtime=st.sampled_from(["native", "docker"]),
    doc=st.sampled_from([BASE_PROFILE, {**BASE_PROFILE, "env": {"NCCL_DEBUG": "INFO", "HF_TOKEN": "x y"}}]),
)
def test_serve_dry_run_flags_succeed_or_refuse(port: str, host: str, runtime: str, doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "p.yaml"
        p.write_text(yaml.safe_dump(doc))
        r = runner.invoke(app, ["serve", str(p), "--dry-run", "--port", port, "--host", host, "--runtime", runtime])
    _cli_ok(r)
    if r.exit_code == 0:
        assert "\x00" not in r.output


@pytest.mark.parametrize("snippet", YAML_SNIPPETS)
def test_each_yaml_attack_is_refused_with_one_message(snippet: str, tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(BASE_PROFILE) + snippet.replace("x:", "env:"))
    r = runner.invoke(app, ["serve", str(p), "--dry-run"])
    _cli_ok(r)
    assert r.exit_code == 2
