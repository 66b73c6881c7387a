from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qwendeploy.adapters.profile_files import check_target, read_profile, write_profile
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


def test_directories_and_special_files_are_never_replaced(tmp_path: Path) -> None:
    prof = Profile(model=ModelSection(id="a"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(BadInput, match="is a directory"):
        write_profile(tmp_path / "adir", prof, force=True)
    assert (tmp_path / "adir").is_dir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="not a regular file"):
        write_profile(fifo, prof, force=True)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    with pytest.raises(BadInput, match="not a regular file"):
        check_target("/dev/null", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "fifo"]


def test_no_overwrite_holds_even_for_a_name_that_only_a_link_occupies(tmp_path: Path) -> None:
    # A dangling symlink: Path.exists() is false, but the name is taken; publishing must not follow or replace it.
    link = tmp_path / "p.yaml"
    link.symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(ProfileExists):
        write_profile(link, Profile(model=ModelSection(id="a")))
    assert link.is_symlink() and not (tmp_path / "elsewhere.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]
