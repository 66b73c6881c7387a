"""A multi-node profile on this host: the host network and the Ray cluster, under ``multinode.*`` ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qwendeploy.core.checks import Check
from qwendeploy.core.profile import Profile

if TYPE_CHECKING:
    from qwendeploy.core.cluster import HostNetFacts, RayCluster


def multi_node_check_name(name: str) -> str:
    """The stable id doctor gives a multi-node check: ``ray gpus`` → ``multinode.ray_gpus``."""
    return "multinode." + name.replace(" ", "_")


def multi_node_checks(
    profile: Profile,
    net: HostNetFacts,
    cluster: RayCluster | None,
    *,
    cluster_error: str | None = None,
    cluster_hint: str | None = None,
) -> list[Check]:
    """A multi-node profile on this host: interface selection, host name resolution, and — where the Ray
    cluster answers — its nodes, GPUs, per-node environment and versions against the profile."""
    from qwendeploy.core.cluster import check_cluster, check_host_network

    found = check_host_network(profile, net)
    if cluster is not None:
        found += check_cluster(profile, cluster)
    out = [Check(multi_node_check_name(c.name), c.status, c.detail, c.fix) for c in found]
    if cluster is None:
        out.append(
            Check(
                multi_node_check_name("ray cluster"),
                "warn",
                f"Ray cluster not checked: {cluster_error or 'no address'}",
                cluster_hint or "Start it with `qwendeploy cluster head PROFILE` / `cluster join`.",
            )
        )
    return out
