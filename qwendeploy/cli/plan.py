"""``qwendeploy plan``: the options parsed into one ``PlanOptions``, the use case (:mod:`qwendeploy.app.plan`)
called through the real adapters (:func:`qwendeploy.cli.wiring.plan_ports`), the plan rendered."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.core.networks import DEFAULT_NETWORK
from qwendeploy.core.server_address import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    from qwendeploy.app.plan import PlanOptions
    from qwendeploy.core.planner import Plan


class ObjectiveChoice(str, Enum):
    throughput = "throughput"
    latency = "latency"


# long: Typer declares each of plan's 28 options as a parameter; the body only copies them into PlanOptions.
def plan(
    model: Annotated[str, typer.Argument(help="Hugging Face repo id, catalog alias or local model directory.")],
    gpus: Annotated[
        str,
        typer.Option(help="auto (NVML), a subset like 0,2,3, or a simulated inventory like 4xRTX4090D or 8xH100-80GB."),
    ] = "auto",
    nodes: Annotated[
        int, typer.Option(help="N identical nodes like the inventory (simulated or this machine's); runs on Ray.")
    ] = 1,
    network: Annotated[
        str, typer.Option(help="Link between nodes: 25gbe, 100gbe, 400gbe, ib-hdr, ib-ndr (prices PP across nodes).")
    ] = DEFAULT_NETWORK,
    head_address: Annotated[
        str | None, typer.Option(help="Multi-node: the head node's address, written to cluster.head_address.")
    ] = None,
    ifname: Annotated[
        str | None,
        typer.Option(help="Multi-node: NIC between the nodes → NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME (cluster)."),
    ] = None,
    max_model_len: Annotated[
        str | None,
        typer.Option(
            "--context",
            "--max-model-len",
            help="Context in tokens (131072, 128K), or auto: the longest that fits; default: the model's.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Full-length requests each replica must hold at once.")] = 1,
    objective: Annotated[ObjectiveChoice, typer.Option(help="Rank fitting placements by throughput or latency.")] = (
        ObjectiveChoice.throughput
    ),
    tensor_parallel_size: Annotated[int | None, typer.Option("--tensor-parallel-size", "--tp", help="Fix TP.")] = None,
    pipeline_parallel_size: Annotated[
        int | None, typer.Option("--pipeline-parallel-size", "--pp", help="Fix PP.")
    ] = None,
    data_parallel_size: Annotated[
        int | None, typer.Option("--data-parallel-size", "--dp", help="Fix replicas.")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="Fraction of each GPU vLLM may use (default: vLLM's, lowered to free memory).")
    ] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Fix --max-num-seqs (default: vLLM's for the GPU).")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(help="Fix --max-num-batched-tokens.")] = None,
    kv_cache_dtype: Annotated[
        str | None, typer.Option(help="auto, fp8, fp8_e5m2 … (default: auto, fp8 tried where auto does not fit).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto, bfloat16, float16.")] = "auto",
    quantization: Annotated[str | None, typer.Option(help="Quantization method (e.g. fp8 for online FP8).")] = None,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs.")] = False,
    vllm_version: Annotated[
        str | None,
        typer.Option(
            help="vLLM release whose memory accounting to follow (default: the installed vLLM's, read from its "
            "package metadata; without one, the newest modelled release)."
        ),
    ] = None,
    disable_custom_all_reduce: Annotated[
        bool,
        typer.Option(
            "--disable-custom-all-reduce",
            help="Plan for vLLM's --disable-custom-all-reduce (no custom all-reduce buffers; written to the profile).",
        ),
    ] = False,
    allow_untrained_context: Annotated[
        bool,
        typer.Option(
            "--allow-untrained-context",
            help="Plan a dual-chunk-attention (1M) model past its trained window, though vLLM has no DCA.",
        ),
    ] = False,
    revision: Annotated[str | None, typer.Option(help="Hub revision of the model.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Print every formula with its inputs.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (a stable contract).")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the chosen plan as a profile.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --output file.")] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="Profile name, also the served model name (default: the model's name, e.g. qwen2.5-7b-instruct)."
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port written to the profile.")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Bind address written to the profile.")] = DEFAULT_HOST,
) -> None:
    """Estimate memory, search TP/PP/DP placements and choose one (exit 0 fits, 1 nothing fits, 2 bad input)."""
    with user_errors():
        from qwendeploy.app.plan import PlanOptions

        opts = PlanOptions(
            model=model,
            gpus=gpus,
            nodes=nodes,
            network=network,
            head_address=head_address,
            ifname=ifname,
            context=max_model_len,
            concurrency=concurrency,
            objective=objective.value,
            tp=tensor_parallel_size,
            pp=pipeline_parallel_size,
            dp=data_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            kv_cache_dtype=kv_cache_dtype,
            dtype=dtype,
            quantization=quantization,
            enforce_eager=enforce_eager,
            vllm_version=vllm_version,
            disable_custom_all_reduce=disable_custom_all_reduce,
            allow_untrained_context=allow_untrained_context,
            revision=revision,
            output=output,
            force=force,
            name=name,
            port=port,
            host=host,
        )
        _plan(opts, explain=explain, json_out=json_out)


def _plan(opts: PlanOptions, *, explain: bool, json_out: bool) -> None:
    """Plan, render (a plan that does not fit too, before exit 1), then write the profile ``-o`` asks for."""
    from qwendeploy.app.plan import run_plan, save_profile
    from qwendeploy.cli import render_plan, wiring
    from qwendeploy.core.planner import raise_if_infeasible

    ports = wiring.plan_ports()
    result = run_plan(ports, opts)
    if json_out:
        typer.echo(render_plan.dumps(render_plan.plan_json(result, explain=explain)))
    else:
        from rich.console import Console

        render_plan.render(Console(highlight=False, soft_wrap=False), result, explain=explain)
    raise_if_infeasible(result)
    if opts.output is not None:
        path = save_profile(ports, opts, result, summary=_summary(result))
        if not json_out:
            from rich.console import Console

            Console(highlight=False).print(f"Wrote {path}", markup=False)


def _summary(result: Plan) -> str:
    """The profile's header under its command: the plan in one line, and how clients reach the replicas."""
    from qwendeploy.cli.launch_text import launch_specs, reach_words
    from qwendeploy.cli.render_plan import one_line

    summary = one_line(result)
    if reach := reach_words(launch_specs(result), result.chosen.dp if result.chosen else 1):
        summary += f"\nClients: {reach}"
    return summary
