from __future__ import annotations

import pytest

from qwendeploy.core.profile import ModelSection, PlacementSection, Profile, dump_yaml, load_yaml
from qwendeploy.errors import ProfileInvalid


def _profile() -> Profile:
    return Profile(
        name="q7",
        model=ModelSection(id="Qwen/Qwen2.5-7B-Instruct", max_model_len=131072),
        placement=PlacementSection(tensor_parallel_size=2, data_parallel_size=2, gpus=["0", "1", "2", "3"]),
    )


def test_round_trip_is_identity() -> None:
    p = _profile()
    assert load_yaml(dump_yaml(p, header="qwendeploy plan x")) == p


def test_unknown_key_names_path_and_suggests() -> None:
    text = dump_yaml(_profile()).replace("tensor_parallel_size", "tensor_paralel_size")
    with pytest.raises(ProfileInvalid) as e:
        load_yaml(text, source="p.yaml")
    assert "placement.tensor_paralel_size" in str(e.value)
    assert "Did you mean 'placement.tensor_parallel_size'" in str(e.value)


@pytest.mark.parametrize(
    "bad, expect",
    [
        ("version: 1\nmodel: {id: x}\nplacement: {tensor_parallel_size: 0}\n", "placement.tensor_parallel_size"),
        ("version: 2\nmodel: {id: x}\n", "version 2"),
        ("- a\n- b\n", "mapping"),
        ("version: 1\nmodel: {id: x}\nserver: {api_key_env: 'sk-abc 123'}\n", "server.api_key_env"),
        ("version: 1\nmodel: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_profiles_are_rejected_with_the_field(bad: str, expect: str) -> None:
    with pytest.raises(ProfileInvalid, match=expect.replace(".", r"\.")):
        load_yaml(bad)


def test_safe_load_refuses_python_tags() -> None:
    with pytest.raises(ProfileInvalid):
        load_yaml("version: 1\nmodel: !!python/object/apply:os.system ['true']\n")


def test_defaults_bind_loopback() -> None:
    assert Profile(model=ModelSection(id="x")).server.host == "127.0.0.1"


def test_every_field_in_the_schema_is_described_by_its_docstring() -> None:
    """The descriptions the JSON Schema and docs/reference/profile.md show are the fields' docstrings, read when the
    schema is asked for (not at import)."""
    from qwendeploy.core.profile import json_schema

    schema = json_schema()
    sections = [("Profile", schema), *schema["$defs"].items()]
    assert len(sections) >= 10
    undescribed = [f"{m}.{n}" for m, s in sections for n, p in s["properties"].items() if not p.get("description")]
    assert undescribed == []
    assert schema["properties"]["model"] == {"$ref": "#/$defs/ModelSection", "description": "What to serve."}
    port = schema["$defs"]["ServerSection"]["properties"]["port"]
    assert list(port) == sorted(port) and port["description"].startswith("TCP port → --port")


def test_field_docstrings_are_read_as_pydantic_reads_them() -> None:
    """pydantic's own reader (what ``use_attribute_docstrings`` runs at class creation) is the oracle."""
    extraction = pytest.importorskip("pydantic._internal._docs_extraction")
    from pydantic import BaseModel

    import qwendeploy.core.profile as module
    from qwendeploy.core.profile import field_docstrings

    ours = field_docstrings()
    models = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, BaseModel) and c.__module__ == module.__name__
    ]
    assert len(models) >= 10
    for cls in models:
        assert ours.get(cls.__name__, {}) == extraction.extract_docstrings_from_cls(cls, use_inspect=True), cls.__name__
