"""The model catalog and config.json parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwendeploy.core.models import (
    ModelCatalogError,
    ModelSpec,
    catalog,
    find_model,
    parse_count,
    parse_model_catalog,
    spec_from_hf_config,
    suggest_models,
)
from qwendeploy.errors import BadInput

REQUIRED_IDS = [
    *(f"Qwen/Qwen2.5-{s}{v}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B") for v in ("", "-Instruct")),
    "Qwen/Qwen2.5-Coder-7B-Instruct",
    "Qwen/Qwen2.5-Coder-32B-Instruct",
    "Qwen/QwQ-32B",
    *(f"Qwen/Qwen3-{s}" for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B", "30B-A3B", "235B-A22B")),
    *(
        f"Qwen/Qwen2.5-{s}-Instruct-{q}"
        for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
        for q in ("AWQ", "GPTQ-Int4", "GPTQ-Int8")
    ),
    *(f"Qwen/Qwen3-{s}-FP8" for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B", "30B-A3B", "235B-A22B")),
]


def load(fixtures: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures / "hf_configs" / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize("model_id", REQUIRED_IDS)
def test_catalog_has_every_required_model(model_id: str) -> None:
    spec = find_model(model_id)
    assert spec is not None, model_id
    assert spec.id == model_id


def test_catalog_ids_and_aliases_are_unique() -> None:
    ids = [s.id.lower() for s in catalog()]
    assert len(ids) == len(set(ids))
    owners: dict[str, str] = {}
    for spec in catalog():
        for alias in spec.aliases:
            assert alias == alias.lower()
            assert owners.setdefault(alias, spec.id) == spec.id, f"alias {alias} used twice"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("qwen/qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("  Qwen2.5-7B-Instruct ", "Qwen/Qwen2.5-7B-Instruct"),
        ("qwen3-30b-a3b-fp8", "Qwen/Qwen3-30B-A3B-FP8"),
        ("qwq", "Qwen/QwQ-32B"),
    ],
)
def test_find_model_by_id_or_alias(ref: str, expected: str) -> None:
    spec = find_model(ref)
    assert spec is not None
    assert spec.id == expected


def test_find_model_unknown_is_none_and_suggestions_are_close() -> None:
    assert find_model("Qwen/Qwen2.5-7B-Instrct") is None
    assert suggest_models("Qwen/Qwen2.5-7B-Instrct")[0] == "Qwen/Qwen2.5-7B-Instruct"
    assert "Qwen/Qwen3-8B" in suggest_models("qwen3-8")
    assert suggest_models("completely-different-thing") == []


def test_catalog_matches_the_verified_config_fixtures(fixtures: Path) -> None:
    for name in ("Qwen2.5-7B-Instruct", "Qwen2.5-72B-Instruct", "Qwen3-8B", "Qwen3-30B-A3B"):
        from_file = spec_from_hf_config(load(fixtures, name), id=f"Qwen/{name}", source="test")
        entry = find_model(f"Qwen/{name}")
        assert entry is not None
        for field in (
            "architecture",
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "tie_word_embeddings",
            "max_position_embeddings",
            "rope_theta",
            "attention_bias",
            "qk_norm",
            "moe",
        ):
            assert getattr(from_file, field) == getattr(entry, field), (name, field)


def test_qwen25_7b_instruct_fields(fixtures: Path) -> None:
    spec = spec_from_hf_config(load(fixtures, "Qwen2.5-7B-Instruct"), id="x", source="test")
    shape = (spec.num_hidden_layers, spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim)
    assert shape == (28, 28, 4, 128)
    assert spec.attention_bias and not spec.qk_norm
    assert spec.rope_scaling is None and spec.yarn_factor is None
    assert spec.quantization is None and spec.moe is None


def test_qwen3_head_dim_is_explicit_not_hidden_over_heads() -> None:
    spec = find_model("Qwen/Qwen3-4B")
    assert spec is not None
    assert spec.head_dim == 128 and spec.hidden_size // spec.num_attention_heads == 80
    assert spec.qk_norm and not spec.attention_bias


def test_moe_fields(fixtures: Path) -> None:
    spec = spec_from_hf_config(load(fixtures, "Qwen3-30B-A3B"), id="x", source="test")
    assert spec.moe is not None
    assert (spec.moe.num_experts, spec.moe.num_experts_per_tok, spec.moe.moe_intermediate_size) == (128, 8, 768)
    assert spec.moe.shared_expert_intermediate_size == 0 and spec.moe.mlp_only_layers == ()


def test_awq_and_fp8_quantization_config(fixtures: Path) -> None:
    awq = spec_from_hf_config(load(fixtures, "Qwen2.5-7B-Instruct-AWQ"), id="x", source="test")
    assert awq.quantization is not None
    assert (awq.quantization.method, awq.quantization.bits, awq.quantization.group_size) == ("awq", 4, 128)
    assert awq.quantization.zero_point and awq.torch_dtype == "float16"
    fp8 = spec_from_hf_config(load(fixtures, "Qwen3-8B-FP8"), id="x", source="test")
    assert fp8.quantization is not None
    assert (fp8.quantization.method, fp8.quantization.bits, fp8.quantization.block_size) == ("fp8", 8, (128, 128))
    assert fp8.quantization.activation_scheme == "dynamic"


def test_gptq_and_compressed_tensors() -> None:
    base = dict(find_model_config("Qwen/Qwen2.5-7B-Instruct"))
    gptq = spec_from_hf_config(
        {**base, "quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 128, "desc_act": True}},
        id="x",
        source="test",
    )
    assert gptq.quantization is not None
    assert (gptq.quantization.method, gptq.quantization.bits, gptq.quantization.desc_act) == ("gptq", 8, True)
    ct = spec_from_hf_config(
        {
            **base,
            "quantization_config": {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "group_0": {
                        "weights": {"num_bits": 4, "group_size": 128, "symmetric": True, "type": "int"},
                        "input_activations": None,
                        "targets": ["Linear"],
                    }
                },
            },
        },
        id="x",
        source="test",
    )
    assert ct.quantization is not None
    assert (ct.quantization.method, ct.quantization.bits, ct.quantization.group_size) == ("compressed-tensors", 4, 128)


def find_model_config(model_id: str) -> dict[str, Any]:
    """The raw config of a catalog entry (with its `from` parent merged), from the package's YAML."""
    from importlib import resources

    doc = yaml.safe_load(resources.files("qwendeploy").joinpath("data/models.yaml").read_text())
    raw = {e["id"]: e for e in doc["models"]}
    entry = raw[model_id]
    config: dict[str, Any] = dict(entry.get("config", {}))
    while "from" in entry:
        entry = raw[entry["from"]]
        config = {**entry.get("config", {}), **config}
    return config


def test_text_config_nesting_and_transformers5_keys() -> None:
    inner = find_model_config("Qwen/Qwen3-8B")
    inner.pop("rope_theta")
    inner.pop("torch_dtype")
    inner["dtype"] = "bfloat16"
    inner["rope_parameters"] = {"rope_theta": 5_000_000.0, "rope_type": "default"}
    outer = {"architectures": ["Qwen3ForCausalLM"], "model_type": "wrapper", "text_config": inner}
    spec = spec_from_hf_config(outer, id="x", source="test")
    assert spec.num_hidden_layers == 36 and spec.head_dim == 128
    assert spec.rope_theta == 5_000_000.0 and spec.rope_scaling is None
    assert spec.torch_dtype == "bfloat16"


def test_rope_parameters_with_yarn_sets_the_yarn_window() -> None:
    config = find_model_config("Qwen/Qwen3-8B")
    config["rope_parameters"] = {
        "rope_theta": 1000000,
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
    }
    config.pop("rope_scaling")
    spec = spec_from_hf_config(config, id="x", source="test")
    assert spec.yarn_factor == 4.0
    assert spec.max_context_with_yarn == 131072


def test_yarn_window_of_catalog_models() -> None:
    qwen25 = find_model("Qwen/Qwen2.5-7B-Instruct")
    qwen3 = find_model("Qwen/Qwen3-8B")
    small = find_model("Qwen/Qwen2.5-3B-Instruct")
    base = find_model("Qwen/Qwen2.5-7B")
    assert qwen25 is not None and qwen3 is not None and small is not None and base is not None
    assert (qwen25.max_position_embeddings, qwen25.max_context_with_yarn) == (32768, 131072)
    # Qwen3's config says 40960, but YaRN scales the pretrained 32768 window.
    assert (qwen3.max_position_embeddings, qwen3.max_context_with_yarn) == (40960, 131072)
    assert qwen3.yarn_rope_parameters() == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
    }
    assert small.yarn_factor is None and small.max_context_with_yarn == 32768
    assert base.yarn_factor is None and base.max_context_with_yarn == 131072


def test_padded_72b_quantized_intermediate_size() -> None:
    for suffix in ("AWQ", "GPTQ-Int4", "GPTQ-Int8"):
        spec = find_model(f"Qwen/Qwen2.5-72B-Instruct-{suffix}")
        assert spec is not None
        assert spec.intermediate_size == 29696
        assert spec.base_model == "Qwen/Qwen2.5-72B-Instruct"
    unquantized = find_model("Qwen/Qwen2.5-72B-Instruct")
    assert unquantized is not None and unquantized.intermediate_size == 29568


def test_a_llama_shaped_config_parses() -> None:
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    spec = spec_from_hf_config(llama, id="meta-llama/Meta-Llama-3-8B", source="test")
    assert spec.head_dim == 128 and not spec.attention_bias and not spec.qk_norm


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_hidden_layers": None}, "num_hidden_layers"),
        ({"hidden_size": "big"}, "hidden_size"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"vocab_size": 1.5}, "vocab_size"),
        ({"max_position_embeddings": True}, "max_position_embeddings"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
        ({"torch_dtype": "int8"}, "torch_dtype"),
        ({"rope_scaling": [4.0]}, "rope_scaling"),
        ({"quantization_config": {"bits": 4}}, "quantization_config.quant_method"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantization_config.bits"),
        ({"architectures": [], "model_type": "unknown"}, "architectures"),
    ],
)
def test_bad_config_names_the_field(change: dict[str, Any], field: str) -> None:
    config = {**find_model_config("Qwen/Qwen2.5-7B-Instruct"), **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(BadInput) as info:
        spec_from_hf_config(config, id="my/model", source="test")
    assert repr(field) in info.value.message
    assert "my/model" in info.value.message


def test_missing_head_dim_needs_divisible_hidden() -> None:
    config = {**find_model_config("Qwen/Qwen2.5-7B-Instruct"), "hidden_size": 3585}
    with pytest.raises(BadInput, match="head_dim"):
        spec_from_hf_config(config, id="x", source="test")


def test_parse_count() -> None:
    assert parse_count("7.61B") == 7_610_000_000
    assert parse_count("494M") == 494_000_000
    assert parse_count(12) == 12
    with pytest.raises(ValueError):
        parse_count("lots")


def test_catalog_specs_are_frozen_values() -> None:
    spec = catalog()[0]
    assert isinstance(spec, ModelSpec)
    with pytest.raises(AttributeError):
        spec.hidden_size = 1  # type: ignore[misc]
    assert catalog() is catalog()


SMALL_CATALOG = """
schema_version: 1
models:
  - id: Org/Base-7B
    published_params: 7.61B
    yarn_factor: 4.0
    config:
      architectures: [Qwen2ForCausalLM]
      model_type: qwen2
      hidden_size: 3584
      intermediate_size: 18944
      num_hidden_layers: 28
      num_attention_heads: 28
      num_key_value_heads: 4
      vocab_size: 152064
      max_position_embeddings: 32768
  - id: Org/Base-7B-AWQ
    from: Org/Base-7B
    yarn_factor: null
    aliases: [b7q]
    config:
      quantization_config: {quant_method: awq, bits: 4, group_size: 128}
"""


def test_a_catalog_entry_inherits_from_an_earlier_one() -> None:
    base, awq = parse_model_catalog(SMALL_CATALOG)
    assert (awq.hidden_size, awq.published_params, awq.base_model) == (3584, 7_610_000_000, "Org/Base-7B")
    assert awq.quantization is not None and awq.quantization.bits == 4
    assert (base.yarn_factor, awq.yarn_factor) == (4.0, None)  # an explicit null drops the inherited factor
    assert awq.aliases == ("base-7b-awq", "b7q")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("published_params: 7.61B", "published_params: lots", r"models\.0 \(id 'Org/Base-7B'\)\.published_params"),
        ("    aliases: [b7q]", "    colour: red", r"models\.1 \(id 'Org/Base-7B-AWQ'\)\.colour: Extra inputs"),
        ("from: Org/Base-7B", "from: Org/Later", r"entry 'Org/Base-7B-AWQ'\.from: 'Org/Later' is not an earlier"),
        ("  - id: Org/Base-7B-AWQ", "  - id: org/base-7b", r"entry 'org/base-7b': id used twice"),
        ("aliases: [b7q]", "aliases: [base-7b]", r"entry 'Org/Base-7B-AWQ'\.aliases: 'base-7b' already names"),
        ("yarn_factor: 4.0", "yarn_factor: [4]", r"models\.0 \(id 'Org/Base-7B'\)\.yarn_factor"),
        ("schema_version: 1", "schema_version: 2", r"schema_version"),
        ("      hidden_size: 3584", "      hidden_size: big", r"entry 'Org/Base-7B': .*field 'hidden_size'"),
        ("128}\n", "128}\n  - id: Org/Empty\n", r"models\.2 \(id 'Org/Empty'\): .*config is required"),
    ],
    ids=["count", "unknown-key", "from-later", "dup-id", "dup-alias", "type", "schema", "config", "no-config"],
)
def test_a_broken_catalog_names_the_entry_and_the_field(old: str, new: str, message: str) -> None:
    assert old in SMALL_CATALOG
    with pytest.raises(ModelCatalogError, match=message):
        parse_model_catalog(SMALL_CATALOG.replace(old, new, 1))


def test_the_catalog_schema_is_built_on_first_read_not_at_import() -> None:
    """Code that needs ModelSpec only (doctor, serve) does not build models.yaml's pydantic schema."""
    import subprocess
    import sys

    code = (
        "import sys; import qwendeploy.core.models as m\n"
        "before = 'qwendeploy.core.models.entries' in sys.modules\n"
        "m.find_model('qwen3-8b')\n"
        "print(before, 'qwendeploy.core.models.entries' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.split() == ["False", "True"]
