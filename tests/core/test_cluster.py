"""core.cluster: networks in the ranking, --gpus auto --nodes N, the shared environment, ray start argv, and the
checks of a Ray cluster and of this host's network against a multi-node profile (pure)."""

from __future__ import annotations

import pytest

from qwendeploy.core.checks import Check
from qwendeploy.core.checks.multi_node import multi_node_checks
from qwendeploy.core.cluster import (
    NETWORKS,
    HostNetFacts,
    RayCluster,
    RayNode,
    RayStartOptions,
    check_cluster,
    check_host_network,
    cluster_env,
    env_hash,
    find_network,
    node_env,
    ray_head_argv,
    ray_join_argv,
    replicate_nodes,
    split_address,
)
from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.models import find_model
from qwendeploy.core.planner import PlanRequest, plan
from qwendeploy.core.profile import ClusterSection, ModelSection, PlacementSection, Profile
from qwendeploy.core.profile_builder import profile_from_plan
from qwendeploy.errors import BadInput


def _profile(tp: int = 4, pp: int = 2, nodes: int = 2, ifname: str | None = "eth0", **env: str) -> Profile:
    return Profile(
        model=ModelSection(id="m"),
        placement=PlacementSection(
            tensor_parallel_size=tp, pipeline_parallel_size=pp, nodes=nodes, distributed_executor_backend="ray"
        ),
        cluster=ClusterSection(socket_ifname=ifname, gpus_per_node=4),
        env=env,
    )


def _node(i: int, gpus: float = 4, env: dict[str, str | None] | None = None, **versions: str | None) -> RayNode:
    return RayNode(
        node_id=f"{i:08d}abc",
        address=f"10.0.0.{i}",
        alive=True,
        gpus=gpus,
        is_head=i == 1,
        env=env if env is not None else {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0",
                                         "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "VLLM_HOST_IP": f"10.0.0.{i}"},
        versions=versions or {"vllm": "0.33.0", "torch": "2.14.0", "ray": "2.60.0"},
    )  # fmt: skip


def _by(checks: list[Check], name: str) -> list[Check]:
    return [c for c in checks if c.name == name]


# ------------------------------------------------------------------ networks and the planner


def test_network_table_names_and_lookup() -> None:
    assert {n.id for n in NETWORKS} == {"25gbe", "100gbe", "400gbe", "ib-hdr", "ib-ndr"}
    assert find_network("IB_NDR").id == "ib-ndr"
    assert find_network("25gbe").bandwidth < find_network("100gbe").bandwidth < find_network("ib-ndr").bandwidth
    with pytest.raises(BadInput, match="10gbe") as e:
        find_network("10gbe")
    assert "ib-hdr" in (e.value.hint or "")


def _plan72(network: str, **kw: object) -> object:
    spec = find_model("Qwen/Qwen2.5-72B-Instruct")
    assert spec is not None
    machine = parse_inventory("8xRTX4090D", 2)
    return plan(PlanRequest(spec=spec, machine=machine, max_model_len=131072, network=network, **kw))  # type: ignore[arg-type]


def test_72b_at_128k_on_two_4090d_nodes_is_tp_within_node_pp_across() -> None:
    p = _plan72("100gbe")
    c = p.chosen  # type: ignore[attr-defined]
    assert c is not None and c.tp == 8 and c.pp == 2 and c.dp == 1
    assert c.cost.network_hops == 1
    # TP over 16 GPUs (across nodes) is never a candidate that fits.
    assert not any(x.tp > 8 and x.fits for x in p.candidates)  # type: ignore[attr-defined]
    prof = profile_from_plan(p, head_address="10.0.0.1", socket_ifname="ens5")  # type: ignore[arg-type]
    assert prof.placement.nodes == 2 and prof.placement.distributed_executor_backend == "ray"
    assert prof.placement.gpus == []
    assert prof.cluster.head_address == "10.0.0.1" and prof.cluster.socket_ifname == "ens5"
    assert prof.cluster.gpus_per_node == 8
    assert cluster_env(prof)["NCCL_SOCKET_IFNAME"] == "ens5" == cluster_env(prof)["GLOO_SOCKET_IFNAME"]


def test_slow_link_costs_more_and_the_verdict_says_so() -> None:
    slow = _plan72("25gbe", max_num_batched_tokens=8192)
    fast = _plan72("ib-ndr", max_num_batched_tokens=8192)
    cs, cf = slow.chosen.cost, fast.chosen.cost  # type: ignore[attr-defined]
    assert cs.prefill_hop_ms > 4 * cf.prefill_hop_ms
    assert cs.network_hop_ms > cf.network_hop_ms
    assert any("PP across 25gbe hurts" in line for line in slow.why)  # type: ignore[attr-defined]
    assert not any("hurts" in line for line in fast.why)  # type: ignore[attr-defined]


def test_small_model_on_two_nodes_runs_replicas_per_node() -> None:
    spec = find_model("Qwen/Qwen2.5-7B-Instruct")
    assert spec is not None
    p = plan(PlanRequest(spec=spec, machine=parse_inventory("8xH100-80GB", 2), max_model_len=32768))
    c = p.chosen
    assert c is not None and c.pp == 1 and c.dp >= 2 and c.cost is not None and c.cost.network_hops == 0
    assert any("stays inside one node" in line for line in p.why)
    prof = profile_from_plan(p)
    assert prof.placement.data_parallel_mode == "vllm" and prof.placement.data_parallel_backend == "ray"


def test_replicate_nodes_copies_gpus_and_links_per_node() -> None:
    one = parse_inventory("4xRTX4090D")
    three = replicate_nodes(one, 3)
    assert three.nodes == 3 and len(three.gpus) == 12 and three.gpus_per_node == 4
    assert [g.node for g in three.gpus] == [0] * 4 + [1] * 4 + [2] * 4
    assert [g.index for g in three.gpus] == list(range(12))
    assert len(three.links) == 3 * len(one.links)
    assert all(three.gpus[link.a].node == three.gpus[link.b].node for link in three.links)
    assert three.fingerprint() == parse_inventory("4xRTX4090D", 3).fingerprint()


# ------------------------------------------------------------------ environment and ray start


def test_cluster_env_is_shared_and_host_ip_is_per_node() -> None:
    prof = _profile(NCCL_DEBUG="INFO")
    env = cluster_env(prof)
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0",
                   "NCCL_DEBUG": "INFO"}  # fmt: skip
    assert node_env(prof, "10.0.0.2")["VLLM_HOST_IP"] == "10.0.0.2"
    assert env_hash(node_env(prof, "10.0.0.2")) == env_hash(node_env(prof, "10.0.0.3")) == env_hash(env)
    # The profile's explicit choice wins over the interface setting.
    assert cluster_env(_profile(NCCL_SOCKET_IFNAME="ib0"))["NCCL_SOCKET_IFNAME"] == "ib0"


def test_ray_start_argv() -> None:
    prof = _profile()
    head = ray_head_argv("ray", prof, RayStartOptions(node_ip="10.0.0.1", num_cpus=8))
    assert head[:5] == ["ray", "start", "--head", "--port", "6379"]
    assert "--block" not in head and "--include-dashboard=false" in head
    assert head[head.index("--num-gpus") + 1] == "4" and head[head.index("--node-ip-address") + 1] == "10.0.0.1"
    labels = head[head.index("--labels") + 1]
    assert f"qwendeploy-env={env_hash(cluster_env(prof))}" in labels
    join = ray_join_argv("ray", prof, "10.0.0.1", RayStartOptions(num_gpus=2))
    assert join[:4] == ["ray", "start", "--address", "10.0.0.1:6379"]
    assert join[join.index("--num-gpus") + 1] == "2"
    assert ray_join_argv("ray", prof, "[fd00::1]:7000", RayStartOptions())[3] == "[fd00::1]:7000"
    assert split_address("head.local:6380", 6379) == ("head.local", 6380)
    with pytest.raises(BadInput):
        split_address("h:99999", 6379)


# ------------------------------------------------------------------ the cluster against the profile


def test_shortage_16_needed_8_present_fails() -> None:
    checks = check_cluster(_profile(tp=8, pp=2), RayCluster("10.0.0.1:6379", (_node(1), _node(2))))
    (gpus,) = _by(checks, "ray gpus")
    assert gpus.status == "fail"
    assert "needs 16 GPUs (TP 8 × PP 2) on 2 node(s)" in gpus.detail and "8 GPU(s) on 2 node(s) (4 + 4)" in gpus.detail


def test_matching_cluster_passes_and_missing_node_fails() -> None:
    ok = check_cluster(_profile(), RayCluster("a", (_node(1), _node(2))))
    assert all(c.status in ("ok",) for c in ok), ok
    one = check_cluster(_profile(tp=4, pp=1), RayCluster("a", (_node(1),)))
    assert _by(one, "ray nodes")[0].status == "fail"


def test_tp_group_cannot_span_nodes() -> None:
    # 8 GPUs in total but 2 per node: TP 4 groups cannot form inside a node.
    nodes = tuple(_node(i, gpus=2) for i in range(1, 5))
    checks = check_cluster(_profile(tp=4, pp=2), RayCluster("a", nodes))
    assert _by(checks, "ray tp groups")[0].status == "fail"


def test_env_exported_after_ray_start_is_caught() -> None:
    late = _node(2, env={"NCCL_SOCKET_IFNAME": None, "GLOO_SOCKET_IFNAME": None, "CUDA_DEVICE_ORDER": None})
    checks = check_cluster(_profile(), RayCluster("a", (_node(1), late)))
    bad = [c for c in _by(checks, "node env") if c.status == "fail"]
    assert len(bad) == 1 and "10.0.0.2" in bad[0].detail and "NCCL_SOCKET_IFNAME=None (want eth0)" in bad[0].detail


def test_versions_must_match_where_ray_can_tell() -> None:
    mixed = (_node(1), _node(2, vllm="0.32.0", torch="2.13.0", ray="2.60.0"))
    checks = check_cluster(_profile(), RayCluster("a", mixed))
    bad = [c for c in _by(checks, "versions") if c.status == "fail"]
    assert {c.detail.split()[0] for c in bad} == {"vllm", "torch"}
    unknown = (RayNode("x", "10.0.0.1", True, gpus=8), RayNode("y", "10.0.0.2", True, gpus=8))
    assert _by(check_cluster(_profile(), RayCluster("a", unknown)), "versions")[0].status == "skip"


# ------------------------------------------------------------------ this host (doctor)


def test_loopback_interface_and_hostname_are_wrong_on_multi_node() -> None:
    facts = HostNetFacts(interfaces=("lo", "eth0"), env={}, hostname="gpu1", hostname_ip="127.0.1.1")
    checks = check_host_network(_profile(ifname="lo"), facts)
    assert [(c.name, c.status) for c in checks if c.name.endswith("_ifname")] == [
        ("nccl_ifname", "fail"),
        ("gloo_ifname", "fail"),
    ]
    assert [c.status for c in checks if c.name == "hostname"] == ["fail"]
    good = HostNetFacts(interfaces=("lo", "eth0"), env={"VLLM_HOST_IP": "10.0.0.1"}, hostname="gpu1",
                        hostname_ip="10.0.0.1")  # fmt: skip
    assert all(c.status == "ok" for c in check_host_network(_profile(), good))


def test_loopback_hostname_only_warns_when_the_addresses_are_pinned() -> None:
    """Ubuntu maps the host name to 127.0.1.1 by default: with the socket interfaces pinned (profile or shell)
    or VLLM_HOST_IP set, nothing takes the address from the name, so the doctor --profile gate must not fail."""

    def hostname(profile: Profile, env: dict[str, str]) -> Check:
        facts = HostNetFacts(interfaces=("lo", "eth0", "ens5"), env=env, hostname="gpu1", hostname_ip="127.0.1.1")
        (check,) = [c for c in check_host_network(profile, facts) if c.name == "hostname"]
        return check

    from_profile = hostname(_profile(ifname="eth0"), {})
    assert from_profile.status == "warn" and "NCCL_SOCKET_IFNAME=eth0" in from_profile.detail
    assert "cluster.set_host_ip" in from_profile.detail
    exported = hostname(_profile(ifname=None), {"NCCL_SOCKET_IFNAME": "ens5", "GLOO_SOCKET_IFNAME": "ens5"})
    assert exported.status == "warn" and "GLOO_SOCKET_IFNAME=ens5" in exported.detail
    assert hostname(_profile(ifname=None), {"VLLM_HOST_IP": "10.0.0.1"}).status == "warn"
    # nothing pins it, or only one of the two libraries, or the pinned interface does not exist: still a failure
    assert hostname(_profile(ifname=None), {}).status == "fail"
    assert hostname(_profile(ifname=None), {"NCCL_SOCKET_IFNAME": "eth0"}).status == "fail"
    assert hostname(_profile(ifname="ib0"), {}).status == "fail"
    no_host_ip = _profile(ifname=None).model_copy(update={"cluster": ClusterSection(set_host_ip=False)})
    assert hostname(no_host_ip, {}).status == "fail"


def test_missing_interface_and_unset_variables() -> None:
    facts = HostNetFacts(interfaces=("lo", "ens5"), hostname="h", hostname_ip="10.1.1.1")
    missing = check_host_network(_profile(ifname="eth0"), facts)
    assert [c.status for c in missing if c.name.endswith("_ifname")] == ["fail", "fail"]
    assert "it has lo, ens5" in missing[0].detail
    unset = check_host_network(_profile(ifname=None), facts)
    assert [c.status for c in unset if c.name.endswith("_ifname")] == ["warn", "warn"]
    prefix = check_host_network(_profile(ifname="ens"), facts)  # NCCL matches prefixes
    assert [c.status for c in prefix if c.name.endswith("_ifname")] == ["ok", "ok"]


def test_machine_checks_wrap_the_multi_node_checks() -> None:
    facts = HostNetFacts(interfaces=("lo",), hostname="h", hostname_ip="127.0.0.1")
    out = multi_node_checks(_profile(tp=8, pp=2), facts, RayCluster("a", (_node(1), _node(2))))
    names = {c.name for c in out if c.status == "fail"}
    assert {"multinode.nccl_ifname", "multinode.gloo_ifname", "multinode.hostname", "multinode.ray_gpus"} <= names
    none = multi_node_checks(_profile(), facts, None, cluster_error="No Ray cluster at a")
    assert none[-1].name == "multinode.ray_cluster" and none[-1].status == "warn"


def test_multi_node_check_names_are_stable_ids() -> None:
    """docs/doctor.md: names are stable ids — one per check, no spaces (scripts key on them in --json)."""
    import re

    facts = HostNetFacts(interfaces=("lo", "eth0"), hostname="h", hostname_ip="10.0.0.1")
    out = multi_node_checks(_profile(tp=8, pp=2), facts, RayCluster("a", (_node(1), _node(2))))
    names = [c.name for c in out]
    assert all(re.fullmatch(r"multinode\.[a-z0-9_]+", n) for n in names), names
    ifnames = [n for n in names if n.endswith("_ifname")]
    assert ifnames == ["multinode.nccl_ifname", "multinode.gloo_ifname"]
