"""Inter-node networks, PURE: the one table of figures the planner's cost model prices PP hops with
(``plan --network``) and the default every profile and command falls back to."""

from __future__ import annotations

from dataclasses import dataclass

from qwendeploy.errors import BadInput


@dataclass(frozen=True)
class Network:
    """An inter-node link as NCCL sees it: effective bandwidth of one node's traffic and per-message latency."""

    id: str
    name: str
    gbit_s: float
    """Line rate per node, Gbit/s."""
    bandwidth: float
    """Effective bytes/s NCCL reaches (sockets over Ethernet ~80% of line rate, RDMA ~90%)."""
    latency_s: float
    """Fixed cost of one send/recv or all-reduce step between nodes (NCCL over TCP sockets: tens of µs;
    RDMA/InfiniBand: a few µs)."""
    transport: str


NETWORKS: tuple[Network, ...] = (
    Network("25gbe", "25 Gbit Ethernet (TCP sockets)", 25, 2.5e9, 60e-6, "sockets"),
    Network("100gbe", "100 Gbit Ethernet (TCP sockets)", 100, 10e9, 50e-6, "sockets"),
    Network("400gbe", "400 Gbit Ethernet (RoCE)", 400, 45e9, 10e-6, "rdma"),
    Network("ib-hdr", "InfiniBand HDR 200 Gbit", 200, 22e9, 5e-6, "rdma"),
    Network("ib-ndr", "InfiniBand NDR 400 Gbit", 400, 45e9, 4e-6, "rdma"),
)
"""The one table of inter-node figures the planner's cost model uses (``plan --network``). 100gbe is the
default and matches the planner's generic ``network`` link class."""

DEFAULT_NETWORK = "100gbe"

SLOW_HOP_FRACTION = 0.10
"""PP across nodes "hurts" when the per-step hop over the network costs more than this share of a decode step,
or a prefill chunk's activations take longer to cross than SLOW_PREFILL_HOP_S."""
SLOW_PREFILL_HOP_S = 0.020


def find_network(name: str) -> Network:
    """The network called ``name`` (case-insensitive; ``ib_ndr``/``IB-NDR`` alike).

    Raises:
        BadInput: not in ``NETWORKS`` (the message lists them).
    """
    key = name.strip().lower().replace("_", "-")
    for n in NETWORKS:
        if n.id == key:
            return n
    raise BadInput(
        f"Unknown --network {name!r}.",
        hint="Use one of: " + ", ".join(f"{n.id} ({n.name})" for n in NETWORKS) + ".",
    )
