"""The layering the README promises, checked: a pure core, and commands that start without heavy imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "qwendeploy" / "core"

FORBIDDEN_IN_CORE = {
    # processes, network, clocks, signals: adapters do these
    "subprocess", "socket", "time", "threading", "signal", "urllib", "http", "multiprocessing",
    # hardware, hub, terminal, optional engines
    "pynvml", "huggingface_hub", "psutil", "rich", "typer", "ray", "torch", "vllm",
    # the outer layers
    "qwendeploy.adapters", "qwendeploy.cli",
}  # fmt: skip


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [
        f"line {line}: import {name}"
        for line, name in _imports(tree)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_CORE)
    ]
    for node in ast.walk(tree):  # os.environ / os.getenv: the environment is an input, passed in by adapters
        is_os = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
        if is_os and node.attr in ("environ", "getenv", "putenv", "system", "popen"):
            bad.append(f"line {node.lineno}: os.{node.attr}")
    assert not bad, f"{path.relative_to(ROOT)} is core but touches the outside: {bad}"


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "4xRTX4090D", "--context", "131072", "--json"],
        ["doctor", "--log", "-", "--json"],
        ["--help"],
    ],
    ids=["plan", "doctor-log", "help"],
)
def test_commands_start_without_heavy_imports(argv: list[str]) -> None:
    code = (
        "import sys, runpy; sys.argv = ['qwendeploy', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('qwendeploy', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'vllm', 'ray', 'huggingface_hub') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *argv], input="", capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert "HEAVY []" in r.stderr, r.stderr[-2000:]


def test_tests_reach_shared_material_relatively() -> None:
    """No test names an absolute path outside the repository: shared material comes from tests/shared_paths.py."""
    tests_dir = Path(__file__).resolve().parent
    offenders = [
        f"{p.relative_to(tests_dir)}:{n}"
        for p in sorted(tests_dir.rglob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"""["']/(work|shared|home|mnt)/""", line)
    ]
    assert offenders == []
