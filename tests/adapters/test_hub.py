"""Resolving MODEL: catalog, local directory (safetensors headers only) and the Hugging Face cache."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from qwendeploy.adapters.hub import bytes_by_dtype, load_model, read_safetensors_header
from qwendeploy.errors import BadInput, UnknownModel


def _model_dir(tmp_path: Path, fixtures: Path, config: str = "Qwen2.5-7B-Instruct") -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(fixtures / "hf_configs" / f"{config}.json", folder / "config.json")
    return folder


def _write_bf16_by_hand(path: Path, n_elements: int) -> None:
    """A safetensors file with one BF16 tensor, written byte by byte (numpy has no bfloat16)."""
    tensor = {"dtype": "BF16", "shape": [n_elements], "data_offsets": [0, 2 * n_elements]}
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": tensor}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (2 * n_elements))


def test_catalog_model_resolves_without_importing_huggingface_hub() -> None:
    code = (
        "import sys; from qwendeploy.adapters.hub import load_model; "
        "s = load_model('qwen2.5-7b-instruct'); "
        "print(s.id, s.source, 'huggingface_hub' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["Qwen/Qwen2.5-7B-Instruct", "catalog", "False"]


def test_local_dir_reads_safetensors_headers(tmp_path: Path, fixtures: Path) -> None:
    folder = _model_dir(tmp_path, fixtures)
    tensors = {"a": np.zeros((4, 8), dtype=np.float16), "b": np.zeros(3, dtype=np.int32)}
    save_file(tensors, str(folder / "model.safetensors"))
    spec = load_model(str(folder))
    assert spec.source == f"local:{folder.resolve()}"
    assert spec.id == str(folder.resolve())
    assert spec.weight_bytes_by_dtype == {"F16": 64, "I32": 12}
    assert spec.weight_bytes == 76
    # Same shape as two catalog models (Qwen2.5-7B-Instruct, Coder-7B-Instruct) that agree on these facts.
    assert spec.published_params == 7_610_000_000
    assert spec.yarn_factor == 4.0 and spec.max_context_with_yarn == 131072


def test_local_dir_with_sharded_index(tmp_path: Path, fixtures: Path) -> None:
    folder = _model_dir(tmp_path, fixtures, "Qwen3-8B")
    _write_bf16_by_hand(folder / "model-00001-of-00002.safetensors", 10)
    save_file({"s": np.zeros(5, dtype=np.float32)}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "stray.safetensors").write_bytes(b"not listed in the index, so never opened")
    index = {
        "metadata": {"total_size": 40},
        "weight_map": {"w": "model-00001-of-00002.safetensors", "s": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    spec = load_model(str(folder))
    assert spec.weight_bytes_by_dtype == {"BF16": 20, "F32": 20}
    assert spec.qk_norm and spec.head_dim == 128
    assert spec.yarn_original_max_position_embeddings == 32768


def test_index_naming_a_missing_shard_leaves_weights_unknown(tmp_path: Path, fixtures: Path) -> None:
    folder = _model_dir(tmp_path, fixtures)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "missing.safetensors"}}))
    spec = load_model(str(folder))
    assert spec.weight_bytes is None and spec.weight_bytes_by_dtype == {}


def test_header_is_read_without_the_data(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    _write_bf16_by_hand(path, 1000)
    header = read_safetensors_header(path)
    assert header["w"]["dtype"] == "BF16"
    assert bytes_by_dtype([header]) == {"BF16": 2000}


@pytest.mark.parametrize(
    "content",
    [b"", b"\x05\x00", struct.pack("<Q", 50) + b"{}", struct.pack("<Q", 4) + b"nope", struct.pack("<Q", 1 << 40)],
)
def test_broken_safetensors_is_bad_input(tmp_path: Path, fixtures: Path, content: bytes) -> None:
    folder = _model_dir(tmp_path, fixtures)
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(BadInput, match="safetensors"):
        load_model(str(folder))


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_config_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        load_model(str(tmp_path))


def test_config_missing_a_field_names_it(tmp_path: Path, fixtures: Path) -> None:
    folder = _model_dir(tmp_path, fixtures)
    config = json.loads((folder / "config.json").read_text())
    del config["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInput, match="'num_hidden_layers'"):
        load_model(str(folder))


def _fake_cache(hf_home: Path, repo: str, config: Path, sha: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The layout huggingface_hub writes: hub/models--Org--Name/{refs/main, snapshots/<sha>/config.json}."""
    repo_dir = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    shutil.copy(config, snapshot / "config.json")
    return snapshot


def test_offline_hub_repo_from_the_cache(tmp_path: Path, fixtures: Path) -> None:
    config = fixtures / "hf_configs" / "Qwen3-30B-A3B.json"
    snapshot = _fake_cache(tmp_path / "hf-home", "SomeOrg/Qwen3-30B-A3B-finetune", config)
    save_file({"x": np.zeros(16, dtype=np.float16)}, str(snapshot / "model.safetensors"))
    spec = load_model("SomeOrg/Qwen3-30B-A3B-finetune")
    assert spec.source == "hub:SomeOrg/Qwen3-30B-A3B-finetune"
    assert spec.moe is not None and spec.moe.num_experts == 128
    assert spec.published_params == 30_500_000_000  # shaped like the catalog's Qwen3-30B-A3B
    assert spec.weight_bytes_by_dtype == {"F16": 32}


def test_offline_hub_repo_at_a_pinned_revision(tmp_path: Path, fixtures: Path) -> None:
    sha = "fedcba9876543210fedcba9876543210fedcba98"
    _fake_cache(tmp_path / "hf-home", "SomeOrg/Tiny", fixtures / "hf_configs" / "Qwen3-8B-FP8.json", sha=sha)
    spec = load_model("SomeOrg/Tiny", revision=sha)
    assert spec.quantization is not None and spec.quantization.method == "fp8"
    assert spec.weight_bytes is None


def test_offline_and_not_cached_explains_hf_hub_offline() -> None:
    with pytest.raises(UnknownModel) as info:
        load_model("Qwen/Qwen2.5-7B-Instruct-Math")
    assert "HF_HUB_OFFLINE" in info.value.message
    assert "Did you mean Qwen/Qwen2.5-7B-Instruct" in info.value.message
    assert info.value.hint is not None and "HF_HUB_OFFLINE" in info.value.hint


def test_unknown_name_suggests_catalog_models() -> None:
    with pytest.raises(UnknownModel) as info:
        load_model("qwen2.5-7b-instrct")
    assert "Qwen/Qwen2.5-7B-Instruct" in info.value.message
    assert info.value.exit_code == 2


def test_missing_path_and_plain_file(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="not a directory"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UnknownModel, match="is a file"):
        load_model(str(tmp_path / "f.txt"))


@pytest.mark.parametrize("typo", ["Qwen/Qwen2.5-7B-Instrct", "qwen/qwen2.5-7b-instrukt", "Qwen/Qwen2.5-7B-Instructt"])
def test_a_one_letter_typo_of_a_catalog_id_is_answered_at_once(typo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Online, the Hub's retries took tens of seconds before "did you mean"; a one-letter slip never reaches it.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail fast anyway; the typo path never calls it
    with pytest.raises(UnknownModel, match=r"Did you mean Qwen/Qwen2\.5-7B-Instruct\?"):
        load_model(typo)


@pytest.mark.parametrize("real", ["Qwen/Qwen2-7B-Instruct", "Qwen/Qwen1.5-7B", "Qwen/Qwen2.5-7B-Instruct-1M"])
def test_real_repos_near_catalog_ids_are_not_taken_for_typos(real: str) -> None:
    from qwendeploy.adapters.hub import _near_catalog_typo

    assert _near_catalog_typo(real) is None
