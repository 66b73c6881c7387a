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


PACKAGE = ROOT / "qwendeploy"
APP = PACKAGE / "app"

FORBIDDEN_IN_APP = {"qwendeploy.adapters", "qwendeploy.cli", "typer", "rich", "pynvml", "psutil", "ray", "torch"}


@pytest.mark.parametrize("path", sorted(APP.rglob("*.py")), ids=lambda p: str(p.relative_to(APP)))
def test_use_cases_reach_the_outside_only_through_ports(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [
        f"line {line}: import {name}"
        for line, name in _imports(tree)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_APP)
    ]
    assert not bad, f"{path.relative_to(ROOT)} (app/ takes adapters through app/ports.py protocols): {bad}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str], *, type_only: bool = False) -> set[str]:
    """Package modules ``path`` imports when it runs (anywhere in the file, deferred imports included; not under
    ``if TYPE_CHECKING:``, which never runs — unless ``type_only``: then those too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if not type_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the module pkg.sub (pkg's __init__ runs first, as for any submodule);
            # `from pkg import name` imports pkg itself.
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if n in modules] or [node.module]
            names += [node.module] if any(n not in modules for n in subs) else []
        out.update(n for n in names if n in modules)
    return out


@pytest.mark.parametrize("type_only", [False, True], ids=["runtime", "with-type-checking-imports"])
def test_no_import_circles_in_the_package(type_only: bool) -> None:
    """A circle (a ↔ b, or longer) is two modules that are one idea, or a value in the wrong module; a deferred
    import that hides one still counts, and so does one under ``if TYPE_CHECKING:`` (a type names an idea too).
    A package's ``__init__`` that only hands its modules' names on is left out of the type-only graph."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    if type_only:
        files = {m: p for m, p in files.items() if p.name != "__init__.py"}
    graph = {m: _runtime_imports(p, set(files), type_only=type_only) - {m} for m, p in files.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" → ".join(c) for c in cycles)


MAX_CORE_LINES = 520
"""About 500: one idea a file."""

BIG_CORE_FILES_ALLOWED = {}


def test_core_files_hold_one_idea() -> None:
    big = {
        str(p.relative_to(CORE)): n
        for p in sorted(CORE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_CORE_LINES
    }
    unexpected = {k: v for k, v in big.items() if k not in BIG_CORE_FILES_ALLOWED}
    assert not unexpected, f"core files over {MAX_CORE_LINES} lines (split them by idea): {unexpected}"
    stale = sorted(set(BIG_CORE_FILES_ALLOWED) - set(big))
    assert not stale, f"no longer over {MAX_CORE_LINES} lines: drop them from BIG_CORE_FILES_ALLOWED: {stale}"


MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED: dict[tuple[str, str], str] = {}
"""(file under qwendeploy/, function) → why it may stay long; empty since the planner's last three were split."""


def _says_why(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``# long:`` comment in the comment block right above the def (or its decorators), or in the function's
    first lines."""
    i = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2  # 0-based index of the line above
    above: list[str] = []
    while i >= 0 and lines[i].strip().startswith("#"):
        above.append(lines[i])
        i -= 1
    near = above + lines[node.lineno - 1 : node.lineno + 5]
    return any("# long:" in line.lower() for line in near)


def test_long_functions_say_why() -> None:
    bad: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
                continue
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED and not _says_why(lines, node):
                bad.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines without a `# long: why` comment: {bad}"
