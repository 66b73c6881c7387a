"""``qwendeploy bench PROFILE|URL``: drive a running server over a concurrency sweep; measured TTFT, TPOT and
output tokens/s beside what the plan's cost model predicts for the same load (docs/planning.md §5)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.core.server_address import client_url
from qwendeploy.errors import BadInput

if TYPE_CHECKING:
    from qwendeploy.core.bench import Estimate, Run
    from qwendeploy.core.planner import Candidate, PlanRequest
    from qwendeploy.core.profile import Profile


def _levels(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        out = []
    if not out or any(c < 1 for c in out):
        raise BadInput(f"--concurrency takes positive integers separated by commas (1,16,64); got {text!r}.")
    return sorted(dict.fromkeys(out))


def _planned(prof: Profile) -> tuple[PlanRequest, Candidate] | str:
    """The plan the profile came from, re-made from its own fields; a reason string when it cannot be."""
    from qwendeploy.adapters.hub import load_model
    from qwendeploy.core.gpus import parse_inventory
    from qwendeploy.core.memory import CURRENT_VLLM
    from qwendeploy.core.planner import PlanRequest, plan
    from qwendeploy.errors import QwendeployError

    pl, eng = prof.placement, prof.engine
    if not prof.hardware.gpus:
        return "the profile names no GPUs (hardware.gpus)"
    n = pl.tensor_parallel_size * pl.pipeline_parallel_size * pl.data_parallel_size
    try:
        spec = load_model(prof.model.id, revision=prof.model.revision)
        machine = parse_inventory(f"{n}x{prof.hardware.gpus[0]}", max(1, pl.nodes))
        req = PlanRequest(
            spec=spec,
            machine=machine,
            max_model_len=prof.model.max_model_len,
            tp=pl.tensor_parallel_size,
            pp=pl.pipeline_parallel_size,
            dp=pl.data_parallel_size,
            gpu_memory_utilization=eng.gpu_memory_utilization,
            max_num_seqs=eng.max_num_seqs,
            max_num_batched_tokens=eng.max_num_batched_tokens,
            kv_cache_dtype=eng.kv_cache_dtype,
            quantization=prof.model.quantization,
            enforce_eager=eng.enforce_eager,
            vllm_version=prof.estimate.vllm_version or CURRENT_VLLM,
        )
        p = plan(req, suggest=False)
    except QwendeployError as e:
        return e.message
    c = next((x for x in p.candidates if x.estimate is not None), None)
    return (p.request, c) if c is not None else "the plan finds no placement for it now"


def bench(
    target: Annotated[str, typer.Argument(help="A profile (YAML, its server must be running) or a server URL.")],
    concurrency: Annotated[
        str, typer.Option("--concurrency", "-c", help="Concurrent requests per level, e.g. 1,16,64.")
    ] = "1,16,64",
    input_len: Annotated[int, typer.Option(help="Prompt tokens per request (random).")] = 1000,
    output_len: Annotated[int, typer.Option(help="Generated tokens per request (EOS ignored).")] = 256,
    num_prompts: Annotated[
        int | None, typer.Option(help="Requests per level (default: 4 × concurrency, at least 8).")
    ] = None,
    client: Annotated[
        str, typer.Option(help="auto (vLLM's `vllm bench serve` where installed, else built-in), vllm, builtin.")
    ] = "auto",
    model: Annotated[
        str | None, typer.Option(help="Served model name (default: the profile's, or the server's only model).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="vLLM client: the Hub id to tokenize with (default: the profile's model).")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Variable holding the server's API key (default: the profile's).")
    ] = None,
    vllm_bin: Annotated[
        str | None, typer.Option("--vllm-bin", help="vLLM executable (else $QWENDEPLOY_VLLM_BIN, else vllm on PATH).")
    ] = None,
    result_dir: Annotated[
        Path | None, typer.Option(help="Where results go (default: ./bench-results/NAME-TIME).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure a running server: TTFT, TPOT and output tok/s per concurrency, beside the plan's estimate."""
    with user_errors():
        code = _bench(
            target,
            _levels(concurrency),
            input_len,
            output_len,
            num_prompts,
            client,
            model,
            tokenizer,
            api_key_env,
            vllm_bin,
            result_dir,
            json_out,
        )
        raise typer.Exit(code)


# long: the bench command's orchestration (target, load levels, rendering) — moves to an app/ use case in phase B.
def _bench(
    target: str,
    levels: list[int],
    input_len: int,
    output_len: int,
    num_prompts: int | None,
    client: str,
    model: str | None,
    tokenizer: str | None,
    api_key_env: str | None,
    vllm_bin: str | None,
    result_dir: Path | None,
    json_out: bool,
) -> int:
    from rich.console import Console

    from qwendeploy.adapters.bench_client import Load, api_key_from, served_models
    from qwendeploy.core.bench import decode_estimate

    if input_len < 1 or output_len < 2:
        raise BadInput("--input-len must be ≥ 1 and --output-len ≥ 2 (TPOT needs two output tokens).")
    if num_prompts is not None and num_prompts < 1:
        raise BadInput("--num-prompts must be ≥ 1.")
    if client not in ("auto", "vllm", "builtin"):
        raise BadInput(f"--client is auto, vllm or builtin; got {client!r}.")
    env = dict(os.environ)
    prof: Profile | None = None
    notes: list[str] = []
    if target.startswith(("http://", "https://")):
        url = target.rstrip("/").removesuffix("/v1")
        name = url.split("//", 1)[1].replace(":", "-").replace("/", "-")
    else:
        from qwendeploy.adapters.profile_files import read_profile

        prof = read_profile(target)
        url = client_url(prof.server.host, prof.server.port)
        name = prof.name
        api_key_env = api_key_env or prof.server.api_key_env
        if prof.placement.data_parallel_size > 1 and prof.placement.data_parallel_mode == "servers":
            notes.append(
                f"the profile runs {prof.placement.data_parallel_size} independent servers; this measures the first "
                f"({url}) and the estimate is for one replica"
            )
    key = api_key_from(api_key_env, env)
    names = served_models(url, key)
    served = model or (prof.server.served_model_name or prof.model.id if prof else None)
    if served is None:
        if len(names) != 1:
            raise BadInput(f"{url} serves {len(names)} models ({', '.join(names) or 'none'}); pick one with --model.")
        served = names[0]
    elif names and served not in names:
        raise BadInput(f"{url} does not serve {served!r}; it serves: {', '.join(names)}.")
    weights_id = tokenizer or (prof.model.id if prof else served)

    bin_path = _vllm_bin(vllm_bin, env)
    use_vllm = client == "vllm" or (client == "auto" and bin_path is not None)
    if use_vllm and bin_path is None:
        raise BadInput("--client vllm: no `vllm` executable (pip install vllm, or --vllm-bin).")

    planned = _planned(prof) if prof is not None else "no profile given (a URL): no plan to compare with"
    if isinstance(planned, str):
        notes.append(f"no estimate: {planned}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = result_dir or Path("bench-results") / f"{name}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=json_out, highlight=False)
    loads = [Load(c, num_prompts or max(8, 4 * c), input_len, output_len) for c in levels]
    runs = _sweep(console, loads, url, weights_id, served, key, env, bin_path if use_vllm else None, out_dir)

    rows: list[dict[str, Any]] = []
    for run in runs:
        est: Estimate | None = None
        if not isinstance(planned, str):
            req, cand = planned
            if prof is not None and prof.placement.data_parallel_mode == "servers":
                from dataclasses import replace

                cand = replace(cand, dp=1)
            est = decode_estimate(req, cand, concurrency=run.concurrency, input_len=input_len, output_len=output_len)
        rows.append(_row(run, est))
    doc: dict[str, Any] = {
        "target": target,
        "url": url,
        "served_model_name": served,
        "client": runs[0].client if runs else None,
        "input_len": input_len,
        "output_len": output_len,
        "levels": rows,
        "notes": notes,
        "cost_model": "docs/planning.md §5 at each level's load (decode only)",
    }
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    plot = _plot(rows, out_dir / "throughput.png", served)
    doc["files"] = {"json": str(out_dir / "bench.json"), "plot": str(plot) if plot else None}
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _table(console, doc)
        console.print(f"Saved {out_dir / 'bench.json'}" + (f" and {plot}" if plot else ""), markup=False)
        if plot is None:
            console.print("No plot: matplotlib is not installed (pip install 'qwendeploy[plot]').", markup=False)
    return 1 if any(r["failed"] for r in rows) else 0


def _vllm_bin(option: str | None, env: dict[str, str]) -> str | None:
    """The vLLM executable if there is one (--vllm-bin, $QWENDEPLOY_VLLM_BIN, PATH), else None."""
    from qwendeploy.app.serve import vllm_binary
    from qwendeploy.cli.wiring import find_executable

    path = vllm_binary(option, env, find_executable, required=option is not None)
    return find_executable(path, env.get("PATH"))


def _sweep(
    console: Any,
    loads: list[Any],
    url: str,
    weights_id: str,
    served: str,
    key: str | None,
    env: dict[str, str],
    bin_path: str | None,
    out_dir: Path,
) -> list[Run]:
    """Each level in turn under a live progress display."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from qwendeploy.adapters.bench_client import run_builtin, run_vllm_bench, vllm_bench_argv

    runs: list[Run] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        for load in loads:
            what = f"concurrency {load.concurrency}: {load.num_prompts} requests"
            task = progress.add_task(what, total=load.num_prompts)
            if bin_path is not None:
                filename = f"vllm-c{load.concurrency}.json"
                argv = vllm_bench_argv(bin_path, url, weights_id, served, load, out_dir, filename)
                child_env = {**env, **({"OPENAI_API_KEY": key} if key else {})}

                def line(text: str, task: Any = task, what: str = what) -> None:
                    progress.update(task, description=f"{what} · {text.strip()[:60]}")

                run = run_vllm_bench(argv, child_env, out_dir / filename, load.concurrency, on_line=line)
                progress.update(task, completed=run.completed, description=what)
            else:

                def done(_t: Any, task: Any = task) -> None:
                    progress.advance(task)

                run = run_builtin(url, served, load, api_key=key, on_done=done)
                (out_dir / f"builtin-c{load.concurrency}.json").write_text(
                    json.dumps(_row(run, None), indent=2), encoding="utf-8"
                )
            runs.append(run)
    return runs


def _row(run: Run, est: Estimate | None) -> dict[str, Any]:
    from qwendeploy.core.bench import error_pct

    return {
        "concurrency": run.concurrency,
        "completed": run.completed,
        "failed": run.failed,
        "duration_s": round(run.duration_s, 3),
        "output_tokens": run.output_tokens,
        "output_tokens_per_s": round(run.output_tokens_per_s, 1),
        "decode_tokens_per_s": round(run.decode_tokens_per_s, 1),
        "mean_ttft_ms": round(run.mean_ttft_ms, 2),
        "median_ttft_ms": round(run.median_ttft_ms, 2),
        "p99_ttft_ms": round(run.p99_ttft_ms, 2),
        "mean_tpot_ms": round(run.mean_tpot_ms, 3),
        "median_tpot_ms": round(run.median_tpot_ms, 3),
        "estimate_output_tokens_per_s": round(est.output_tokens_per_s, 1) if est else None,
        "estimate_tpot_ms": round(est.tpot_ms, 3) if est else None,
        "estimate_error_pct": (
            round(e, 1) if (e := error_pct(run.decode_tokens_per_s, est.output_tokens_per_s if est else None)) else None
        ),
        "client": run.client,
        "errors": run.raw.get("errors", []) if run.client.startswith("qwendeploy") else [],
    }


def _table(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(
        title=f"{doc['served_model_name']} at {doc['url']}: {doc['input_len']} in / {doc['output_len']} out "
        f"({doc['client']})",
        title_justify="left",
        show_edge=False,
    )
    cols = ("conc.", "done", "TTFT ms (p50)", "TPOT ms (p50)", "out tok/s", "decode tok/s", "plan tok/s", "plan TPOT")
    for col in (*cols, "plan vs decode"):
        t.add_column(col, justify="right")
    for r in doc["levels"]:
        err = r["estimate_error_pct"]
        t.add_row(
            str(r["concurrency"]),
            f"{r['completed']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
            f"{r['mean_ttft_ms']:,.1f} ({r['median_ttft_ms']:,.1f})",
            f"{r['mean_tpot_ms']:,.2f} ({r['median_tpot_ms']:,.2f})",
            f"{r['output_tokens_per_s']:,.0f}",
            f"{r['decode_tokens_per_s']:,.0f}",
            f"{r['estimate_output_tokens_per_s']:,.0f}" if r["estimate_output_tokens_per_s"] is not None else "-",
            f"{r['estimate_tpot_ms']:,.2f}" if r["estimate_tpot_ms"] is not None else "-",
            f"{err:+.0f}%" if err is not None else "-",
        )
    console.print(t)
    for n in doc["notes"]:
        console.print(f"Note: {n}", markup=False)
    for r in doc["levels"]:
        for e in r["errors"]:
            console.print(f"concurrency {r['concurrency']}: {e}", markup=False)


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Output tok/s against concurrency, measured and planned; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = [r["concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["output_tokens_per_s"] for r in rows], "o-", label="measured")
    if all(r["estimate_output_tokens_per_s"] is not None for r in rows):
        ax.plot(xs, [r["estimate_output_tokens_per_s"] for r in rows], "s--", label="plan (cost model)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("output tokens/s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
