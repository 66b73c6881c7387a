"""``qwendeploy plan``: resolve the model and GPUs, search placements, render, optionally write a profile."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import BadInput


class ObjectiveChoice(str, Enum):
    throughput = "throughput"
    latency = "latency"


_INT_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")


def parse_tokens(text: str, flag: str = "--max-model-len") -> int:
    """vLLM's human-readable integers: lower-case decimal (``128k`` = 128000), upper-case binary (``128K`` = 131072).

    Raises:
        BadInput: not an integer of that form.
    """
    m = _INT_RE.match(text)
    if not m:
        raise BadInput(f"{flag} must be a number of tokens such as 131072, 128K or 32k; got {text!r}.")
    n, suffix = int(m.group(1)), m.group(2)
    if suffix:
        power = "kmg".index(suffix.lower()) + 1
        n *= (1024 if suffix.isupper() else 1000) ** power
    return n


def _machine(gpus: str, nodes: int):  # type: ignore[no-untyped-def]
    """The inventory: a simulated ``NxNAME`` or NVML (``auto`` / ``0,2,3``)."""
    if re.fullmatch(r"\s*(auto|\d+(\s*,\s*\d+)*)\s*", gpus):
        from qwendeploy.cli import wiring
        from qwendeploy.core.cluster import replicate_nodes

        if nodes < 1:
            raise BadInput(f"--nodes must be a positive integer, got {nodes}.")
        # --gpus auto --nodes N: N identical nodes like this one.
        return replicate_nodes(wiring.probe_machine(gpus.strip()), nodes)
    from qwendeploy.core.gpus import parse_inventory

    return parse_inventory(gpus, nodes)


def _variants(spec_id: str) -> tuple:  # type: ignore[type-arg]
    """Other official checkpoints of a catalog model, tried when nothing fits: for a quantized one its 16-bit base
    first (an FP8 checkpoint cannot run on a card older than compute capability 8.0), then the quantized ones."""
    from qwendeploy.core.models import find_model

    out = []
    spec = find_model(spec_id)
    if spec is not None and spec.base_model and (base := find_model(spec.base_model)) is not None:
        out.append(base)
        spec_id = base.id
    for suffix in ("-FP8", "-AWQ", "-GPTQ-Int8", "-GPTQ-Int4"):
        v = find_model(spec_id + suffix)
        if v is not None and v.id != (spec.id if spec else None):
            out.append(v)
    return tuple(out)


def _command(
    model: str,
    gpus: str,
    nodes: int,
    max_model_len: str | None,
    concurrency: int,
    objective: str,
    fixed: list[tuple[str, object]],
    output: Path | None,
) -> str:
    parts = ["qwendeploy", "plan", model, "--gpus", gpus]
    if nodes != 1:
        parts += ["--nodes", str(nodes)]
    if max_model_len is not None:
        parts += ["--context", max_model_len]
    if concurrency != 1:
        parts += ["--concurrency", str(concurrency)]
    if objective != "throughput":
        parts += ["--objective", objective]
    for flag, value in fixed:
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    if output is not None:
        parts += ["-o", str(output)]
    return shlex.join(parts)


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
    ] = "100gbe",
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
    port: Annotated[int, typer.Option(help="Port written to the profile.")] = 8000,
    host: Annotated[str, typer.Option(help="Bind address written to the profile.")] = "127.0.0.1",
) -> None:
    """Estimate memory, search TP/PP/DP placements and choose one (exit 0 fits, 1 nothing fits, 2 bad input)."""
    with user_errors():
        from pydantic import ValidationError

        from qwendeploy.adapters.hub import load_model
        from qwendeploy.cli import render_plan
        from qwendeploy.core.planner import PlanRequest, raise_if_infeasible
        from qwendeploy.core.planner import plan as make_plan

        auto_fit = max_model_len is not None and max_model_len.strip().lower() in ("auto", "-1")
        target = parse_tokens(max_model_len) if max_model_len is not None and not auto_fit else None
        if not 1 <= port <= 65535:
            raise BadInput(f"--port must be between 1 and 65535, got {port}.")
        _check_flags(
            nodes=nodes,
            concurrency=concurrency,
            counts=(
                ("--tensor-parallel-size", tensor_parallel_size),
                ("--pipeline-parallel-size", pipeline_parallel_size),
                ("--data-parallel-size", data_parallel_size),
                ("--max-num-seqs", max_num_seqs),
                ("--max-num-batched-tokens", max_num_batched_tokens),
            ),
            texts=(
                ("--name", name),
                ("--host", host),
                ("--head-address", head_address),
                ("--ifname", ifname),
                ("--revision", revision),
                ("--quantization", quantization),
                ("--kv-cache-dtype", kv_cache_dtype),
            ),
        )
        if output is not None:
            from qwendeploy.adapters.profile_files import check_target

            check_target(output, force=force)  # a bad -o fails before any planning or output
        spec = load_model(model, revision=revision)
        machine = _machine(gpus, nodes)
        _check_machine_size(len(machine.gpus), nodes)
        version, version_source = _release(vllm_version)
        req = PlanRequest(
            spec=spec,
            machine=machine,
            max_model_len=target,
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
            vllm_version=version,
            vllm_version_source=version_source,
            allow_untrained_context=allow_untrained_context,
            disable_custom_all_reduce=disable_custom_all_reduce,
            network=network,
            variants=_variants(spec.id) if spec.source == "catalog" else (),
        )
        result = make_plan(req)
        from qwendeploy.core.suggestions import auto_context_note, with_engine_suggestions

        if auto_fit and not result.fits:
            # vLLM's --max-model-len auto: the longest context that fits memory, up to the model's own maximum.
            longest = max((c.max_model_len_fit or 0 for c in result.candidates if c.status == "shorter"), default=0)
            if longest:
                result = make_plan(replace(req, max_model_len=longest))
                note = auto_context_note(result, shortened=True)
                result = replace(result, notes=(note, *result.notes))
        elif auto_fit:
            result = replace(result, notes=(auto_context_note(result, shortened=False), *result.notes))
        result = with_engine_suggestions(result)  # nothing fits: engine changes that would, and why
        if json_out:
            typer.echo(render_plan.dumps(render_plan.plan_json(result, explain=explain)))
        else:
            from rich.console import Console

            render_plan.render(Console(highlight=False, soft_wrap=False), result, explain=explain)
        raise_if_infeasible(result)
        if output is not None:
            from qwendeploy.adapters.profile_files import write_profile
            from qwendeploy.core.profile_builder import profile_from_plan

            fixed: list[tuple[str, object]] = [
                ("--tp", tensor_parallel_size),
                ("--pp", pipeline_parallel_size),
                ("--dp", data_parallel_size),
                ("--gpu-memory-utilization", gpu_memory_utilization),
                ("--max-num-seqs", max_num_seqs),
                ("--max-num-batched-tokens", max_num_batched_tokens),
                ("--kv-cache-dtype", kv_cache_dtype),
                ("--dtype", None if dtype == "auto" else dtype),
                ("--quantization", quantization),
                ("--enforce-eager", enforce_eager),
                ("--vllm-version", vllm_version),
                ("--allow-untrained-context", allow_untrained_context),
                ("--disable-custom-all-reduce", disable_custom_all_reduce),
                ("--revision", revision),
                ("--name", name),
                ("--port", None if port == 8000 else port),
                ("--host", None if host == "127.0.0.1" else host),
                ("--network", None if network == "100gbe" else network),
                ("--head-address", head_address),
                ("--ifname", ifname),
            ]
            command = _command(model, gpus, nodes, max_model_len, concurrency, objective.value, fixed, output)
            try:
                profile = profile_from_plan(
                    result,
                    name=name or _default_name(result.request.spec.id),
                    host=host,
                    port=port,
                    generated_by=command,
                    revision=revision,
                    served_model_name=name,
                    head_address=head_address,
                    socket_ifname=ifname,
                )
            except ValidationError as e:  # the flags checked above make this rare; never a traceback
                from qwendeploy.core.profile import describe_errors

                raise BadInput(f"These flags do not make a valid profile: {describe_errors(e)}") from None
            header = f"Generated by: {command}\n{render_plan.one_line(result)}"
            from qwendeploy.cli.launch_text import launch_specs, reach_words

            if reach := reach_words(launch_specs(result), result.chosen.dp if result.chosen else 1):
                header += f"\nClients: {reach}"
            path = write_profile(output, profile, header=header, force=force)
            if not json_out:
                from rich.console import Console

                Console(highlight=False).print(f"Wrote {path}", markup=False)


def _check_flags(
    *,
    nodes: int,
    concurrency: int,
    counts: tuple[tuple[str, int | None], ...],
    texts: tuple[tuple[str, str | None], ...],
) -> None:
    """Bounds of the flags that end up in the profile or size the search (the profile schema's own checks,
    so a bad flag fails before any planning, with the flag's name; docs/limits.md lists the bounds)."""
    from qwendeploy.core import limits
    from qwendeploy.core.field_checks import check_argument, check_host, check_ifname, check_name

    if not 1 <= nodes <= limits.MAX_NODES_CLUSTER:
        raise BadInput(f"--nodes must be between 1 and {limits.MAX_NODES_CLUSTER}, got {nodes}.")
    if concurrency > limits.MAX_CONCURRENCY:
        raise BadInput(f"--concurrency must be at most {limits.MAX_CONCURRENCY}, got {concurrency}.")
    for flag, value in counts:
        bound = limits.MAX_PARALLEL if "parallel" in flag else limits.MAX_COUNT
        if value is not None and value > bound:
            raise BadInput(f"{flag} must be at most {bound}, got {value}.")
    checks = {"--name": check_name, "--host": check_host, "--head-address": check_host, "--ifname": check_ifname}
    checks.update({"--revision": check_argument, "--quantization": check_argument, "--kv-cache-dtype": check_argument})
    for flag, text in texts:
        if text is None:
            continue
        try:
            if "\x00" in text:
                raise ValueError("holds a NUL character")
            checks[flag](text)
        except ValueError as e:
            raise BadInput(f"{flag} {limits.shown(text, 60)}: {e}.") from None


def _check_machine_size(total: int, nodes: int) -> None:
    from qwendeploy.core import limits

    if total > limits.MAX_TOTAL_GPUS:
        raise BadInput(
            f"--gpus × --nodes makes {total} GPUs ({nodes} node(s)); plans span at most {limits.MAX_TOTAL_GPUS}.",
            hint="Plan one replica's nodes; more replicas of the same plan are more copies of the profile.",
        )


def _default_name(model_id: str) -> str:
    """``Qwen/Qwen2.5-7B-Instruct`` → ``qwen2.5-7b-instruct``: a name safe for log files."""
    base = model_id.rstrip("/").rsplit("/", 1)[-1].lower()
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "-" for c in base)
    return safe[:64].strip("-._") or "qwen"  # a valid profile name (limits.NAME_RE, at most 64 characters)


def _release(asked: str | None) -> tuple[str, str]:
    """The vLLM release to plan for and why: asked, installed, or the newest modelled."""
    from qwendeploy.adapters.vllm_release import installed_vllm_version
    from qwendeploy.core.releases import NEWEST_MODELLED

    if asked is not None:
        return asked, "asked"
    installed = installed_vllm_version()
    if installed is not None:
        return installed, "installed"
    return NEWEST_MODELLED, ""
