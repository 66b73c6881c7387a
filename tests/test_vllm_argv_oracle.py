"""Optional: vLLM's own parser and engine-config check accept the argv `serve` generates.

Runs ../shared/tools/vllm_oracle.py beside the checkout (or $QWENDEPLOY_VLLM_ORACLE) with the python named by
$QWENDEPLOY_VLLM_PYTHON (a venv with vLLM installed; CPU is enough). Skipped when that variable is unset and
in CI. $QWENDEPLOY_VLLM_ORACLE_PLATFORM picks the oracle's platform (cpu by default). For each model a
directory holding only config.json is made: from tests/fixtures/hf_configs when there is one, else from the
built-in catalog's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qwendeploy.adapters.profile_files import read_profile
from qwendeploy.core.models import find_model
from qwendeploy.core.profile import EngineSection, ModelSection, PlacementSection, Profile, ServerSection
from qwendeploy.core.vllm_args import build_launch_specs
from tests.shared_paths import SHARED

ROOT = Path(__file__).resolve().parent.parent
PY = os.environ.get("QWENDEPLOY_VLLM_PYTHON")
ORACLE = Path(os.environ.get("QWENDEPLOY_VLLM_ORACLE", str(SHARED / "tools" / "vllm_oracle.py")))
PLATFORM = os.environ.get("QWENDEPLOY_VLLM_ORACLE_PLATFORM", "cpu")
"""cpu by default: the oracle's sim-cuda platform needs vLLM's CUDA flash-attention extensions to import."""

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not PY or bool(os.environ.get("CI")), reason="set QWENDEPLOY_VLLM_PYTHON (not in CI)"),
    pytest.mark.skipif(not ORACLE.exists(), reason="vllm_oracle.py not found"),
]

YARN = {
    "rope_parameters": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
    },
    "max_position_embeddings": 131072,
}


def _config(model_id: str) -> dict[str, Any]:
    fixture = ROOT / "tests" / "fixtures" / "hf_configs" / (model_id.rsplit("/", 1)[-1] + ".json")
    if fixture.exists():
        return dict(json.loads(fixture.read_text()))
    s = find_model(model_id)
    assert s is not None, model_id
    cfg: dict[str, Any] = {
        "architectures": [s.architecture],
        "model_type": s.model_type,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "num_hidden_layers": s.num_hidden_layers,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_position_embeddings,
        "rope_theta": s.rope_theta,
        "rms_norm_eps": s.rms_norm_eps,
        "tie_word_embeddings": s.tie_word_embeddings,
        "torch_dtype": s.torch_dtype,
        "hidden_act": "silu",
        "use_sliding_window": False,
    }
    if s.moe is not None:
        cfg.update(
            num_experts=s.moe.num_experts,
            num_experts_per_tok=s.moe.num_experts_per_tok,
            moe_intermediate_size=s.moe.moe_intermediate_size,
        )
    return cfg


def _oracle(profile: Profile, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(_config(profile.model.id)))
    env = {"QK": "sk-oracle"}
    spec = build_launch_specs(profile, vllm_bin="vllm", base_env=env)[0]
    assert PY is not None
    run_env = {**os.environ, **spec.env_set, "HF_HUB_OFFLINE": "1"}
    cmd = [PY, str(ORACLE), "--platform", PLATFORM, "--model-dir", str(model_dir)]
    res = subprocess.run(
        [*cmd, "--argv-json", json.dumps(list(spec.argv))],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env,
    )
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        doc = {"stdout": res.stdout[-2000:], "stderr": res.stderr[-2000:]}
    return res.returncode, doc


def _representative() -> dict[str, Profile]:
    m7 = "Qwen/Qwen2.5-7B-Instruct"
    return {
        "tp4": Profile(model=ModelSection(id=m7), placement=PlacementSection(tensor_parallel_size=4)),
        "tp2-dp2-vllm": Profile(
            model=ModelSection(id=m7),
            placement=PlacementSection(tensor_parallel_size=2, data_parallel_size=2, data_parallel_mode="vllm"),
        ),
        "fp8-kv-eager": Profile(
            model=ModelSection(id=m7),
            engine=EngineSection(kv_cache_dtype="fp8", enforce_eager=True, enable_prefix_caching=False),
        ),
        "yarn-128k": Profile(
            model=ModelSection(id=m7, max_model_len=131072, hf_overrides=YARN),
            placement=PlacementSection(tensor_parallel_size=2),
        ),
        "api-key-host": Profile(model=ModelSection(id=m7), server=ServerSection(host="0.0.0.0", api_key_env="QK")),
        "all-engine-flags": Profile(
            model=ModelSection(id=m7, dtype="bfloat16"),
            placement=PlacementSection(tensor_parallel_size=2, pipeline_parallel_size=2),
            engine=EngineSection(
                max_num_seqs=64,
                max_num_batched_tokens=4096,
                block_size=32,
                disable_custom_all_reduce=True,
                enable_prefix_caching=True,
                gpu_memory_utilization=0.85,
            ),
        ),
    }


CURATED = sorted((ROOT / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", CURATED, ids=[p.stem for p in CURATED])
def test_curated_profile_argv_accepted_by_vllm(path: Path, tmp_path: Path) -> None:
    code, doc = _oracle(read_profile(path), tmp_path)
    assert code == 0, json.dumps(doc, indent=2)[:3000]


@pytest.mark.parametrize("name", sorted(_representative()))
def test_representative_argv_accepted_by_vllm(name: str, tmp_path: Path) -> None:
    code, doc = _oracle(_representative()[name], tmp_path)
    assert code == 0, json.dumps(doc, indent=2)[:3000]


def test_yarn_override_gives_128k(tmp_path: Path) -> None:
    code, doc = _oracle(_representative()["yarn-128k"], tmp_path)
    assert code == 0
    assert doc["model"]["max_model_len"] == 131072


_KEY_FROM_ENV = (
    "import inspect, vllm.envs as envs; from vllm.entrypoints.serve.middleware import register; "
    "print(envs.VLLM_API_KEY); print('envs.VLLM_API_KEY' in inspect.getsource(register))"
)


def test_api_key_reaches_vllm_through_vllm_api_key(tmp_path: Path) -> None:
    """serve keeps the key off argv (`ps`); vLLM must take it from VLLM_API_KEY when --api-key is absent."""
    (spec,) = build_launch_specs(
        _representative()["api-key-host"], vllm_bin="vllm", base_env={"QK": "sk-oracle-key", "PATH": "/usr/bin"}
    )
    assert "--api-key" not in spec.argv and "sk-oracle-key" not in " ".join(spec.argv)
    assert PY is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["VLLM_API_KEY"] = spec.env["VLLM_API_KEY"]
    r = subprocess.run([PY, "-c", _KEY_FROM_ENV], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == ["sk-oracle-key", "True"]
