from __future__ import annotations

from pathlib import Path

import pytest

from qwendeploy.adapters.profile_files import read_profile, write_profile
from qwendeploy.core.profile import ModelSection, Profile
from qwendeploy.errors import BadInput, ProfileExists


def test_write_refuses_overwrite_and_keeps_old_content(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write_profile(path, Profile(model=ModelSection(id="a")))
    with pytest.raises(ProfileExists):
        write_profile(path, Profile(model=ModelSection(id="b")))
    assert read_profile(path).model.id == "a"
    write_profile(path, Profile(model=ModelSection(id="b")), force=True)
    assert read_profile(path).model.id == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]  # no temp files left behind


def test_missing_profile_and_directory_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        read_profile(tmp_path / "nope.yaml")
    with pytest.raises(BadInput, match="directory"):
        write_profile(tmp_path / "no" / "p.yaml", Profile(model=ModelSection(id="a")))
