"""The catalog cache: a pickle per catalog under the user's cache directory, read only under the exact key of the
text and code that built it; every failure falls back to building the catalog."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qwendeploy.adapters.catalog_cache import KEEP, FileCatalogCache, cache_dir, from_environment
from qwendeploy.core import catalog_cache
from qwendeploy.core.gpus import GpuCatalog, build_gpu_catalog, gpu_catalog

ROOT = Path(__file__).resolve().parents[2]
GPUS_YAML = (ROOT / "qwendeploy" / "data" / "gpus.yaml").read_text(encoding="utf-8")


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[FileCatalogCache]:
    cache = FileCatalogCache(tmp_path / "cache" / "qwendeploy")
    catalog_cache.install(cache)
    yield cache
    catalog_cache.install(None)


@dataclass
class Builds:
    """A build function that counts its calls."""

    calls: int = 0

    def __call__(self, text: str) -> GpuCatalog:
        self.calls += 1
        return build_gpu_catalog(text)


def test_a_catalog_is_built_once_then_read_back_equal(installed: FileCatalogCache) -> None:
    build = Builds()
    first = catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog)
    again = catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog)
    assert build.calls == 1
    assert again == first and again is not first  # read from the file, not the same object
    assert again.gpus == gpu_catalog()  # what the package builds without a cache
    assert [p.name.split("-")[0] for p in installed.directory.iterdir()] == ["gpus"]
    assert installed.directory.stat().st_mode & 0o777 == 0o700


def test_other_text_is_another_key(installed: FileCatalogCache) -> None:
    build = Builds()
    catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog)
    edited = GPUS_YAML.replace("name: NVIDIA T4\n", "name: NVIDIA T4 edited\n", 1)
    assert edited != GPUS_YAML
    changed = catalog_cache.load("gpus", edited, build, GpuCatalog)
    assert build.calls == 2
    assert changed.gpus[0].name == "NVIDIA T4 edited"
    assert installed.get("gpus", GPUS_YAML) is not None  # both kept


def test_a_damaged_file_is_a_miss_and_is_replaced(installed: FileCatalogCache) -> None:
    build = Builds()
    catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog)
    (path,) = installed.directory.iterdir()
    path.write_bytes(b"not a pickle")
    assert installed.get("gpus", GPUS_YAML) is None
    assert catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog).gpus == gpu_catalog()
    assert build.calls == 2
    assert installed.get("gpus", GPUS_YAML) is not None


def test_a_value_of_another_type_is_ignored(installed: FileCatalogCache) -> None:
    installed.put("gpus", GPUS_YAML, ("something", "else"))
    build = Builds()
    assert catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog).gpus == gpu_catalog()
    assert build.calls == 1


def test_an_unwritable_cache_builds_silently(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory would be")
    catalog_cache.install(FileCatalogCache(blocker / "qwendeploy"))
    try:
        build = Builds()
        assert catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog).gpus == gpu_catalog()
        assert catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog).gpus == gpu_catalog()
        assert build.calls == 2
    finally:
        catalog_cache.install(None)


def test_a_bad_catalog_raises_and_is_not_remembered(installed: FileCatalogCache) -> None:
    bad = GPUS_YAML.replace("    p2p: true", "    p2p: maybe", 1)
    with pytest.raises(ValueError, match=r"gpus\.0\.p2p"):
        catalog_cache.load("gpus", bad, build_gpu_catalog, GpuCatalog)
    assert not installed.directory.exists() or not list(installed.directory.iterdir())


def test_old_files_are_pruned_to_the_newest(installed: FileCatalogCache) -> None:
    for i in range(KEEP + 3):
        installed.put("gpus", f"text {i}", i)
        os.utime(installed._path("gpus", f"text {i}"), ns=(i * 10**9, i * 10**9))
    installed.put("gpus", "last", "last")
    kept = {installed.get("gpus", f"text {i}") for i in range(KEEP + 3)} - {None}
    assert installed.get("gpus", "last") == "last"
    assert kept == set(range(4, KEEP + 3))  # KEEP files in all: the newest KEEP - 1 and the last one


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "/x/cache", "HOME": "/u"}, "/x/cache/qwendeploy"),
        ({"XDG_CACHE_HOME": "relative", "HOME": "/u"}, "/u/.cache/qwendeploy"),
        ({"HOME": "/u"}, "/u/.cache/qwendeploy"),
        ({}, None),
    ],
)
def test_cache_directory(env: dict[str, str], expected: str | None) -> None:
    found = cache_dir(env)
    assert (str(found) if found else None) == expected
    assert (from_environment(env) is None) == (expected is None)


PLAN = ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "2xL40S", "--context", "32768", "--json"]
PROBE = (
    "import sys, runpy; sys.argv = ['qwendeploy', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('qwendeploy', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "names = ('yaml', 'qwendeploy.core.gpu_entries', 'qwendeploy.core.models.entries')\n"
    "built = [m for m in names if m in sys.modules]\n"
    "profile = sys.modules.get('qwendeploy.core.profile')\n"
    "built += ['the profile schema'] if profile and profile.Profile.__pydantic_complete__ else []\n"
    "print('BUILT', built, file=sys.stderr)\n"
)


def _plan(cache_home: Path) -> tuple[str, str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *PLAN], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr.split("BUILT", 1)[1].strip()


def test_the_command_line_reads_its_catalogs_from_the_cache(tmp_path: Path) -> None:
    """The first plan builds and keeps both catalogs; the next parses no YAML and builds no pydantic schema (the
    catalogs' or the profile's: plan shows its launch command from a constructed profile), and prints the same
    plan — the same as a plan whose cache cannot be written."""
    first, built_first = _plan(tmp_path / "cache")
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "qwendeploy").iterdir()) == ["gpus", "models"]
    second, built_second = _plan(tmp_path / "cache")
    (tmp_path / "blocked").write_text("a file where the cache directory would be")
    uncached, _ = _plan(tmp_path / "blocked")
    assert "yaml" in built_first and built_second == "[]"
    assert first == second == uncached
    assert json.loads(second)["fits"] is True


def test_a_pickle_holds_plain_values() -> None:
    """What is kept is the frozen dataclasses the lookups use (no pydantic model, no parser state)."""
    data = pickle.dumps(build_gpu_catalog(GPUS_YAML))
    assert b"pydantic" not in data and b"yaml" not in data


def test_the_key_follows_the_code_that_builds_the_catalog() -> None:
    """An edited core module (here: its modification time moved, its text untouched) is another key."""
    from qwendeploy.adapters.catalog_cache import code_fingerprint

    source = ROOT / "qwendeploy" / "core" / "models" / "hf_config.py"
    stat = source.stat()
    before = code_fingerprint()
    try:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert code_fingerprint() != before
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert code_fingerprint() == before


def test_a_file_others_could_write_is_never_read(installed: FileCatalogCache) -> None:
    build = Builds()
    catalog_cache.load("gpus", GPUS_YAML, build, GpuCatalog)
    (path,) = installed.directory.iterdir()
    path.chmod(0o666)
    assert installed.get("gpus", GPUS_YAML) is None
    path.chmod(0o600)
    installed.directory.chmod(0o777)
    assert installed.get("gpus", GPUS_YAML) is None
    installed.directory.chmod(0o700)
    assert installed.get("gpus", GPUS_YAML) is not None
