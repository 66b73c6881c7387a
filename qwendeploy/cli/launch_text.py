"""The chosen placement as something to copy: the vLLM argv and environment (for ``--json``), the command wrapped
with ``\\`` continuation lines (for a terminal), and how clients reach the server(s).

Built exactly as ``serve`` builds it (profile → core.vllm_args), so what the plan shows is what will run. The plan
holds no secret: a profile's API key is only ever named (``server.api_key_env``), never valued.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from qwendeploy.core.planner import Plan
from qwendeploy.core.server_address import client_url
from qwendeploy.core.vllm_args import LaunchSpec


def launch_specs(p: Plan) -> list[LaunchSpec]:
    """Every server process the chosen placement starts (empty when nothing fits)."""
    if p.chosen is None:
        return []
    from qwendeploy.core.profile_builder import profile_from_plan
    from qwendeploy.core.vllm_args import build_launch_specs

    return build_launch_specs(profile_from_plan(p, checked=False), vllm_bin="vllm", base_env={})


def wrapped_command(argv: Sequence[str], env_set: Mapping[str, str] | None = None, *, indent: str = "  ") -> str:
    """A shell command over several lines joined by `` \\``: each variable, ``vllm serve MODEL`` and each flag with
    its value on its own line. Pasted into a shell it is the same command as the one-line form."""
    lines = [f"{k}={shlex.quote(v)}" for k, v in (env_set or {}).items()]
    head_end = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    lines.append(" ".join(shlex.quote(a) for a in argv[:head_end]))
    i = head_end
    while i < len(argv):
        flag = argv[i]
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            lines.append(f"{shlex.quote(flag)} {shlex.quote(argv[i + 1])}")
            i += 2
        else:
            lines.append(shlex.quote(flag))
            i += 1
    return " \\\n".join(line if n == 0 else indent + line for n, line in enumerate(lines))


def endpoints(specs: Sequence[LaunchSpec]) -> list[str]:
    return [f"{client_url(s.host, s.port)}/v1" for s in specs]


def reach_words(specs: Sequence[LaunchSpec], dp: int) -> str:
    """How clients reach the replicas, in one sentence (empty for one replica)."""
    if dp <= 1 or not specs:
        return ""
    urls = endpoints(specs)
    if len(specs) == 1:
        return (
            f"{dp} replicas behind one endpoint, {urls[0]}: vLLM's data-parallel mode (--data-parallel-size {dp}) "
            "balances requests over them."
        )
    return (
        f"{dp} independent servers on {', '.join(urls)}: clients need a load balancer in front (nginx, HAProxy, "
        "LiteLLM) or must spread requests themselves."
    )


def launch_json(p: Plan) -> dict[str, Any] | None:
    """``plan --json``'s ``launch``: argv (``vllm serve MODEL …`` tokens) and environment of every server process,
    where clients reach them, and the first one as one shell line. None when nothing fits."""
    specs = launch_specs(p)
    if not specs:
        return None
    from qwendeploy.core.vllm_args import display_command, redact_argv, redact_env

    servers = [
        {
            "replica": s.replica,
            "argv": redact_argv(s.argv),
            "env": redact_env(s.env_set),
            "gpus": list(s.gpus),
            "endpoint": url,
            "command": display_command(s),
        }
        for s, url in zip(specs, endpoints(specs), strict=True)
    ]
    dp = p.chosen.dp if p.chosen else 1
    return {
        "argv": servers[0]["argv"],
        "env": servers[0]["env"],
        "command": servers[0]["command"],
        "data_parallel_mode": "vllm" if dp > 1 and len(specs) == 1 else ("servers" if dp > 1 else None),
        "endpoints": [s["endpoint"] for s in servers],
        "clients": reach_words(specs, dp) or f"one endpoint, {servers[0]['endpoint']}",
        "servers": servers,
    }
