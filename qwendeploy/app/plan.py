"""The plan use case: resolve the model and the GPUs, search placements (``--context auto`` decided here, once),
and write the chosen plan as a profile — the machine, the model, the installed vLLM and the profile file reached
through :mod:`qwendeploy.app.ports`.

``cli/plan.py`` parses the command line into one :class:`PlanOptions`, calls :func:`run_plan`, renders the plan,
then calls :func:`save_profile` for ``-o`` (rendering first, so a plan that does not fit is still shown).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from qwendeploy.core import limits
from qwendeploy.core.field_checks import check_argument, check_host, check_ifname, check_name
from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.models import ModelSpec, find_model
from qwendeploy.core.networks import DEFAULT_NETWORK
from qwendeploy.core.planner import Plan, PlanRequest, longest_shorter, plan
from qwendeploy.core.profile import Profile, describe_errors
from qwendeploy.core.profile_builder import profile_from_plan
from qwendeploy.core.releases import NEWEST_MODELLED
from qwendeploy.core.server_address import DEFAULT_HOST, DEFAULT_PORT
from qwendeploy.core.suggestions import auto_context_note, with_engine_suggestions
from qwendeploy.errors import BadInput

if TYPE_CHECKING:
    from qwendeploy.app.ports import GpuProbe, ModelSource, ProfileStore, VllmVersionSource
    from qwendeploy.core.hardware import Machine


@dataclass(frozen=True)
class PlanOptions:
    """``qwendeploy plan``'s options as given (the defaults are the command's); ``docs/reference/cli.md`` says what
    each one means."""

    model: str
    """Hugging Face repo id, catalog alias or local model directory."""
    gpus: str = "auto"
    """``auto`` or ``0,2,3`` (NVML), or a simulated inventory such as ``8xH100-80GB``."""
    nodes: int = 1
    network: str = DEFAULT_NETWORK
    head_address: str | None = None
    ifname: str | None = None
    context: str | None = None
    """As typed: tokens (``131072``, ``128K``, ``32k``), ``auto``/``-1`` (the longest that fits), None (the model's)."""
    concurrency: int = 1
    objective: Literal["throughput", "latency"] = "throughput"
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str | None = None
    dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False
    vllm_version: str | None = None
    """None: the installed vLLM's release, else the newest modelled."""
    disable_custom_all_reduce: bool = False
    allow_untrained_context: bool = False
    revision: str | None = None
    output: Path | None = None
    """Where to write the profile (None: no profile)."""
    force: bool = False
    name: str | None = None
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST

    @property
    def auto_context(self) -> bool:
        """``--context auto`` (or vLLM's spelling, ``-1``): the longest context that fits."""
        return self.context is not None and self.context.strip().lower() in ("auto", "-1")


@dataclass(frozen=True)
class PlanPorts:
    """The outside world plan needs (``cli.wiring.plan_ports`` builds the real ones)."""

    gpus: GpuProbe
    models: ModelSource
    vllm_version: VllmVersionSource
    profiles: ProfileStore


_INT_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")
_PROBED = re.compile(r"\s*(auto|\d+(\s*,\s*\d+)*)\s*")
"""``--gpus`` values that name this machine's GPUs (NVML) rather than a simulated inventory."""


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


def run_plan(ports: PlanPorts, opts: PlanOptions) -> Plan:
    """Check the options, resolve the model and the inventory, and plan; a plan that does not fit is returned
    (with the changes that would fit), not raised, so that it can be shown.

    Raises:
        BadInput: an option out of bounds or malformed (before any planning), or a fixed choice the planner
            refuses; UnknownModel / ProbeError from the ports; ProfileExists for an ``output`` that is there
            without ``force`` (before any planning).
    """
    target = parse_tokens(opts.context) if opts.context is not None and not opts.auto_context else None
    _check_options(opts)
    if opts.output is not None:
        ports.profiles.check_target(opts.output, opts.force)  # a bad -o fails before any planning or output
    spec = _model(ports.models, opts.model, opts.revision)
    machine = _machine(ports.gpus, opts.gpus, opts.nodes)
    _check_machine_size(len(machine.gpus), opts.nodes)
    version, version_source = _release(ports.vllm_version, opts.vllm_version)
    req = PlanRequest(
        spec=spec,
        machine=machine,
        max_model_len=target,
        concurrency=opts.concurrency,
        objective=opts.objective,
        tp=opts.tp,
        pp=opts.pp,
        dp=opts.dp,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        max_num_seqs=opts.max_num_seqs,
        max_num_batched_tokens=opts.max_num_batched_tokens,
        kv_cache_dtype=opts.kv_cache_dtype,
        dtype=opts.dtype,
        quantization=opts.quantization,
        enforce_eager=opts.enforce_eager,
        vllm_version=version,
        vllm_version_source=version_source,
        allow_untrained_context=opts.allow_untrained_context,
        disable_custom_all_reduce=opts.disable_custom_all_reduce,
        network=opts.network,
        variants=variants(spec) if spec.source == "catalog" else (),
    )
    result = plan_auto_context(req) if opts.auto_context else plan(req)
    return with_engine_suggestions(result)  # nothing fits: engine changes that would, and why


def plan_auto_context(req: PlanRequest) -> Plan:
    """vLLM's ``--max-model-len auto``: the model's own window where it fits, else the longest context that fits
    memory (the planner's ``max_model_len_fit`` of the best shorter candidate), planned at that length; a note
    says which and why."""
    # Without suggestions first: they are re-plans, wasted when a shorter context fits (the usual case here).
    result = plan(req, suggest=False)
    if result.fits:
        return replace(result, notes=(auto_context_note(result, shortened=False), *result.notes))
    longest = longest_shorter(result.candidates)
    if not longest:
        return plan(req)  # nothing fits even a short context: the plan says why, and what would fit
    result = plan(replace(req, max_model_len=longest))
    return replace(result, notes=(auto_context_note(result, shortened=True), *result.notes))


def save_profile(ports: PlanPorts, opts: PlanOptions, result: Plan, summary: str = "") -> Path:
    """Write ``result``'s chosen placement to ``opts.output`` as a profile, headed by the command that made it and
    ``summary`` (the plan in a line or two); returns the path written.

    Raises:
        BadInput: the options do not make a valid profile (the option checks make this rare).
        PlanInfeasible: nothing fits.
        ProfileExists / WriteFailed: from the profile store.
    """
    if opts.output is None:
        raise BadInput("No --output file to write the profile to.")
    command = command_line(opts)
    profile = build_profile(opts, result, generated_by=command)
    header = f"Generated by: {command}" + (f"\n{summary}" if summary else "")
    return ports.profiles.write(opts.output, profile, header, opts.force)


def build_profile(opts: PlanOptions, result: Plan, *, generated_by: str | None = None) -> Profile:
    """The profile of ``result``'s chosen placement with the options that go into it (name, server, cluster).

    Raises:
        BadInput: the options do not make a valid profile. PlanInfeasible: nothing fits.
    """
    try:
        return profile_from_plan(
            result,
            name=opts.name or default_name(result.request.spec.id),
            host=opts.host,
            port=opts.port,
            generated_by=generated_by,
            revision=opts.revision,
            served_model_name=opts.name,
            head_address=opts.head_address,
            socket_ifname=opts.ifname,
        )
    except ValidationError as e:  # the option checks make this rare; never a traceback
        raise BadInput(f"These flags do not make a valid profile: {describe_errors(e)}") from None


_FLAGS: tuple[tuple[str, str], ...] = (
    ("tp", "--tp"),
    ("pp", "--pp"),
    ("dp", "--dp"),
    ("gpu_memory_utilization", "--gpu-memory-utilization"),
    ("max_num_seqs", "--max-num-seqs"),
    ("max_num_batched_tokens", "--max-num-batched-tokens"),
    ("kv_cache_dtype", "--kv-cache-dtype"),
    ("dtype", "--dtype"),
    ("quantization", "--quantization"),
    ("enforce_eager", "--enforce-eager"),
    ("vllm_version", "--vllm-version"),
    ("allow_untrained_context", "--allow-untrained-context"),
    ("disable_custom_all_reduce", "--disable-custom-all-reduce"),
    ("revision", "--revision"),
    ("name", "--name"),
    ("port", "--port"),
    ("host", "--host"),
    ("network", "--network"),
    ("head_address", "--head-address"),
    ("ifname", "--ifname"),
)
"""The options a profile's ``generated_by`` repeats after the model, GPUs, nodes, context, concurrency and
objective, in this order, each only when it differs from the command's default."""


def command_line(opts: PlanOptions) -> str:
    """The ``qwendeploy plan`` command that reproduces ``opts`` (options left at their default are left out)."""
    defaults = {f.name: f.default for f in fields(PlanOptions)}
    parts = ["qwendeploy", "plan", opts.model, "--gpus", opts.gpus]
    if opts.nodes != 1:
        parts += ["--nodes", str(opts.nodes)]
    if opts.context is not None:
        parts += ["--context", opts.context]
    if opts.concurrency != 1:
        parts += ["--concurrency", str(opts.concurrency)]
    if opts.objective != "throughput":
        parts += ["--objective", opts.objective]
    for attr, flag in _FLAGS:
        value = getattr(opts, attr)
        if value == defaults[attr]:  # each default is None, False or the command's default value
            continue
        parts += [flag] if value is True else [flag, str(value)]
    if opts.output is not None:
        parts += ["-o", str(opts.output)]
    return shlex.join(parts)


def default_name(model_id: str) -> str:
    """``Qwen/Qwen2.5-7B-Instruct`` → ``qwen2.5-7b-instruct``: a name safe for log files."""
    base = model_id.rstrip("/").rsplit("/", 1)[-1].lower()
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "-" for c in base)
    return safe[:64].strip("-._") or "qwen"  # a valid profile name (limits.NAME_RE, at most 64 characters)


def variants(spec: ModelSpec) -> tuple[ModelSpec, ...]:
    """Other official checkpoints of a catalog model, tried when nothing fits: for a quantized one its 16-bit base
    first (an FP8 checkpoint cannot run on a card older than compute capability 8.0), then the quantized ones."""
    out: list[ModelSpec] = []
    base_id = spec.id
    if spec.base_model and (base := find_model(spec.base_model)) is not None:
        out.append(base)
        base_id = base.id
    for suffix in ("-FP8", "-AWQ", "-GPTQ-Int8", "-GPTQ-Int4"):
        v = find_model(base_id + suffix)
        if v is not None and v.id != spec.id:
            out.append(v)
    return tuple(out)


def _model(source: ModelSource, ref: str, revision: str | None) -> ModelSpec:
    """A catalog model by id or alias without the port (no Hub client loaded); anything else from the port."""
    found = find_model(ref)
    return found if found is not None else source(ref, revision)


def _machine(probe: GpuProbe, gpus: str, nodes: int) -> Machine:
    """The inventory: a simulated ``NxNAME``, or this machine's GPUs (``auto`` / ``0,2,3``) from the probe."""
    if _PROBED.fullmatch(gpus):
        from qwendeploy.core.cluster import replicate_nodes

        # --gpus auto --nodes N: N identical nodes like this one.
        return replicate_nodes(probe(gpus.strip()), nodes)
    return parse_inventory(gpus, nodes)


def _release(installed: VllmVersionSource, asked: str | None) -> tuple[str, str]:
    """The vLLM release to plan for and why: asked, installed, or the newest modelled."""
    if asked is not None:
        return asked, "asked"
    version = installed()
    if version is not None:
        return version, "installed"
    return NEWEST_MODELLED, ""


def _check_options(opts: PlanOptions) -> None:
    """Bounds of the options that end up in the profile or size the search (the profile schema's own checks, so a
    bad option fails before any planning, with the flag's name; docs/limits.md lists the bounds)."""
    if not 1 <= opts.port <= 65535:
        raise BadInput(f"--port must be between 1 and 65535, got {opts.port}.")
    if not 1 <= opts.nodes <= limits.MAX_NODES_CLUSTER:
        raise BadInput(f"--nodes must be between 1 and {limits.MAX_NODES_CLUSTER}, got {opts.nodes}.")
    if opts.concurrency > limits.MAX_CONCURRENCY:
        raise BadInput(f"--concurrency must be at most {limits.MAX_CONCURRENCY}, got {opts.concurrency}.")
    counts = (
        ("--tensor-parallel-size", opts.tp, limits.MAX_PARALLEL),
        ("--pipeline-parallel-size", opts.pp, limits.MAX_PARALLEL),
        ("--data-parallel-size", opts.dp, limits.MAX_PARALLEL),
        ("--max-num-seqs", opts.max_num_seqs, limits.MAX_COUNT),
        ("--max-num-batched-tokens", opts.max_num_batched_tokens, limits.MAX_COUNT),
    )
    for flag, value, bound in counts:
        if value is not None and value > bound:
            raise BadInput(f"{flag} must be at most {bound}, got {value}.")
    texts = (
        ("--name", opts.name, check_name),
        ("--host", opts.host, check_host),
        ("--head-address", opts.head_address, check_host),
        ("--ifname", opts.ifname, check_ifname),
        ("--revision", opts.revision, check_argument),
        ("--quantization", opts.quantization, check_argument),
        ("--kv-cache-dtype", opts.kv_cache_dtype, check_argument),
    )
    for flag, text, check in texts:
        if text is None:
            continue
        try:
            if "\x00" in text:
                raise ValueError("holds a NUL character")
            check(text)
        except ValueError as e:
            raise BadInput(f"{flag} {limits.shown(text, 60)}: {e}.") from None


def _check_machine_size(total: int, nodes: int) -> None:
    if total > limits.MAX_TOTAL_GPUS:
        raise BadInput(
            f"--gpus × --nodes makes {total} GPUs ({nodes} node(s)); plans span at most {limits.MAX_TOTAL_GPUS}.",
            hint="Plan one replica's nodes; more replicas of the same plan are more copies of the profile.",
        )
