"""``docker run`` lines for a profile, PURE: the official ``vllm/vllm-openai`` image of the release the plan
followed, the same argv and environment ``core.vllm_args`` builds for a native launch, and secrets copied in by
name, never on the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qwendeploy.core.argv import drop_flags
from qwendeploy.core.profile import Profile
from qwendeploy.core.vllm_args import (
    API_KEY_VAR,
    REDACTED,
    SECRET_NAME,
    LaunchSpec,
    build_launch_specs,
    key_refs,
    redact_env,
    release_tuple,
    shell_command,
)

DOCKER_IMAGE = "vllm/vllm-openai:latest"
"""The official OpenAI-compatible image; its entrypoint is ``vllm serve``, so arguments start at MODEL."""

DOCKER_API_KEY_ENV = API_KEY_VAR
"""vLLM reads this variable when --api-key is absent; docker copies it in by name (``-e VLLM_API_KEY``)."""


@dataclass(frozen=True)
class DockerSpec:
    """A ``docker run`` line for one replica. ``env`` is the docker client's own environment."""

    argv: tuple[str, ...]
    env: dict[str, str]
    env_set: dict[str, str]
    """Variables the client needs set and copies in by name (the API key under VLLM_API_KEY, secret-looking
    profile variables such as HF_TOKEN); values are secret."""
    container_name: str
    launch: LaunchSpec


def build_docker_specs(
    profile: Profile,
    *,
    base_env: Mapping[str, str],
    host: str | None = None,
    port: int | None = None,
    image: str = DOCKER_IMAGE,
    docker_bin: str = "docker",
    hf_cache: str = "~/.cache/huggingface",
) -> list[DockerSpec]:
    """The ``docker run`` equivalent of ``build_launch_specs`` for each replica.

    Inside the container vLLM binds 0.0.0.0 (else the port mapping cannot reach it); the address on the host
    is chosen by ``-p HOST:PORT:PORT``, so a loopback profile stays loopback. Docker renumbers the devices it
    passes (``--gpus '"device=2,3"'`` appears as 0,1 inside), so CUDA_VISIBLE_DEVICES is not passed. No
    secret is on the command line: the API key (as VLLM_API_KEY) and every secret-looking variable
    (``SECRET_NAME``, e.g. HF_TOKEN) go in the docker client's environment and are copied in by name
    (``-e NAME``); other variables are written ``-e NAME=VALUE``.
    """
    specs = build_launch_specs(profile, vllm_bin="vllm", base_env=base_env, host=host, port=port)
    out: list[DockerSpec] = []
    for s in specs:
        inner = list(s.argv[2:])  # MODEL and flags; the image's entrypoint is `vllm serve`
        inner = drop_flags(inner, {"--api-key"})
        i = inner.index("--host")
        inner[i + 1] = "0.0.0.0"
        cname = f"qwendeploy-{s.name}"
        argv = [docker_bin, "run", "--rm", "--name", cname, "--gpus", f'"device={",".join(s.gpus)}"', "--ipc=host"]
        argv += ["-p", f"{s.host}:{s.port}:{s.port}" if ":" not in s.host else f"[{s.host}]:{s.port}:{s.port}"]
        argv += ["-v", f"{hf_cache}:/root/.cache/huggingface"]
        client_env: dict[str, str] = {}
        for k, v in s.env_set.items():
            if k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
                continue
            if k == DOCKER_API_KEY_ENV or SECRET_NAME.search(k):
                argv += ["-e", k]  # by name: docker copies the value from its own environment
                client_env[k] = v
            else:
                argv += ["-e", f"{k}={v}"]
        argv += [image, *inner]
        out.append(
            DockerSpec(
                argv=tuple(argv),
                env={**base_env, **client_env},
                env_set=client_env,
                container_name=cname,
                launch=s,
            )
        )
    return out


def render_docker(spec: DockerSpec) -> dict[str, Any]:
    """JSON-ready description of a docker spec; the key is shown as ``VLLM_API_KEY="$NAME"``, other secret
    variables the client copies in as ``NAME=***`` (set them in the environment, not the profile)."""
    refs = key_refs(spec.launch)
    prefix = shell_command([], redact_env(spec.env_set, secret_names=list(spec.env_set)), refs=refs)
    prefix = prefix + " " if prefix else ""
    return {
        "name": spec.launch.name,
        "replica": spec.launch.replica,
        "argv": list(spec.argv),
        "env": {k: REDACTED for k in spec.env_set},
        "container_name": spec.container_name,
        "host": spec.launch.host,
        "port": spec.launch.port,
        "served_model_name": spec.launch.served_model_name,
        "gpus": list(spec.launch.gpus),
        "command": prefix + shell_command(spec.argv),
    }


def docker_image(vllm_version: str | None) -> str:
    """The ``vllm/vllm-openai`` image of the release a plan followed (``0.33`` → ``v0.33.0``): the accounting
    the plan used is that release's, ``latest`` may be another. No version known: ``latest``."""
    if not vllm_version:
        return DOCKER_IMAGE
    parts = [str(x) for x in release_tuple(vllm_version)]
    if not parts:
        return DOCKER_IMAGE
    while len(parts) < 3:
        parts.append("0")
    return f"vllm/vllm-openai:v{'.'.join(parts)}"
