"""Profile → ``vllm serve`` command lines and environments. PURE: values in, values out.

The mapping between profile fields and vLLM flags is one table (``FLAGS``); every flag is written with its
full canonical name (vLLM's parser accepts prefixes such as ``--tensor-parallel``, we never rely on that).
Checked against ``vllm serve --help`` of vLLM 0.33 (see /work/shared/reference/vllm.md and the optional
oracle test ``tests/test_vllm_argv_oracle.py``).

Data parallelism (``placement.data_parallel_size > 1``) has two modes, chosen by
``placement.data_parallel_mode`` (docs/serving.md explains the choice):

* ``vllm`` (what ``plan`` writes where the release has it, ``one_endpoint_dp``): one server with
  ``--data-parallel-size N`` over all GPUs; one endpoint, vLLM balances requests over the replicas (its internal
  load balancer; vLLM's data-parallel deployment guide, present since the 0.12 docs: "This will work with both
  dense and MoE models"). The help's "MoE only" warnings are about external load balancing (``--data-parallel-rank``
  / ``--data-parallel-external-lb``), which qwendeploy never uses.
* ``servers`` (the profile field's default, older releases): N independent ``vllm serve`` processes, each on its
  own disjoint GPU set and on port, port+1, …; each one is supervised separately, a crash takes down one replica
  only, and clients need a load balancer in front.

Secrets: the API key is read from ``base_env[profile.server.api_key_env]`` and handed to vLLM in the child's
environment as ``VLLM_API_KEY`` (vLLM 0.33 reads it when ``--api-key`` is absent:
``args.api_key or [envs.VLLM_API_KEY]``), never on the command line, where any local user could read it with
``ps``. Renderings show it as ``VLLM_API_KEY="$NAME"``; ``redact_env`` hides the value of every secret-looking
variable (``SECRET_NAME``), and log streams are scrubbed of those values (``LaunchSpec.secret_values``).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qwendeploy.core.launch_env import cluster_env
from qwendeploy.core.launch_env import vllm_env_switches as vllm_env_switches  # public here since before the split
from qwendeploy.core.profile import Profile
from qwendeploy.errors import BadInput

REDACTED = "***"

FlagKind = Literal["value", "flag", "tristate", "json"]


@dataclass(frozen=True)
class FlagRule:
    """One profile field and the vLLM flag it becomes.

    kind: ``value`` → ``--flag VALUE`` unless the value is None or ``skip``; ``flag`` → ``--flag`` when true;
    ``tristate`` → ``--flag`` / ``--no-flag`` / nothing for None; ``json`` → ``--flag '<compact JSON>'``.
    """

    section: str
    field: str
    flag: str
    kind: FlagKind = "value"
    skip: tuple[Any, ...] = ()
    """Values that mean "vLLM's default": no flag is written."""


FLAGS: tuple[FlagRule, ...] = (
    FlagRule("model", "revision", "--revision"),
    FlagRule("model", "dtype", "--dtype", skip=("auto",)),
    FlagRule("model", "quantization", "--quantization"),
    FlagRule("model", "max_model_len", "--max-model-len"),
    FlagRule("model", "hf_overrides", "--hf-overrides", kind="json", skip=({},)),
    FlagRule("model", "trust_remote_code", "--trust-remote-code", kind="flag"),
    FlagRule("placement", "tensor_parallel_size", "--tensor-parallel-size"),
    FlagRule("placement", "pipeline_parallel_size", "--pipeline-parallel-size"),
    FlagRule("placement", "distributed_executor_backend", "--distributed-executor-backend"),
    FlagRule("placement", "data_parallel_backend", "--data-parallel-backend"),
    FlagRule("engine", "gpu_memory_utilization", "--gpu-memory-utilization"),
    FlagRule("engine", "max_num_seqs", "--max-num-seqs"),
    FlagRule("engine", "max_num_batched_tokens", "--max-num-batched-tokens"),
    FlagRule("engine", "kv_cache_dtype", "--kv-cache-dtype", skip=("auto",)),
    FlagRule("engine", "block_size", "--block-size"),
    FlagRule("engine", "enforce_eager", "--enforce-eager", kind="flag"),
    FlagRule("engine", "enable_prefix_caching", "--enable-prefix-caching", kind="tristate"),
    FlagRule("engine", "disable_custom_all_reduce", "--disable-custom-all-reduce", kind="flag"),
)
"""Profile field → vLLM flag. Server flags (--host, --port, --served-model-name, --api-key) and
--data-parallel-size depend on the replica and are added by ``build_launch_specs``."""


@dataclass(frozen=True)
class RemovedFlag:
    """What replaces a flag current vLLM rejects: on a ``vllm serve`` command line, and in a qwendeploy profile
    (None: nothing, drop it)."""

    serve: str | None
    profile: str | None


_HF_OVERRIDES = "--hf-overrides with the same JSON under the config's key (a qwendeploy profile: model.hf_overrides)"
_DROP = RemovedFlag(None, None)

REMOVED_FLAGS: Mapping[str, RemovedFlag] = {
    "--rope-scaling": RemovedFlag(_HF_OVERRIDES, "model.hf_overrides (rope_parameters)"),
    "--rope-theta": RemovedFlag(_HF_OVERRIDES, "model.hf_overrides (rope_parameters.rope_theta)"),
    "--swap-space": _DROP,
    "--max-seq-len-to-capture": RemovedFlag("--max-cudagraph-capture-size", "--max-cudagraph-capture-size"),
    "--cuda-graph-sizes": RemovedFlag("--cudagraph-capture-sizes", "--cudagraph-capture-sizes"),
    "--num-scheduler-steps": _DROP,
    "--use-v2-block-manager": _DROP,
    "--worker-use-ray": RemovedFlag(
        "--distributed-executor-backend ray", "placement.distributed_executor_backend: ray"
    ),
    "--engine-use-ray": RemovedFlag(
        "--distributed-executor-backend ray", "placement.distributed_executor_backend: ray"
    ),
    "--preemption-mode": _DROP,
    "--tokenizer-pool-size": _DROP,
    "--disable-frontend-multiprocessing": _DROP,
    "--disable-async-output-proc": _DROP,
    "--guided-decoding-backend": RemovedFlag("--structured-outputs-config", "--structured-outputs-config"),
    "--speculative-model": RemovedFlag("--speculative-config", "--speculative-config"),
    "--num-speculative-tokens": RemovedFlag("--speculative-config", "--speculative-config"),
    "--task": RemovedFlag("--runner / --convert", "--runner / --convert"),
    "--device": RemovedFlag("CUDA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES (placement.gpus)"),
}
"""Flags older vLLM releases had and vLLM 0.33 rejects ("unrecognized arguments", exit 2)."""

OWNED_FLAGS: frozenset[str] = frozenset(
    {r.flag for r in FLAGS}
    | {"--host", "--port", "--served-model-name", "--api-key", "--data-parallel-size", "--model"}
    | {"--no-enable-prefix-caching", "--disable-prefix-caching", "-tp", "-pp", "-dp"}
)
"""Flags the profile sets; engine.extra_args may not repeat them (the last one would silently win)."""

API_KEY_VAR = "VLLM_API_KEY"
"""The variable vLLM reads its API key from when ``--api-key`` is absent (native and docker launches)."""

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
"""Environment variable names whose values are never printed."""


@dataclass(frozen=True)
class LaunchSpec:
    """One server process to start: its exact argv and complete environment.

    ``env`` is the full environment of the child (base environment plus ``env_set``); ``env_set`` holds only
    what qwendeploy added or changed, for display (render it with ``redact_env``: it holds ``VLLM_API_KEY``
    when the profile names a key). ``argv`` never holds a secret.
    """

    argv: tuple[str, ...]
    env: dict[str, str]
    host: str
    port: int
    served_model_name: str
    gpus: tuple[str, ...]
    replica: int
    name: str
    env_set: dict[str, str] = field(default_factory=dict)
    api_key_env: str | None = None
    """Name of the variable the key came from (None: no key)."""
    secret_values: tuple[str, ...] = ()
    """Values that must never be printed (the API key, secret-looking profile env values); log streams are
    scrubbed of them too."""
    api_key: str | None = None
    """The key vLLM gets as ``VLLM_API_KEY`` (the health probe needs it for /v1/models)."""


DP_ONE_ENDPOINT_SINCE = (0, 12)
"""First release whose documentation has ``vllm serve --data-parallel-size N`` with its internal load balancer for
dense models (docs.vllm.ai/en/v0.12.0/serving/data_parallel_deployment)."""


def release_tuple(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", version)
    return tuple(int(x) for x in parts[:3])


def one_endpoint_dp(vllm_version: str) -> bool:
    """Whether vLLM ``vllm_version`` serves N data-parallel replicas behind one endpoint."""
    return release_tuple(vllm_version) >= DP_ONE_ENDPOINT_SINCE


def gpu_ids(profile: Profile) -> tuple[str, ...]:
    """The GPUs the profile uses on this host, in order: ``placement.gpus`` or the first world_size indices.

    Raises:
        BadInput: the list has the wrong length or repeats a GPU.
    """
    p = profile.placement
    world = p.world_size
    if not p.gpus:
        return tuple(str(i) for i in range(world))
    gpus = tuple(str(g).strip() for g in p.gpus)
    if len(set(gpus)) != len(gpus):
        raise BadInput(f"placement.gpus lists a GPU twice: {', '.join(gpus)}.")
    if len(gpus) != world:
        raise BadInput(
            f"placement.gpus lists {len(gpus)} GPU(s) but the placement needs {world} "
            f"(tensor_parallel_size {p.tensor_parallel_size} × pipeline_parallel_size "
            f"{p.pipeline_parallel_size} × data_parallel_size {p.data_parallel_size}).",
            hint="List exactly that many GPU indices, or leave placement.gpus empty to use the first ones.",
        )
    return gpus


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def profile_flags(profile: Profile) -> list[str]:
    """The engine/model/placement flags of ``FLAGS`` for ``profile`` (same for every replica)."""
    out: list[str] = []
    for rule in FLAGS:
        value = getattr(getattr(profile, rule.section), rule.field)
        if value is None or any(value == s for s in rule.skip):
            continue
        if rule.kind == "flag":
            if value:
                out.append(rule.flag)
        elif rule.kind == "tristate":
            out.append(rule.flag if value else "--no-" + rule.flag[2:])
        elif rule.kind == "json":
            out += [rule.flag, json.dumps(value, separators=(",", ":"), sort_keys=True)]
        else:
            out += [rule.flag, _scalar(value)]
    return out


def check_extra_args(extra: Sequence[str]) -> None:
    """Refuse extra_args that vLLM 0.33 rejects, that repeat a profile field, or that carry a secret.

    Raises:
        BadInput: with the replacement to use.
    """
    for arg in extra:
        if not arg.startswith("-"):
            continue
        name = arg.split("=", 1)[0].replace("_", "-") if arg.startswith("--") else arg.split("=", 1)[0]
        if name in REMOVED_FLAGS:
            raise BadInput(
                f"engine.extra_args has {name}, which current vLLM no longer accepts (exit 2, "
                f'"unrecognized arguments").',
                hint=f"Use {REMOVED_FLAGS[name].profile or 'nothing (removed)'} instead.",
            )
        if name == "--api-key":
            raise BadInput(
                "engine.extra_args holds --api-key: keys never go in a profile.",
                hint="Set server.api_key_env to the name of an environment variable holding the key.",
            )
        if name in OWNED_FLAGS:
            raise BadInput(
                f"engine.extra_args repeats {name}, which the profile already sets.",
                hint="Set the profile field instead (see docs/reference/profile.md).",
            )


def _split(gpus: tuple[str, ...], parts: int) -> list[tuple[str, ...]]:
    size = len(gpus) // parts
    return [gpus[i * size : (i + 1) * size] for i in range(parts)]


def _api_key(profile: Profile, base_env: Mapping[str, str]) -> str | None:
    name = profile.server.api_key_env
    if name is None:
        return None
    key = base_env.get(name, "")
    if not key:
        raise BadInput(
            f"server.api_key_env names {name}, but {name} is not set (or empty) in the environment.",
            hint=f"export {name}=... (the key), or remove server.api_key_env from the profile.",
        )
    return key


# long: one launch per data-parallel server group, each with its argv, environment and secrets; splitting it would
# scatter the per-replica decisions that must agree.
def build_launch_specs(
    profile: Profile,
    *,
    vllm_bin: str,
    base_env: Mapping[str, str],
    host: str | None = None,
    port: int | None = None,
    ray_address: str | None = None,
) -> list[LaunchSpec]:
    """Every server process the profile needs, in replica order.

    Args:
        profile: a validated profile.
        vllm_bin: the vLLM executable (called as ``<bin> serve MODEL ...``).
        base_env: the environment the children start from (normally ``os.environ``); the API key is read
            from it.
        host: overrides ``server.host``.
        port: overrides ``server.port`` (replica i of ``servers`` mode listens on port + i).
        ray_address: multi-node only: the Ray cluster (``HOST:PORT``) vLLM attaches to, as RAY_ADDRESS.

    Raises:
        BadInput: inconsistent GPU list, multi-node placement, bad extra_args, a missing API key variable or
            a port range past 65535.
    """
    pl, srv = profile.placement, profile.server
    multi = pl.nodes > 1
    if multi and "ray" not in (pl.distributed_executor_backend, pl.data_parallel_backend):
        raise BadInput(
            f"placement.nodes is {pl.nodes}, but neither placement.distributed_executor_backend nor "
            "placement.data_parallel_backend is ray: serve runs multi-node profiles on a Ray cluster only.",
            hint="Set placement.distributed_executor_backend: ray (or regenerate with `qwendeploy plan --nodes N`); "
            "vLLM's own multi-node mp mode is described in docs/multi-node.md.",
        )
    check_extra_args(profile.engine.extra_args)
    # Multi-node: Ray places the workers on the nodes' GPUs; no per-host GPU list applies.
    gpus = () if multi else gpu_ids(profile)
    the_host = host if host is not None else srv.host
    base_port = port if port is not None else srv.port
    served = srv.served_model_name or profile.model.id
    key = _api_key(profile, base_env)

    dp = pl.data_parallel_size
    if pl.data_parallel_mode == "servers" and dp > 1 and not multi:
        groups = _split(gpus, dp)
        dp_flags: list[str] = []
    else:
        groups = [gpus]
        dp_flags = ["--data-parallel-size", str(dp)] if dp > 1 else []
    if base_port + len(groups) - 1 > 65535:
        raise BadInput(f"Ports {base_port}..{base_port + len(groups) - 1} run past 65535.")

    common = profile_flags(profile)
    specs: list[LaunchSpec] = []
    for i, group in enumerate(groups):
        p = base_port + i
        argv = [vllm_bin, "serve", profile.model.id, *common, *dp_flags]
        argv += ["--host", the_host, "--port", str(p), "--served-model-name", served]
        argv += list(profile.engine.extra_args)
        if multi:
            # The same variables every node's `ray start` got (qwendeploy cluster head/join).
            env_set = cluster_env(profile)
            if ray_address:
                env_set["RAY_ADDRESS"] = ray_address
        else:
            env_set = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(group)}
            env_set.update(vllm_env_switches(profile))
            env_set.update(profile.env)  # the profile wins: a user's explicit NCCL/VLLM choice is kept
        if key is not None:
            env_set[API_KEY_VAR] = key  # not on argv: `ps` shows every local user a process's arguments
        env = {**base_env, **env_set}
        secrets = [key] if key else []
        secrets += [v for k, v in env_set.items() if SECRET_NAME.search(k) and v and v not in secrets]
        name = profile.name if len(groups) == 1 else f"{profile.name}-{i}"
        specs.append(
            LaunchSpec(
                argv=tuple(argv),
                env=env,
                host=the_host,
                port=p,
                served_model_name=served,
                gpus=group,
                replica=i,
                name=name,
                env_set=env_set,
                api_key_env=srv.api_key_env,
                secret_values=tuple(secrets),
                api_key=key,
            )
        )
    return specs


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value after ``--api-key`` (and ``--api-key=…``) replaced by ``***``."""
    out: list[str] = []
    hide = False
    for a in argv:
        if hide:
            out.append(REDACTED)
            hide = False
        elif a in ("--api-key", "--api_key"):
            out.append(a)
            hide = True
        elif a.startswith(("--api-key=", "--api_key=")):
            out.append(a.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(a)
    return out


def redact_env(env: Mapping[str, str], *, secret_names: Sequence[str] = ()) -> dict[str, str]:
    """``env`` with the values of secret-looking names (and ``secret_names``) replaced by ``***``."""
    names = set(secret_names)
    return {k: (REDACTED if k in names or SECRET_NAME.search(k) else v) for k, v in env.items()}


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of a secret value in ``text`` (e.g. a log line) by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return text


def shell_command(
    argv: Sequence[str], env_set: Mapping[str, str] | None = None, *, refs: Mapping[str, str] | None = None
) -> str:
    """A copy-pasteable shell line: ``VAR=value ... argv`` (pass already-redacted values).

    ``refs`` maps a variable to the variable it is copied from: it is written ``VAR="$FROM"`` (e.g. the API
    key, ``VLLM_API_KEY="$QWEN_KEY"``), so the line still works when pasted and shows no secret.
    """
    refs = refs or {}
    prefix: list[str] = []
    needs_env = False
    for k, v in (env_set or {}).items():
        if k in refs and _POSIX_NAME.fullmatch(k) and _POSIX_NAME.fullmatch(refs[k]):
            prefix.append(f'{k}="${refs[k]}"')
        elif _POSIX_NAME.fullmatch(k):
            prefix.append(f"{k}={shlex.quote(v)}")
        else:
            # Not a name the shell assigns (the profile schema refuses these; this is the last line of defence):
            # quote the whole NAME=VALUE and pass it through env(1), so pasting the line runs nothing it holds.
            prefix.append(shlex.quote(f"{k}={v}"))
            needs_env = True
    if needs_env:
        prefix.insert(0, "env")
    return " ".join([*prefix, *(shlex.quote(a) for a in argv)])


_POSIX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_refs(spec: LaunchSpec) -> dict[str, str]:
    return {API_KEY_VAR: spec.api_key_env} if spec.api_key is not None and spec.api_key_env else {}


def display_command(spec: LaunchSpec) -> str:
    """The spec as one shell line with every secret hidden (the key as ``VLLM_API_KEY="$NAME"``)."""
    return shell_command(
        redact_argv(spec.argv), redact_env(spec.env_set, secret_names=_secret_names(spec)), refs=key_refs(spec)
    )


def _secret_names(spec: LaunchSpec) -> list[str]:
    return [API_KEY_VAR, *([spec.api_key_env] if spec.api_key_env else [])] if spec.api_key is not None else []


def render_spec(spec: LaunchSpec) -> dict[str, Any]:
    """JSON-ready description of a spec with every secret redacted."""
    return {
        "name": spec.name,
        "replica": spec.replica,
        "argv": redact_argv(spec.argv),
        "env": redact_env(spec.env_set, secret_names=_secret_names(spec)),
        "host": spec.host,
        "port": spec.port,
        "served_model_name": spec.served_model_name,
        "gpus": list(spec.gpus),
        "api_key_env": spec.api_key_env,
        "command": display_command(spec),
    }
