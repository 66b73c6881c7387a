"""Multi-node facts and rules, PURE: inter-node networks, the environment every Ray node must share, the
``ray start`` command lines, and the checks that a Ray cluster can run a profile.

vLLM runs across machines on Ray (``--distributed-executor-backend ray``): one Ray cluster, a head and
workers, each started with ``ray start``. Ray workers inherit the environment of the ``ray start`` that
launched their node, so NCCL/Gloo/vLLM variables must be exported *before* ``ray start`` on *every* node — the
most common multi-node failure is a variable exported afterwards, or on the head only. ``cluster_env`` is
that environment; ``qwendeploy cluster head/join`` start Ray with it and ``check_cluster`` compares what each
node actually has (read by a Ray task on the node) with it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from qwendeploy.core.checks import Check
from qwendeploy.core.checks.versions import VERSION_PACKAGES as VERSION_PACKAGES
from qwendeploy.core.checks.versions import check_node_versions
from qwendeploy.core.hardware import Gpu, Link, Machine

# Re-exported: callers reach networks and the shared environment as core.cluster.X since before the split.
from qwendeploy.core.launch_env import ENV_LABEL as ENV_LABEL
from qwendeploy.core.launch_env import HOST_IP_VAR as HOST_IP_VAR
from qwendeploy.core.launch_env import IFNAME_VARS as IFNAME_VARS
from qwendeploy.core.launch_env import PROFILE_LABEL as PROFILE_LABEL
from qwendeploy.core.launch_env import cluster_env as cluster_env
from qwendeploy.core.launch_env import env_hash as env_hash
from qwendeploy.core.launch_env import is_multi_node as is_multi_node
from qwendeploy.core.launch_env import node_env as node_env
from qwendeploy.core.networks import DEFAULT_NETWORK as DEFAULT_NETWORK
from qwendeploy.core.networks import NETWORKS as NETWORKS
from qwendeploy.core.networks import SLOW_HOP_FRACTION as SLOW_HOP_FRACTION
from qwendeploy.core.networks import SLOW_PREFILL_HOP_S as SLOW_PREFILL_HOP_S
from qwendeploy.core.networks import Network as Network
from qwendeploy.core.networks import find_network as find_network
from qwendeploy.core.profile import Profile
from qwendeploy.errors import BadInput


def replicate_nodes(machine: Machine, nodes: int) -> Machine:
    """``nodes`` identical copies of a one-node ``machine`` (``--gpus auto --nodes N``): GPUs re-indexed node by
    node, links repeated inside each node, no links between nodes.

    Raises:
        BadInput: ``nodes`` < 1, or the machine already spans several nodes.
    """
    if nodes < 1:
        raise BadInput(f"--nodes must be a positive integer, got {nodes}.")
    if machine.nodes != 1:
        raise BadInput("replicate_nodes needs a one-node inventory.")
    if nodes == 1:
        return machine
    count = len(machine.gpus)
    pos = {g.index: i for i, g in enumerate(machine.gpus)}
    gpus: list[Gpu] = []
    links: list[Link] = []
    for node in range(nodes):
        base = node * count
        gpus += [replace(g, index=base + i, node=node) for i, g in enumerate(machine.gpus)]
        for link in machine.links:
            if link.a in pos and link.b in pos:
                a, b = sorted((base + pos[link.a], base + pos[link.b]))
                links.append(replace(link, a=a, b=b))
    notes = (*machine.notes, f"{nodes} nodes like this one; GPUs of different nodes talk over the network.")
    return replace(machine, gpus=tuple(gpus), links=tuple(links), nodes=nodes, notes=notes)


# ----------------------------------------------------------------------------------------------------------
# The environment every node shares, and the ray start command lines
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayStartOptions:
    """Per-node choices for ``ray start`` that are not in the profile (command-line options)."""

    node_ip: str | None = None
    num_gpus: int | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None
    temp_dir: str | None = None
    include_dashboard: bool = False


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) → (host, port).

    Raises:
        BadInput: empty host or a port that is not 1-65535.
    """
    text = address.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":"):
            port = _port(rest[1:], address)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, address)
    if not host:
        raise BadInput(f"Head address {address!r} has no host.", hint="For example 10.0.0.1 or 10.0.0.1:6379.")
    return host, port


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadInput(f"Head address {address!r} has a bad port.", hint="For example 10.0.0.1:6379.")
    return int(text)


def _common_start_flags(profile: Profile, opts: RayStartOptions) -> list[str]:
    out: list[str] = []
    gpus = opts.num_gpus if opts.num_gpus is not None else profile.cluster.gpus_per_node
    if gpus is not None:
        out += ["--num-gpus", str(gpus)]
    if opts.num_cpus is not None:
        out += ["--num-cpus", str(opts.num_cpus)]
    if opts.object_store_memory is not None:
        out += ["--object-store-memory", str(opts.object_store_memory)]
    if opts.node_ip:
        out += ["--node-ip-address", opts.node_ip]
    if opts.temp_dir:
        out += ["--temp-dir", opts.temp_dir]
    labels = f"{ENV_LABEL}={env_hash(cluster_env(profile))},{PROFILE_LABEL}={_label_value(profile.name)}"
    out += ["--labels", labels, "--disable-usage-stats"]
    return out


def _label_value(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:63].strip("-_.")
    return cleaned or "qwen"


def ray_head_argv(ray_bin: str, profile: Profile, opts: RayStartOptions) -> list[str]:
    """``ray start --head`` for the head node (never ``--block``: Ray's daemons outlive the command)."""
    argv = [ray_bin, "start", "--head", "--port", str(profile.cluster.ray_port)]
    argv += ["--include-dashboard=" + ("true" if opts.include_dashboard else "false")]
    return argv + _common_start_flags(profile, opts)


def ray_join_argv(ray_bin: str, profile: Profile, head_address: str, opts: RayStartOptions) -> list[str]:
    """``ray start --address HEAD:PORT`` for a worker node."""
    host, port = split_address(head_address, profile.cluster.ray_port)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [ray_bin, "start", "--address", where, *_common_start_flags(profile, opts)]


# ----------------------------------------------------------------------------------------------------------
# What Ray reports, and whether it can run the profile
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayNode:
    """One node as Ray reports it, plus what a task running on it saw (env, package versions)."""

    node_id: str
    address: str
    alive: bool
    gpus: float = 0.0
    cpus: float = 0.0
    is_head: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str | None] = field(default_factory=dict)
    """Variables as the node's workers see them (None: unset); empty when no task could run there."""
    versions: Mapping[str, str | None] = field(default_factory=dict)
    """Package → version on the node (None: not installed); empty when unknown."""
    hostname: str | None = None


@dataclass(frozen=True)
class RayCluster:
    address: str
    nodes: tuple[RayNode, ...]

    @property
    def alive(self) -> tuple[RayNode, ...]:
        return tuple(n for n in self.nodes if n.alive)

    @property
    def total_gpus(self) -> int:
        return int(sum(n.gpus for n in self.alive))


def _short(node: RayNode) -> str:
    return f"{node.address} ({node.node_id[:8]})" + (" head" if node.is_head else "")


def check_cluster(profile: Profile, cluster: RayCluster) -> list[Check]:
    """Can ``cluster`` run ``profile``: nodes, GPUs, TP groups inside a node, the shared environment, versions.

    Pure: ``cluster`` comes from the Ray adapter. ``fail`` means vLLM would not start (or would hang).
    """
    pl = profile.placement
    out: list[Check] = []
    alive = cluster.alive
    need_gpus, need_nodes, tp = pl.world_size, pl.nodes, pl.tensor_parallel_size
    per_node = " + ".join(f"{n.gpus:g}" for n in alive) or "0"
    shape = f"TP {tp} × PP {pl.pipeline_parallel_size}" + (
        f" × DP {pl.data_parallel_size}" if pl.data_parallel_size > 1 else ""
    )
    have = f"the Ray cluster at {cluster.address} has {cluster.total_gpus} GPU(s) on {len(alive)} node(s) ({per_node})"
    if cluster.total_gpus < need_gpus:
        out.append(
            Check(
                "ray gpus",
                "fail",
                f"The profile needs {need_gpus} GPUs ({shape}) on {need_nodes} node(s), but {have}.",
                fix="Start the missing nodes with `qwendeploy cluster join HEAD_ADDRESS PROFILE` on each, "
                "then check with `qwendeploy cluster status`.",
            )
        )
    else:
        out.append(Check("ray gpus", "ok", f"{need_gpus} GPUs needed; {have}."))
    if len(alive) < need_nodes:
        out.append(
            Check(
                "ray nodes",
                "fail",
                f"The profile spans {need_nodes} nodes but {len(alive)} node(s) are alive in the Ray cluster.",
                fix="Join the other nodes: `qwendeploy cluster join HEAD_ADDRESS PROFILE`.",
            )
        )
    groups = sum(int(n.gpus) // tp for n in alive)
    need_groups = pl.pipeline_parallel_size * pl.data_parallel_size
    if cluster.total_gpus >= need_gpus and groups < need_groups:
        out.append(
            Check(
                "ray tp groups",
                "fail",
                f"Tensor-parallel groups of {tp} GPUs must stay inside a node, but the nodes' GPUs ({per_node}) "
                f"form only {groups} such group(s); the profile needs {need_groups}.",
                fix="Give every node the GPUs the plan assumed (cluster.gpus_per_node) or re-plan for these nodes.",
            )
        )
    out += _check_env(profile, alive)
    out += check_node_versions({_short(n): n.versions for n in alive if n.versions})
    return out


def _check_env(profile: Profile, alive: Sequence[RayNode]) -> list[Check]:
    want = cluster_env(profile)
    probed = [n for n in alive if n.env]
    if not probed:
        return [Check("node env", "skip", "No task could run on the nodes; their environment is unknown.")]
    out: list[Check] = []
    for n in probed:
        wrong = [f"{k}={n.env.get(k)!s} (want {v})" for k, v in sorted(want.items()) if n.env.get(k) != v]
        if wrong:
            out.append(
                Check(
                    "node env",
                    "fail",
                    f"Node {_short(n)} was started with a different environment: {'; '.join(wrong)}.",
                    fix="Ray workers keep the environment of `ray start`: on that node run `ray stop`, then "
                    "`qwendeploy cluster join HEAD_ADDRESS PROFILE` (it exports the profile's variables first).",
                )
            )
        if profile.cluster.set_host_ip and HOST_IP_VAR not in profile.env and not n.env.get(HOST_IP_VAR):
            out.append(
                Check(
                    "node env",
                    "warn",
                    f"Node {_short(n)} has no {HOST_IP_VAR}; vLLM guesses the node's address.",
                    fix="Start Ray on it with `qwendeploy cluster join` (sets VLLM_HOST_IP).",
                )
            )
    if not any(c.status == "fail" for c in out):
        keys = ", ".join(sorted(want)) or "none"
        out.append(Check("node env", "ok", f"{len(probed)} node(s) share the profile's environment ({keys})."))
    return out


# ----------------------------------------------------------------------------------------------------------
# This host's network facts (gathered by adapters.system / ray_cluster) against a multi-node profile
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostNetFacts:
    """What ``doctor`` learns about this host's network for a multi-node profile."""

    interfaces: tuple[str, ...]
    """Interface names (/sys/class/net or socket.if_nameindex())."""
    env: Mapping[str, str] = field(default_factory=dict)
    """NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME / VLLM_HOST_IP as exported in this shell."""
    hostname: str = ""
    hostname_ip: str | None = None
    """socket.gethostbyname(gethostname()); None when it does not resolve."""


def _ifname_values(value: str) -> tuple[bool, list[str]]:
    """NCCL's syntax: ``^a,b`` excludes, ``=eth0`` exact, else prefixes. → (exclude, names)."""
    exclude = value.startswith("^")
    names = [v.strip().lstrip("=") for v in value.lstrip("^").split(",") if v.strip()]
    return exclude, names


def ifname_check_name(var: str) -> str:
    """``NCCL_SOCKET_IFNAME`` → ``nccl_ifname``, ``GLOO_SOCKET_IFNAME`` → ``gloo_ifname`` (stable check ids)."""
    return var.split("_", 1)[0].lower() + "_ifname"


def check_host_network(profile: Profile, facts: HostNetFacts) -> list[Check]:
    """Interface selection and hostname resolution for a multi-node profile (doctor)."""
    out: list[Check] = []
    want = cluster_env(profile)
    pinned: dict[str, str] = {}  # variable → value, for the interface variables that name interfaces found here
    for var in IFNAME_VARS:
        name = ifname_check_name(var)
        value = facts.env.get(var) or want.get(var)
        source = "exported" if facts.env.get(var) else "from the profile"
        if not value:
            out.append(
                Check(
                    name,
                    "warn",
                    f"{var} is not set: NCCL/Gloo pick an interface themselves, often a docker bridge or one the "
                    "other nodes cannot reach.",
                    fix="Set cluster.socket_ifname in the profile (or plan --ifname) to the NIC between the nodes.",
                )
            )
            continue
        exclude, names = _ifname_values(value)
        if exclude:
            out.append(Check(name, "ok", f"{var}={value} ({source}) excludes {', '.join(names)}."))
            continue
        if any(n == "lo" for n in names):
            out.append(
                Check(
                    name,
                    "fail",
                    f"{var}={value} ({source}) selects the loopback interface; other nodes cannot reach it.",
                    fix="Use the NIC that connects the nodes (see `ip -br addr`).",
                )
            )
            continue
        missing = [n for n in names if not any(i == n or i.startswith(n) for i in facts.interfaces)]
        if missing:
            have = ", ".join(facts.interfaces) or "none"
            out.append(
                Check(
                    name,
                    "fail",
                    f"{var}={value} ({source}): no interface {', '.join(missing)} on this host (it has {have}).",
                    fix="Each node must have the interface under the same name, or set the variable per node "
                    "before `ray start`.",
                )
            )
        else:
            pinned[var] = value
            out.append(Check(name, "ok", f"{var}={value} ({source}) exists on this host."))
    if facts.hostname_ip is None:
        out.append(
            Check(
                "hostname",
                "warn",
                f"Host name {facts.hostname!r} does not resolve; Ray and vLLM fall back to guessing the address.",
                fix="Add it to /etc/hosts with the address on the inter-node network, or set VLLM_HOST_IP.",
            )
        )
    elif _is_loopback(facts.hostname_ip):
        overrides = _address_pins(profile, facts, pinned)
        out.append(
            Check(
                "hostname",
                "warn" if overrides else "fail",
                f"Host name {facts.hostname!r} resolves to {facts.hostname_ip} (loopback): anything that takes this "
                "node's address from its name would give the other nodes a loopback address"
                + (f"; {'; '.join(overrides)}." if overrides else "."),
                fix="Map the host name to the inter-node address in /etc/hosts, or start Ray with "
                "`qwendeploy cluster head/join` (sets VLLM_HOST_IP and --node-ip-address).",
            )
        )
    else:
        out.append(Check("hostname", "ok", f"{facts.hostname} resolves to {facts.hostname_ip}."))
    return out


def _address_pins(profile: Profile, facts: HostNetFacts, pinned: Mapping[str, str]) -> list[str]:
    """What keeps vLLM, NCCL and Gloo off the host name's loopback address (empty: nothing does).

    Gloo and NCCL bind the interface their ``*_SOCKET_IFNAME`` names; vLLM takes VLLM_HOST_IP, which
    ``cluster head/join`` export from ``cluster.socket_ifname`` when ``cluster.set_host_ip`` is on.
    """
    out: list[str] = []
    set_ip = facts.env.get(HOST_IP_VAR) or profile.env.get(HOST_IP_VAR)
    if set_ip:
        out.append(f"{HOST_IP_VAR}={set_ip} gives vLLM its address")
    if len(pinned) == len(IFNAME_VARS):
        out.append(" and ".join(f"{k}={v}" for k, v in pinned.items()) + " pin NCCL and Gloo to their interface")
    ifname = profile.cluster.socket_ifname
    if not set_ip and profile.cluster.set_host_ip and ifname and ifname in pinned.values():
        out.append(f"`qwendeploy cluster head/join` export {HOST_IP_VAR} from {ifname} (cluster.set_host_ip)")
    return out


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
