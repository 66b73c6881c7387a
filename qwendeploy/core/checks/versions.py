"""Package versions: this host's (doctor's ``versions``) and whether every Ray node has the same ones (serve's and
doctor's multi-node ``versions``) — one module, so "which vLLM/torch is this" has one answer."""

from __future__ import annotations

from collections.abc import Mapping

from qwendeploy.core.checks import Check
from qwendeploy.core.machine_facts import SystemFacts

VERSION_PACKAGES = ("vllm", "torch", "ray")
"""Packages whose versions must match on every node (a mismatch breaks Ray's pickling or vLLM's workers)."""


def check_versions(sysf: SystemFacts) -> Check:
    v = sysf.versions
    nccl = v.get("nvidia-nccl-cu13") or v.get("nvidia-nccl-cu12")
    parts = [
        f"vLLM {v.get('vllm') or 'not installed'}",
        f"torch {v.get('torch') or 'not installed'}" + (f" (CUDA {sysf.torch_cuda})" if sysf.torch_cuda else ""),
        f"NCCL {nccl or 'not installed (pip)'}",
    ]
    return Check("versions", "ok", ", ".join(parts) + ".")


def check_node_versions(nodes: Mapping[str, Mapping[str, str | None]]) -> list[Check]:
    """The same vLLM/torch/ray on every node where Ray could tell (``nodes``: a label per node → its versions)."""
    if not nodes:
        return [Check("versions", "skip", "Package versions per node are unknown (no task could run).")]
    out: list[Check] = []
    for pkg in VERSION_PACKAGES:
        seen: dict[str | None, list[str]] = {}
        for label, versions in nodes.items():
            seen.setdefault(versions.get(pkg), []).append(label)
        if len(seen) > 1:
            parts = "; ".join(f"{v or 'not installed'} on {', '.join(labels)}" for v, labels in seen.items())
            out.append(
                Check(
                    "versions",
                    "fail",
                    f"{pkg} differs between nodes: {parts}.",
                    fix=f"Install the same {pkg} on every node (the same container image is simplest).",
                )
            )
        elif None in seen and pkg == "vllm":
            out.append(Check("versions", "warn", "vLLM is not importable on any node's Ray workers."))
    if not any(c.status == "fail" for c in out):
        v = next(iter(nodes.values()))
        desc = ", ".join(f"{p} {v.get(p) or '-'}" for p in VERSION_PACKAGES)
        out.append(Check("versions", "ok", f"Same versions on {len(nodes)} node(s): {desc}."))
    return out
