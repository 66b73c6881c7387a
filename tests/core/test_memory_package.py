"""core/memory/ as a package: every name importable from the package, each module loaded on first use."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import qwendeploy.core.memory as memory

PACKAGE = Path(memory.__file__).parent
ROOT = PACKAGE.parents[2]


def _type_checking_imports() -> dict[str, str]:
    """name → module of the ``from qwendeploy.core.memory.X import name as name`` lines mypy reads."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                for alias in imp.names:
                    assert alias.asname == alias.name, f"{alias.name}: re-export as itself for mypy"
                    out[alias.name] = imp.module.rsplit(".", 1)[1]
    return out


def test_what_mypy_sees_is_what_the_package_serves() -> None:
    assert _type_checking_imports() == memory._HOME


@pytest.mark.parametrize("name", memory.__all__)
def test_each_name_comes_from_its_module(name: str) -> None:
    module = importlib.import_module(f"qwendeploy.core.memory.{memory._HOME[name]}")
    assert getattr(memory, name) is getattr(module, name)


def test_every_module_of_the_package_is_listed_and_no_name_shadows_one() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set(memory._MODULES) == modules
    assert not modules & set(memory.__all__)  # a submodule, once imported, would replace the package attribute


def test_an_unknown_name_is_an_import_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'estimat'"):
        _ = memory.estimat  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from qwendeploy.core.memory import estimat", {})


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys; print(sorted(m for m in sys.modules if m.startswith('qwendeploy.core')))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    return list(ast.literal_eval(r.stdout.strip().splitlines()[-1]))


def test_importing_the_package_loads_nothing_and_a_name_loads_its_module() -> None:
    assert _loaded_after("import qwendeploy.core.memory") == ["qwendeploy.core", "qwendeploy.core.memory"]
    assert _loaded_after("from qwendeploy.core.memory import CURRENT_VLLM") == [
        "qwendeploy.core",
        "qwendeploy.core.memory",
        "qwendeploy.core.memory.accounting",
    ]
    assert "qwendeploy.core.memory.composition" in _loaded_after("from qwendeploy.core.memory import estimate")
