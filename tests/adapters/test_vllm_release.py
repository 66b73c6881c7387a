"""The installed vLLM's version from package metadata (vLLM never imported), and plan's default release."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwendeploy.adapters.vllm_release import installed_vllm_version
from qwendeploy.cli import app


def fake_vllm_venv(root: Path, version: str) -> Path:
    """A virtualenv-shaped folder with a ``vllm`` script and vLLM's dist-info, as pip leaves them."""
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    exe = bindir / "vllm"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    dist = root / "lib" / "python3.12" / "site-packages" / f"vllm-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return bindir


def test_version_next_to_the_vllm_on_path(tmp_path: Path) -> None:
    bindir = fake_vllm_venv(tmp_path, "0.26.0")
    assert installed_vllm_version(path=str(bindir)) == "0.26.0"
    assert installed_vllm_version(path=str(tmp_path / "nowhere")) is None


def test_plan_defaults_to_the_installed_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = fake_vllm_venv(tmp_path, "0.26.0")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.path.dirname(sys.executable)}")
    r = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "1xH100", "--json"])
    out = json.loads(r.stdout)
    assert out["vllm_version"] == "0.26"
    assert any("vLLM 0.26, from the vLLM installed here" in n for n in out["notes"])


def test_plan_without_vllm_uses_the_newest_modelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    r = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "1xH100", "--json"])
    out = json.loads(r.stdout)
    assert out["vllm_version"] == "0.33"
    assert any("no vLLM is installed here" in n for n in out["notes"])


def test_an_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    r = CliRunner().invoke(app, ["plan", "Qwen/Qwen9-Nonexistent-7B", "--gpus", "1xH100"])
    assert time.monotonic() - start < 2.0
    assert r.exit_code == 2 and "cannot be reached" in r.output
