"""The deployment profile: a versioned YAML file written by ``plan`` and read by ``serve`` and ``doctor``.

Field names follow the vLLM flags they become (``tensor_parallel_size`` → ``--tensor-parallel-size``), so
``vllm_args.py`` is a table rather than a translation layer. Every field has a default and a docstring;
the docstrings are the JSON Schema descriptions that docs/reference/profile.md is generated from.
Secrets never live here: ``server.api_key_env`` names an environment variable.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qwendeploy.core import limits, safe_yaml
from qwendeploy.core.field_checks import _check_text, _no_leading_dash, check_env_name, check_ifname, check_name
from qwendeploy.core.field_checks import check_host as check_host  # re-exported: app/serve.py imports it from here
from qwendeploy.core.limits import (
    MAX_COUNT,
    MAX_GRACE_S,
    MAX_LIST,
    MAX_MODEL_LEN,
    MAX_NODES_CLUSTER,
    MAX_PARALLEL,
    MAX_RESTARTS,
    MAX_SECONDS,
)
from qwendeploy.core.memory.accounting import DEFAULT_GPU_MEMORY_UTILIZATION
from qwendeploy.core.networks import DEFAULT_NETWORK
from qwendeploy.core.server_address import DEFAULT_HOST, DEFAULT_PORT
from qwendeploy.errors import BadInput, ProfileInvalid

PROFILE_VERSION = 1
SCHEMA_ID = "urn:qwendeploy:profile:v1"
SCHEMA_FILE = "profile.schema.json"
"""Editors look for the schema beside the profile; ``qwendeploy schema > profile.schema.json`` writes it."""


def describe_errors(e: ValidationError) -> str:
    """A pydantic error as one line per field (at most five), quoting values cut short, never the document."""
    errors = e.errors()
    problems = "; ".join(_describe(err) for err in errors[:5])
    return problems + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")


def _json_value(value: Any, path: str, depth: int = 0) -> None:
    """hf_overrides goes to vLLM as JSON: only JSON values (no dates, sets, bytes, NaN)."""
    if depth > limits.MAX_DEPTH:
        raise ValueError(f"{path} nests too deeply")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{path} is {value!r}, not a finite number")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _json_value(v, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path} has the key {limits.shown(k)}, not a string")
            _json_value(v, f"{path}.{k}", depth + 1)
        return
    raise ValueError(f"{path} is a {type(value).__name__} ({limits.shown(value)}); only JSON values are allowed")


class _Section(BaseModel):
    # Field docstrings are read when the JSON Schema is asked for (json_schema), not by pydantic's
    # use_attribute_docstrings at import, which parses this file for every class: half of the import, paid by
    # every plan and serve that never shows a description.
    # defer_build: the schema is built on the first validation (a profile read, or written by plan -o), not at
    # import; plan shows its launch command from a profile it constructs unvalidated (profile_builder, checked=False).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)

    @model_validator(mode="after")
    def _strings(self) -> Any:
        """Every string of the section: no NUL, bounded length, no control character in one-line fields."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, str):
                _check_text(name, value)
            elif isinstance(value, list):
                if len(value) > MAX_LIST:
                    raise ValueError(f"{name} has more than {MAX_LIST} entries")
                for v in value:
                    if isinstance(v, str):
                        _check_text(name, v)
            elif isinstance(value, dict):
                if len(value) > MAX_LIST:
                    raise ValueError(f"{name} has more than {MAX_LIST} entries")
                for k, v in value.items():
                    if isinstance(k, str):
                        _check_text(f"{name} key", k)
                    if isinstance(v, str):
                        _check_text(f"{name}.{k}", v)
        return self


class ModelSection(_Section):
    id: str = Field(min_length=1)
    """Hugging Face repo id, or the local checkpoint directory vLLM loads (the positional ``vllm serve MODEL``)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) → --revision."""
    dtype: Literal["auto", "bfloat16", "float16", "half", "float", "float32"] = "auto"
    """Weight and activation dtype → --dtype."""
    quantization: str | None = None
    """Quantization method (awq, gptq, fp8, …) → --quantization; None lets vLLM read it from the checkpoint."""
    max_model_len: int = Field(default=32768, ge=16, le=MAX_MODEL_LEN)
    """Longest request (prompt + output) in tokens → --max-model-len."""
    hf_overrides: dict[str, Any] | None = None
    """Overrides merged into config.json → --hf-overrides (JSON). Long-context YaRN goes here."""
    trust_remote_code: bool = False
    """→ --trust-remote-code. Qwen2/2.5/3 do not need it."""

    @field_validator("id", "revision", "quantization")
    @classmethod
    def _not_a_flag(cls, v: str | None) -> str | None:
        return _no_leading_dash(v)

    @field_validator("hf_overrides")
    @classmethod
    def _json_only(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _json_value(v, "hf_overrides")
        return v


class PlacementSection(_Section):
    tensor_parallel_size: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    """GPUs that shard every layer → --tensor-parallel-size. Must divide num_attention_heads."""
    pipeline_parallel_size: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    """Stages that split the layers → --pipeline-parallel-size."""
    data_parallel_size: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    """Independent replicas; each gets tensor_parallel_size × pipeline_parallel_size GPUs."""
    data_parallel_mode: Literal["servers", "vllm"] = "servers"
    """``servers``: one vLLM server per replica on its own GPUs and port (port, port+1, …), each supervised.
    ``vllm``: one server with vLLM's own --data-parallel-size (one endpoint; vLLM balances)."""
    gpus: list[str] = Field(default_factory=list)
    """GPU indices (NVML/PCI order) or UUIDs → CUDA_VISIBLE_DEVICES. Empty: the first N GPUs."""
    nodes: int = Field(default=1, ge=1, le=MAX_NODES_CLUSTER)
    """Machines the placement spans (multi-node runs on Ray)."""
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    """→ --distributed-executor-backend. None lets vLLM choose (mp on one host)."""
    data_parallel_backend: Literal["mp", "ray"] | None = None
    """→ --data-parallel-backend (with data_parallel_mode ``vllm``). ``ray`` places the replicas of a
    multi-node plan on the Ray cluster's nodes; None: vLLM's default (mp, one host)."""

    @field_validator("gpus")
    @classmethod
    def _gpu_ids(cls, v: list[str]) -> list[str]:
        for g in v:
            if not limits.GPU_ID_RE.fullmatch(g.strip()):
                raise ValueError(
                    f"entry {limits.shown(g, 40)} is not a GPU index (0, 1, …) or an NVML UUID (GPU-…, MIG-…)"
                )
        return v

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def world_size(self) -> int:
        return self.gpus_per_replica * self.data_parallel_size


class ClusterSection(_Section):
    """Multi-node settings (placement.nodes > 1): how the Ray cluster is started on every node."""

    head_address: str | None = None
    """Address (IP or host name) of the head node as the other nodes reach it. None: not known yet —
    ``qwendeploy cluster join HEAD_ADDRESS PROFILE`` takes it on its command line; ``plan --head-address``
    writes it here."""
    ray_port: int = Field(default=6379, ge=1, le=65535)
    """Port of the Ray head (GCS) → ``ray start --head --port``; workers join HEAD_ADDRESS:ray_port."""
    socket_ifname: str | None = None
    """Network interface NCCL and Gloo use between nodes → NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME on every
    node (e.g. eth0, ens5f0np0; never ``lo`` across nodes). None: NCCL and Gloo guess, and often pick a docker
    bridge or a management NIC the other nodes cannot reach."""
    set_host_ip: bool = True
    """``cluster head``/``join`` export VLLM_HOST_IP as this node's own address (on socket_ifname, or
    --node-ip), so vLLM and Ray agree on it. Each node gets its own value, so it is not stored here."""
    gpus_per_node: int | None = Field(default=None, ge=0, le=MAX_PARALLEL)
    """GPUs each node declares to Ray → ``ray start --num-gpus``. None: Ray counts the node's GPUs."""
    network: str = DEFAULT_NETWORK
    """Inter-node link the plan assumed (``plan --network``: 25gbe, 100gbe, 400gbe, ib-hdr, ib-ndr)."""

    @field_validator("head_address")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return None if v is None else check_host(v)

    @field_validator("socket_ifname")
    @classmethod
    def _ifname(cls, v: str | None) -> str | None:
        return None if v is None else check_ifname(v)


class EngineSection(_Section):
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0.0, le=1.0)
    """Fraction of each GPU's memory vLLM may use → --gpu-memory-utilization (vLLM's default is 0.92)."""
    max_num_seqs: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    """Requests batched at once → --max-num-seqs. None: vLLM's default."""
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    """Tokens per scheduler step (prefill chunk) → --max-num-batched-tokens. None: vLLM's default (8192)."""
    kv_cache_dtype: str = "auto"
    """KV-cache element type → --kv-cache-dtype (auto = model dtype; fp8 halves KV memory)."""
    block_size: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    """KV-cache block in tokens → --block-size. None: vLLM's default (16)."""
    enforce_eager: bool = False
    """→ --enforce-eager: no CUDA graphs and no torch.compile (less memory, slower decode)."""
    enable_prefix_caching: bool | None = None
    """→ --enable-prefix-caching / --no-enable-prefix-caching. None: vLLM's default (on)."""
    disable_custom_all_reduce: bool = False
    """→ --disable-custom-all-reduce (use NCCL's all-reduce; for PCIe cards without P2P)."""
    extra_args: list[str] = Field(default_factory=list)
    """Further vLLM flags passed verbatim, e.g. ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]."""

    @field_validator("kv_cache_dtype")
    @classmethod
    def _not_a_flag(cls, v: str) -> str:
        return _no_leading_dash(v) or v


class ServerSection(_Section):
    host: str = DEFAULT_HOST
    """Address to bind → --host. Anything but loopback needs api_key_env (or serve --insecure)."""
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """TCP port → --port (data-parallel servers use port, port+1, …)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key → --api-key. The key itself is never stored."""
    served_model_name: str | None = None
    """Name clients send as "model" → --served-model-name. None: the model id."""
    ready_timeout_s: float = Field(default=900.0, gt=0, le=MAX_SECONDS)
    """Seconds from launch until /health must answer 200 (first boots compile kernels: allow minutes)."""
    health_interval_s: float = Field(default=5.0, gt=0, le=MAX_SECONDS)
    """Seconds between /health probes once ready."""
    health_failures: int = Field(default=3, ge=1, le=MAX_COUNT)
    """Consecutive failed probes that count as a crash."""
    shutdown_grace_s: float = Field(default=30.0, ge=0, le=MAX_GRACE_S)
    """Seconds between SIGTERM and SIGKILL to the server's process group."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not limits.ENV_NAME_RE.fullmatch(v):
            raise ValueError("must be an environment variable name (letters, digits, underscore), not a key")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)

    @field_validator("served_model_name")
    @classmethod
    def _not_a_flag(cls, v: str | None) -> str | None:
        return _no_leading_dash(v)


class RestartSection(_Section):
    policy: Literal["on-failure", "never", "always"] = "on-failure"
    """When to restart a server: on-failure (any exit serve did not ask for, exit 0 included, or failed health;
    a start-up failure that would repeat is not restarted), never, always (same as on-failure: a server never
    finishes on its own)."""
    max_restarts: int = Field(default=5, ge=0, le=MAX_RESTARTS)
    """Restarts before giving up (exit 1); counted since the server was last stable (reset_after_s)."""
    backoff_initial_s: float = Field(default=2.0, ge=0, le=MAX_SECONDS)
    """Delay before the first restart; doubles each time."""
    backoff_max_s: float = Field(default=60.0, ge=0, le=MAX_SECONDS)
    """Upper bound of the delay."""
    reset_after_s: float = Field(default=600.0, ge=0, le=MAX_SECONDS)
    """A server ready (and healthy) this long is stable: the restart count and the backoff start again from zero."""


class GpuEstimate(_Section):
    weights_bytes: int = 0
    """Weight shard on this GPU."""
    activation_bytes: int = 0
    """Peak activations of vLLM's profiling forward pass."""
    overhead_bytes: int = 0
    """Non-torch memory (NCCL/custom all-reduce buffers) and CUDA graphs where the release counts them in the
    budget."""
    kv_cache_bytes: int = 0
    """KV-cache pool."""
    total_bytes: int = 0
    """weights + activation + overhead + KV cache: everything in vLLM's budget (≤ capacity_bytes)."""
    capacity_bytes: int = 0
    """gpu_memory_utilization × the GPU's total (CUDA runtime's total)."""
    footprint_bytes: int = 0
    """The whole vLLM process on this GPU while serving, as nvidia-smi shows it: the budget's contents plus the
    CUDA context, CUDA graphs captured outside the budget and working memory. Free memory must cover it
    (0 in profiles written before it existed: use total_bytes)."""


class EstimateSection(_Section):
    kv_cache_tokens: int = 0
    """Tokens the KV cache holds per replica (vLLM: "GPU KV cache size: N tokens")."""
    max_concurrency: float = 0.0
    """Full-length requests one replica holds at once ("Maximum concurrency for L tokens per request")."""
    per_gpu: list[GpuEstimate] = Field(default_factory=list)
    """One entry per GPU of a replica."""
    vllm_version: str | None = None
    """vLLM release whose accounting the estimate follows."""


class HardwareSection(_Section):
    fingerprint: str = ""
    """Hash of the GPUs planned for (names, memory, count, interconnect); serve warns when it differs."""
    gpus: list[str] = Field(default_factory=list)
    """Card names planned for, in order."""
    interconnect: Literal["nvlink", "pcie"] = "pcie"
    """NVLink or PCIe between the GPUs."""
    simulated: bool = False
    """True when planned for a simulated inventory (--gpus NxNAME)."""


class Profile(_Section):
    """A qwendeploy deployment profile (version 1)."""

    version: Literal[1] = 1
    """Profile format version."""
    name: str = "qwen"
    """Names the log and lock files (<name>.<run>.<n>.log, one per start): 1-64 letters, digits, ``.``, ``_``,
    ``-``, starting with a letter or digit. plan derives it from the model."""
    generated_by: str | None = None
    """The qwendeploy plan command that wrote this profile (curated profiles are regenerated from it)."""
    model: ModelSection
    """What to serve."""
    placement: PlacementSection = Field(default_factory=PlacementSection)
    """How the model is spread over GPUs."""
    engine: EngineSection = Field(default_factory=EngineSection)
    """vLLM engine arguments."""
    server: ServerSection = Field(default_factory=ServerSection)
    """The OpenAI-compatible HTTP server and its supervision."""
    restart: RestartSection = Field(default_factory=RestartSection)
    """Restart policy of the supervisor."""
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    """Ray cluster settings for multi-node placements (ignored on one node)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for the server (NCCL_*, VLLM_*). No secrets: name them in server.api_key_env."""
    estimate: EstimateSection = Field(default_factory=EstimateSection)
    """What plan predicted (informational; serve's preflight compares free memory against it)."""
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    """The hardware the profile was planned for."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            check_env_name(k)
        return v


def json_schema() -> dict[str, Any]:
    """JSON Schema of the profile, for editors (``# yaml-language-server: $schema=...``) and the docs; each field's
    docstring is its description."""
    schema = Profile.model_json_schema()
    docs = field_docstrings()
    for model, where in [("Profile", schema), *schema.get("$defs", {}).items()]:
        properties = where.get("properties", {})
        for name, prop in properties.items():
            if doc := docs.get(model, {}).get(name):
                properties[name] = dict(sorted({**prop, "description": doc}.items()))  # pydantic sorts the keys
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    return schema


def field_docstrings() -> dict[str, dict[str, str]]:
    """Class name → field → the string literal right under the field, cleaned as ``inspect.cleandoc`` does: the
    attribute docstrings pydantic's ``use_attribute_docstrings`` reads, from this module's source."""
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(inspect.getsource(sys.modules[__name__])).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return out


_OMIT_WHEN_DEFAULT: tuple[tuple[str, ...], ...] = (("cluster",), ("placement", "data_parallel_backend"))
"""Fields added for multi-node plans: left out of the YAML while they hold their default, so single-node
profiles read exactly as before (loading fills the defaults back in)."""


def dump_yaml(profile: Profile, *, header: str | None = None) -> str:
    """Serialise a profile; ``header`` lines become leading comments (e.g. the command that wrote it)."""
    import yaml  # here, not at import: a plan that writes no profile needs no YAML (~15 ms of imports)

    data = profile.model_dump(mode="json", exclude_none=False)
    defaults = Profile(model=profile.model).model_dump(mode="json", exclude_none=False)
    for path in _OMIT_WHEN_DEFAULT:
        *parents, key = path
        here, base = data, defaults
        for part in parents:
            here, base = here[part], base[part]
        if here.get(key) == base.get(key):
            here.pop(key, None)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True)
    lines = [f"# yaml-language-server: $schema={SCHEMA_FILE}"]
    if header:
        lines += [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join(lines) + "\n" + body


def _field_names(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Known field names at ``loc`` (for did-you-mean on an unknown key)."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        ann = info.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return []
        current = nxt
    return list(current.model_fields)


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    path = ".".join(limits.shown(p, 60) if not isinstance(p, str) else p[:60] for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        known = _field_names(Profile, loc)
        close = difflib.get_close_matches(str(loc[-1])[:60], known, n=1, cutoff=0.6)
        tip = f" Did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
        return f"{path}: unknown field.{tip}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing" or isinstance(err.get("input"), dict):
        return f"{path}: {msg}"  # the input is the enclosing mapping: never repeat the document
    return f"{path}: {msg} (got {limits.shown(err.get('input'))})"


def load_yaml(text: str, *, source: str = "profile") -> Profile:
    """Parse and validate a profile (the safe loader only: no Python tags). Errors name the field path and a close key.

    Raises:
        ProfileInvalid: the text is not YAML, not a mapping, or does not validate.
    """
    try:
        data = safe_yaml.load_bounded(text, source)
    except BadInput as e:
        raise ProfileInvalid(e.message, hint=e.hint) from None
    if not isinstance(data, dict):
        raise ProfileInvalid(f"{source} must be a YAML mapping with version, model, placement, … at the top.")
    version = data.get("version")
    if version != PROFILE_VERSION:
        raise ProfileInvalid(
            f"{source} has version {limits.shown(version)}; this qwendeploy reads version {PROFILE_VERSION}.",
            hint="Regenerate it with `qwendeploy plan ... -o PROFILE --force`.",
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise ProfileInvalid(f"{source} is not a valid profile: {describe_errors(e)}") from None
