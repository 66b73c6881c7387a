"""Kubernetes manifests for a multi-node profile, PURE: vLLM's LeaderWorkerSet recipe shape.

One LeaderWorkerSet group is one model replica spread over ``placement.nodes`` pods (``size``): the leader
starts the Ray head, waits until the workers' GPUs have joined (vLLM raises at once when Ray has fewer GPUs than
TP×PP) and then runs ``vllm serve ... --distributed-executor-backend ray``; each worker joins with
``ray start --address=$(LWS_LEADER_ADDRESS):PORT --block`` (LWS sets LWS_LEADER_ADDRESS; Kubernetes expands
``$(VAR)`` in command arguments). Every pod gets the profile's shared environment (``core.cluster.cluster_env``),
VLLM_HOST_IP from its own pod IP, its GPUs as ``nvidia.com/gpu`` limits and a memory-backed /dev/shm. A
Service exposes the leader's port. The API key, if any, comes from a Secret, never from the manifest.
"""

from __future__ import annotations

import shlex
from typing import Any

from qwendeploy.core.cluster import HOST_IP_VAR, cluster_env
from qwendeploy.core.profile import Profile
from qwendeploy.core.vllm_args import build_launch_specs

LWS_API = "leaderworkerset.x-k8s.io/v1"
DEFAULT_IMAGE = "vllm/vllm-openai:latest"
SHM_SIZE = "16Gi"
VLLM_API_KEY_VAR = "VLLM_API_KEY"


def _name(profile: Profile) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in profile.name.lower()).strip("-")
    return (cleaned or "qwen")[:50]


def _env(profile: Profile, api_key_secret: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in cluster_env(profile).items() if k != HOST_IP_VAR]
    env.append({"name": HOST_IP_VAR, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    key = profile.server.api_key_env
    if key:
        secret = {"secretKeyRef": {"name": api_key_secret, "key": "api-key"}}
        env.append({"name": key, "valueFrom": secret})
        if key != VLLM_API_KEY_VAR:  # vLLM reads the key from here when --api-key is absent
            env.append({"name": VLLM_API_KEY_VAR, "valueFrom": secret})
    return env


def _container(name: str, image: str, script: str, gpus: int, env: list[dict[str, Any]], port: int | None) -> Any:
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": ["/bin/bash", "-c", script],
        "env": env,
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if port is not None:
        c["ports"] = [{"containerPort": port, "name": "http"}]
        c["readinessProbe"] = {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10}
    return c


def _pod(container: dict[str, Any], role: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"role": role}},
        "spec": {
            "containers": [container],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}],
        },
    }


RAY_WAIT_S = 600
"""Seconds the leader waits for the workers' GPUs to join its Ray cluster before it gives up (and the group is
recreated). vLLM raises at once when Ray has fewer GPUs than TP×PP, so it must not start earlier."""

_RAY_GPUS = (
    'python3 -c \'import ray; ray.init(address="auto", logging_level="ERROR"); '
    'print(int(ray.cluster_resources().get("GPU", 0)))\' 2>/dev/null || echo 0'
)


def _wait_for_gpus(need: int, timeout_s: int) -> str:
    """Shell lines that poll the Ray cluster until it has ``need`` GPUs, failing after ``timeout_s``.

    Written without ``$(( ))`` so that Kubernetes' ``$(VAR)`` expansion of the command leaves it alone.
    """
    return "\n".join(
        [
            "waited=0",
            f'until [ "$({_RAY_GPUS})" -ge {need} ]; do',
            f'  if [ "$waited" -ge {timeout_s} ]; then',
            f'    echo "qwendeploy: the Ray cluster did not reach {need} GPUs within {timeout_s} s '
            '(workers not joined?)" >&2',
            "    exit 1",
            "  fi",
            "  sleep 5",
            "  waited=`expr $waited + 5`",
            "done",
        ]
    )


def export_warnings(profile: Profile) -> list[str]:
    """What a reader of the exported manifest must know before applying it."""
    out: list[str] = []
    if not profile.server.api_key_env:
        out.append(
            "The leader serves on 0.0.0.0 inside the cluster with no API key (server.api_key_env is unset): "
            "anyone who can reach the Service can use the model. Set server.api_key_env and create the Secret, "
            "or restrict access with a NetworkPolicy."
        )
    return out


def leader_worker_set(profile: Profile, *, image: str = DEFAULT_IMAGE, replicas: int = 1) -> list[dict[str, Any]]:
    """The LeaderWorkerSet and the leader's Service for ``profile`` (as plain dicts, ready for YAML).

    Raises:
        BadInput: the profile cannot be launched (see ``vllm_args.build_launch_specs``).
    """
    name = _name(profile)
    pl = profile.placement
    ray_port = profile.cluster.ray_port
    port = profile.server.port
    gpus = profile.cluster.gpus_per_node or max(1, pl.world_size // pl.nodes)
    key = profile.server.api_key_env
    secret = f"{name}-api-key"
    base_env = {key: f"$({key})"} if key else {}
    profile = profile.model_copy(update={"placement": pl.model_copy(update={"nodes": max(2, pl.nodes)})})
    (spec,) = build_launch_specs(profile, vllm_bin="vllm", base_env=base_env, host="0.0.0.0", port=port)
    serve = shlex.join(spec.argv)
    if key:  # keep the Kubernetes reference unquoted so the kubelet expands it
        serve = serve.replace(shlex.quote(f"$({key})"), f"$({key})")
    need = pl.world_size
    leader_script = "\n".join(
        [
            "set -e",
            f"ray start --head --port={ray_port} --num-gpus={gpus} --disable-usage-stats",
            _wait_for_gpus(need, RAY_WAIT_S),
            f"exec {serve}",
        ]
    )
    worker_script = (
        f"ray start --address=$(LWS_LEADER_ADDRESS):{ray_port} --num-gpus={gpus} --disable-usage-stats --block"
    )
    lws = {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "qwendeploy"}},
        "spec": {
            "replicas": replicas,
            "leaderWorkerTemplate": {
                "size": pl.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod(
                    _container("vllm-leader", image, leader_script, gpus, _env(profile, secret), port), "leader"
                ),
                "workerTemplate": _pod(
                    _container("vllm-worker", image, worker_script, gpus, _env(profile, secret), None), "worker"
                ),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-leader"},
        "spec": {
            "type": "ClusterIP",
            "selector": {"leaderworkerset.sigs.k8s.io/name": name, "role": "leader"},
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": port}],
        },
    }
    return [lws, service]
