"""The launch (child) environment, PURE: the variables a vLLM process, or every Ray node before ``ray start``,
must carry. ``core.vllm_args`` (one node) and ``core.cluster`` (Ray nodes, checks) both build on it, so neither
imports the other."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from qwendeploy.core.profile import Profile

_YARN_TYPES = frozenset({"yarn", "deepseek_yarn"})

IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
HOST_IP_VAR = "VLLM_HOST_IP"
ENV_LABEL = "qwendeploy-env"
"""Ray node label holding a hash of the shared environment the node was started with."""
PROFILE_LABEL = "qwendeploy-profile"


def vllm_env_switches(profile: Profile) -> dict[str, str]:
    """``VLLM_*`` variables the plan needs.

    YaRN long context: vLLM releases before the transformers-5 ``rope_parameters`` scheme derive
    max_model_len from ``max_position_embeddings`` only and refuse a longer ``--max-model-len`` unless
    ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``. We set it only when the overrides carry a YaRN rope whose
    ``factor × original_max_position_embeddings`` covers max_model_len, so it never unlocks a length the
    rope cannot serve.
    """
    ov = profile.model.hf_overrides or {}
    rope = ov.get("rope_parameters") or ov.get("rope_scaling")
    if not isinstance(rope, dict):
        return {}
    kind = rope.get("rope_type", rope.get("type"))
    factor, original = rope.get("factor"), rope.get("original_max_position_embeddings")
    if kind not in _YARN_TYPES or not isinstance(factor, int | float) or not isinstance(original, int):
        return {}
    if original < profile.model.max_model_len <= factor * original:
        return {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    return {}


def is_multi_node(profile: Profile) -> bool:
    return profile.placement.nodes > 1


def cluster_env(profile: Profile) -> dict[str, str]:
    """The variables every node exports before ``ray start`` (the same on each node; VLLM_HOST_IP, which
    differs per node, is added by ``node_env``)."""
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    env.update(vllm_env_switches(profile))
    ifname = profile.cluster.socket_ifname
    if ifname:
        env.update(dict.fromkeys(IFNAME_VARS, ifname))
    env.update(profile.env)  # the profile's explicit NCCL_*/VLLM_* choices win
    return env


def env_hash(env: Mapping[str, str]) -> str:
    """Short stable hash of the shared environment (VLLM_HOST_IP excluded: it differs per node)."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(env.items()) if k != HOST_IP_VAR)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def node_env(profile: Profile, node_ip: str | None) -> dict[str, str]:
    """``cluster_env`` plus this node's VLLM_HOST_IP (when ``cluster.set_host_ip`` and the address is known)."""
    env = cluster_env(profile)
    if profile.cluster.set_host_ip and node_ip and HOST_IP_VAR not in profile.env:
        env[HOST_IP_VAR] = node_ip
    return env
