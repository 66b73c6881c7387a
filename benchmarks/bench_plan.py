"""Timing of ``qwendeploy plan`` (start-up included, a fresh interpreter each run, 2-core machine).

    python benchmarks/bench_plan.py [RUNS]

1. issue #15's command, ``qwendeploy plan Qwen/Qwen2.5-72B-Instruct --gpus 8xH100-80GB --nodes 2 --context 131072
   --json``, median of RUNS (default 11) against the issue's target of 300 ms, beside a bare ``python -c pass``; the
   catalogs come from the user's catalog cache (``$XDG_CACHE_HOME/qwendeploy``, filled by the first run), as every
   run but the first after an install or upgrade finds them; then the same command with an empty cache each time
   (median of 5), what that first run costs;
2. the seed case on a simulated inventory, rich output and --json, median of 5 (the median, not the best: a user
   sees a typical run);
3. the search alone over 8 nodes × 8 H100 for Qwen2.5-72B at 131072 tokens, in-process, best of 5;
4. the floor under 1.: a Typer app with one command that has plan's parameters (names, types, defaults, read from
   cli/plan.py without importing it) and an empty body, run the same way — what Typer (0.29 imports pydantic and
   builds one TypeAdapter per option) costs before any qwendeploy code runs.

qwendeploy's bytecode is compiled first, as ``pip install`` leaves an installed copy: where PYTHONDONTWRITEBYTECODE
is set (it is on the development machines), an uncompiled checkout would compile every module from source on every
run, and the figure would measure the compiler (60–110 ms of the median here) rather than the start-up a user sees.
"""

from __future__ import annotations

import ast
import compileall
import os
import subprocess
import sys
import tempfile
import time

ISSUE_15 = ["plan", "Qwen/Qwen2.5-72B-Instruct", "--gpus", "8xH100-80GB", "--nodes", "2", "--context", "131072"]
ISSUE_15 += ["--json"]
TARGET_MS = 300
SEED = ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "4xRTX4090D", "--context", "131072"]


def median_wall(argv: list[str], runs: int = 5, *, cold: bool = False) -> float:
    """Median wall time of ``argv`` run ``runs`` times, each in a fresh process (``cold``: each with an empty catalog
    cache)."""
    times = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as empty:
            if cold:
                env["XDG_CACHE_HOME"] = empty
            t = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def cli_wall(extra: list[str]) -> float:
    return median_wall([sys.executable, "-m", "qwendeploy", *SEED, *extra])


def search_time() -> tuple[float, int]:
    from qwendeploy.core.gpus import parse_inventory
    from qwendeploy.core.models import find_model
    from qwendeploy.core.planner import PlanRequest, plan

    spec = find_model("Qwen/Qwen2.5-72B-Instruct")
    assert spec is not None
    machine = parse_inventory("8xH100-80GB", nodes=8)
    best, n = float("inf"), 0
    for _ in range(5):
        t = time.perf_counter()
        p = plan(PlanRequest(spec=spec, machine=machine, max_model_len=131072))
        best = min(best, time.perf_counter() - t)
        n = len(p.candidates)
    return best, n


def typer_floor_source() -> tuple[str, int]:
    """Python source of a Typer app whose one command takes plan's parameters and does nothing."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "qwendeploy", "cli", "plan.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "plan")
    args = fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    params = []
    for a, d in zip(args, defaults, strict=True):
        ann = a.annotation
        base = ann.slice.elts[0] if isinstance(ann, ast.Subscript) and isinstance(ann.slice, ast.Tuple) else ann
        text = ast.unparse(base) if base is not None else "str"
        kind = next((t for t in ("bool", "int", "float") if t in text), "str")
        optional = "None" in text
        typ = f"{kind} | None" if optional else kind
        if d is None:
            params.append(f"{a.arg}: {typ}")
        else:
            value = ast.literal_eval(d) if isinstance(d, ast.Constant) else None
            params.append(f"{a.arg}: {typ} = {value!r}" if value is not None or optional else f"{a.arg}: str = ''")
    return (
        "import typer\napp = typer.Typer()\n@app.command()\ndef plan(" + ", ".join(params) + "):\n    pass\n"
        "@app.command()\ndef other():\n    pass\napp()\n"
    ), len(params)


def compile_package() -> None:
    """Bytecode for every qwendeploy module (``__pycache__``, ignored by git), as an installed copy has it."""
    import qwendeploy

    compileall.compile_dir(os.path.dirname(qwendeploy.__file__), quiet=1)


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    compile_package()
    bare = median_wall([sys.executable, "-c", "pass"], runs)
    median_wall([sys.executable, "-m", "qwendeploy", *ISSUE_15], 1)  # fills the catalog cache if it is empty
    issue = median_wall([sys.executable, "-m", "qwendeploy", *ISSUE_15], runs)
    cold = median_wall([sys.executable, "-m", "qwendeploy", *ISSUE_15], 5, cold=True)
    print(
        f"issue #15 plan command (fresh interpreter, median of {runs}): {issue * 1000:.0f} ms "
        f"(target <= {TARGET_MS} ms; bare python -c pass {bare * 1000:.0f} ms; "
        f"with an empty catalog cache {cold * 1000:.0f} ms)"
    )
    rich_wall, json_wall = cli_wall([]), cli_wall(["--json"])
    search, n = search_time()
    print(
        f"plan CLI (seed case, fresh interpreter, median of 5): rich {rich_wall * 1000:.0f} ms, "
        f"--json {json_wall * 1000:.0f} ms wall (target < 500 ms)"
    )
    print(f"search 8 nodes x 8 H100, 72B @131072: {search * 1000:.1f} ms for {n} candidates")
    src, n_params = typer_floor_source()
    floor = median_wall([sys.executable, "-c", src, "plan", "Qwen/Qwen2.5-72B-Instruct"], runs)
    print(
        f"floor: a Typer app with plan's {n_params} parameters and an empty body "
        f"(median of {runs}): {floor * 1000:.0f} ms"
    )
