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
