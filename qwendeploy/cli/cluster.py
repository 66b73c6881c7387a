"""``qwendeploy cluster head|join|status``: start Ray on every node with the profile's environment, and show it.

Ray workers keep the environment of the ``ray start`` that launched their node, so these commands export the
profile's NCCL/Gloo/CUDA/vLLM variables (``core.cluster.node_env``) *into* ``ray start`` and print them.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qwendeploy.cli.errors import user_errors
from qwendeploy.errors import BadInput, LaunchFailed

if TYPE_CHECKING:  # deferred at run time, to keep `--help` light
    from qwendeploy.core.cluster import RayStartOptions
    from qwendeploy.core.profile import Profile

app = typer.Typer(
    name="cluster",
    help="Start and inspect the Ray cluster a multi-node profile runs on (head, join, status).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_Opt = typer.Option


def _load(profile_path: Path, ifname: str | None) -> Profile:
    from qwendeploy.adapters.profile_files import read_profile

    prof = read_profile(profile_path)
    if ifname:
        prof = prof.model_copy(update={"cluster": prof.cluster.model_copy(update={"socket_ifname": ifname})})
    return prof


def _node_ip(prof: Profile, node_ip: str | None) -> str | None:
    if node_ip:
        return node_ip
    ifname = prof.cluster.socket_ifname
    if not ifname or ifname.startswith("^"):
        return None
    from qwendeploy.adapters.ray_cluster import interface_address

    first = ifname.split(",")[0].lstrip("=")
    ip = interface_address(first)
    if ip is None:
        raise BadInput(
            f"cluster.socket_ifname is {ifname}, but this host has no interface {first} with an IPv4 address.",
            hint="Pass --ifname with this node's NIC between the nodes (see `ip -br addr`), or --node-ip.",
        )
    return ip


def _check_node_flags(head_address: str | None, ifname: str | None, opts: RayStartOptions) -> None:
    """The flags that reach ``ray start`` and the printed commands, checked like the profile's fields."""
    from qwendeploy.core import limits
    from qwendeploy.core.field_checks import check_host, check_ifname

    texts: list[tuple[str, str | None, Callable[[str], str]]] = [
        ("HEAD_ADDRESS", head_address, check_host),
        ("--ifname", ifname, check_ifname),
        ("--node-ip", opts.node_ip, check_host),
    ]
    for flag, value, check in texts:
        if value is None:
            continue
        try:
            check(value)
        except ValueError as e:
            raise BadInput(f"{flag} {limits.shown(value, 60)}: {e}.") from None
    if opts.temp_dir is not None and ("\x00" in opts.temp_dir or len(opts.temp_dir) > limits.MAX_STRING):
        raise BadInput("--temp-dir must be a path (no NUL, at most 4096 characters).")
    for flag, count in (("--num-gpus", opts.num_gpus), ("--num-cpus", opts.num_cpus)):
        if count is not None and not 0 <= count <= limits.MAX_COUNT:
            raise BadInput(f"{flag} must be between 0 and {limits.MAX_COUNT}, got {count}.")
    if opts.object_store_memory is not None and not 0 < opts.object_store_memory <= 1 << 50:
        raise BadInput(f"--object-store-memory must be a positive number of bytes, got {opts.object_store_memory}.")


def _start(
    kind: str,
    profile_path: Path,
    head_address: str | None,
    ifname: str | None,
    opts: RayStartOptions,
    *,
    dry_run: bool,
    json_out: bool,
) -> None:
    """``ray start`` for the head or a joining node, with the profile's environment exported first."""
    from dataclasses import replace

    from qwendeploy.core import cluster as core

    _check_node_flags(head_address, ifname, opts)
    prof = _load(profile_path, ifname)
    ip = _node_ip(prof, opts.node_ip)
    opts = replace(opts, node_ip=ip)
    if dry_run:
        ray_bin = "ray"
    else:
        from qwendeploy.adapters.ray_cluster import ray_executable

        ray_bin = ray_executable()
    if kind == "head":
        argv = core.ray_head_argv(ray_bin, prof, opts)
    else:
        assert head_address is not None
        argv = core.ray_join_argv(ray_bin, prof, head_address, opts)
    env_set = core.node_env(prof, ip)
    warnings = []
    if prof.placement.nodes > 1 and not prof.cluster.socket_ifname and "NCCL_SOCKET_IFNAME" not in prof.env:
        warnings.append(
            "cluster.socket_ifname is not set: NCCL and Gloo will guess the interface between the nodes "
            "(pass --ifname or set it in the profile)."
        )
    doc: dict[str, Any] = {"role": kind, "argv": argv, "env": env_set, "warnings": warnings}
    if not json_out:
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)
        typer.echo(f"# Environment for every Ray process on this node ({len(env_set)} variables):")
        for k, v in env_set.items():
            typer.echo(f"export {k}={shlex.quote(v)}")
        typer.echo(shlex.join(argv))
    if dry_run:
        if json_out:
            typer.echo(json.dumps(doc, indent=2))
        return
    from qwendeploy.adapters.ray_cluster import start_node

    started = start_node(argv, {**os.environ, **env_set})
    doc.update(returncode=started.returncode, pgid=started.pgid)
    if not started.ok:
        tail = "\n".join(started.output.strip().splitlines()[-8:])
        raise LaunchFailed(
            f"`ray start` failed (exit {started.returncode}):\n{tail}",
            hint="A node already running Ray must be stopped first (`ray stop`); check the address and port.",
        )
    port = prof.cluster.ray_port
    where = prof.cluster.head_address or ip or "<this-host-address>"
    join = f"qwendeploy cluster join {where}:{port} {shlex.quote(str(profile_path))}"
    if json_out:
        doc["join_command"] = join if kind == "head" else None
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"Ray {kind} started (process group {started.pgid}); stop it with `ray stop`.")
    if kind == "head":
        typer.echo(f"On every other node run:\n  {join}")
        typer.echo(f"Then check: qwendeploy cluster status --profile {shlex.quote(str(profile_path))}")


# Options `head` and `join` share (one declaration each).
_NodeIp = Annotated[str | None, _Opt(help="This node's address (default: its IPv4 on cluster.socket_ifname).")]
_Ifname = Annotated[str | None, _Opt(help="Override cluster.socket_ifname (NCCL/GLOO_SOCKET_IFNAME).")]
_NumGpus = Annotated[int | None, _Opt(help="GPUs to declare (default cluster.gpus_per_node).")]
_NumCpus = Annotated[int | None, _Opt(help="CPUs to declare (default: Ray counts them).")]
_ObjectStore = Annotated[int | None, _Opt(help="Ray object store size in bytes.")]
_TempDir = Annotated[str | None, _Opt(help="Ray's temporary directory on this node.")]
_DryRun = Annotated[bool, _Opt("--dry-run", help="Print the environment and command only.")]
_Json = Annotated[bool, _Opt("--json", help="Machine-readable output.")]


@app.command("head")
def head(
    profile: Annotated[Path, typer.Argument(help="Multi-node profile written by `qwendeploy plan --nodes N`.")],
    node_ip: _NodeIp = None,
    ifname: _Ifname = None,
    num_gpus: _NumGpus = None,
    num_cpus: _NumCpus = None,
    object_store_memory: _ObjectStore = None,
    temp_dir: _TempDir = None,
    dashboard: Annotated[bool, _Opt("--dashboard/--no-dashboard", help="Start Ray's dashboard.")] = False,
    dry_run: _DryRun = False,
    json_out: _Json = False,
) -> None:
    """Start the Ray head on this node with the profile's environment (exit 0 started, 1 ray failed, 2 bad input)."""
    from qwendeploy.core.cluster import RayStartOptions

    opts = RayStartOptions(node_ip, num_gpus, num_cpus, object_store_memory, temp_dir, include_dashboard=dashboard)
    with user_errors():
        _start("head", profile, None, ifname, opts, dry_run=dry_run, json_out=json_out)


@app.command("join")
def join(
    head_address: Annotated[str, typer.Argument(help="The head's HOST or HOST:PORT (port default cluster.ray_port).")],
    profile: Annotated[Path, typer.Argument(help="The same profile as on the head.")],
    node_ip: _NodeIp = None,
    ifname: _Ifname = None,
    num_gpus: _NumGpus = None,
    num_cpus: _NumCpus = None,
    object_store_memory: _ObjectStore = None,
    temp_dir: _TempDir = None,
    dry_run: _DryRun = False,
    json_out: _Json = False,
) -> None:
    """Join this node to the Ray cluster at HEAD_ADDRESS with the profile's environment (exit 0, 1, 2)."""
    from qwendeploy.core.cluster import RayStartOptions

    opts = RayStartOptions(node_ip, num_gpus, num_cpus, object_store_memory, temp_dir)
    with user_errors():
        _start("join", profile, head_address, ifname, opts, dry_run=dry_run, json_out=json_out)


@app.command("status")
def status(
    address: Annotated[
        str | None, _Opt(help="Ray head HOST:PORT (default $RAY_ADDRESS, else 127.0.0.1:cluster.ray_port).")
    ] = None,
    profile: Annotated[Path | None, _Opt(help="Check the cluster against this profile's needs.")] = None,
    json_out: Annotated[bool, _Opt("--json", help="Machine-readable output.")] = False,
) -> None:
    """Nodes, GPUs, environment and versions per node from Ray (exit 0 fine, 1 a --profile check failed, 2 no
    cluster)."""
    with user_errors():
        code = _status(address, profile, json_out)
    raise typer.Exit(code)


def _status(address: str | None, profile_path: Path | None, json_out: bool) -> int:
    from qwendeploy.adapters import ray_cluster
    from qwendeploy.core import cluster as core

    prof = _load(profile_path, None) if profile_path else None
    port = prof.cluster.ray_port if prof else 6379
    addr = address or ray_cluster.default_address(os.environ, port)
    keys = sorted({*core.IFNAME_VARS, core.HOST_IP_VAR, *(core.cluster_env(prof) if prof else {})})
    found = ray_cluster.probe(addr, env_keys=keys)
    checks = core.check_cluster(prof, found) if prof else []
    if json_out:
        doc = {
            "address": found.address,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "address": n.address,
                    "alive": n.alive,
                    "head": n.is_head,
                    "gpus": n.gpus,
                    "cpus": n.cpus,
                    "labels": dict(n.labels),
                    "env": dict(n.env),
                    "versions": dict(n.versions),
                }
                for n in found.nodes
            ],
            "total_gpus": found.total_gpus,
            "checks": [c.to_dict() for c in checks],
        }
        typer.echo(json.dumps(doc, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console(highlight=False, soft_wrap=True)
        t = Table(title=f"Ray cluster at {found.address}: {found.total_gpus} GPU(s) on {len(found.alive)} node(s)")
        for col in ("node", "address", "role", "alive", "GPUs", "CPUs", *core.IFNAME_VARS, core.HOST_IP_VAR, "vllm"):
            t.add_column(col)
        for n in found.nodes:
            t.add_row(
                n.node_id[:8],
                n.address,
                "head" if n.is_head else "worker",
                "yes" if n.alive else "no",
                f"{n.gpus:g}",
                f"{n.cpus:g}",
                *(str(n.env.get(k) or "-") for k in (*core.IFNAME_VARS, core.HOST_IP_VAR)),
                str(n.versions.get("vllm") or "-"),
            )
        console.print(t)
        marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "skip": "[yellow]-[/]", "fail": "[red]✗[/]"}
        for c in checks:
            console.print(f"{marks[c.status]} {escape(c.name)}: {escape(c.detail)}")
            if c.fix and c.status != "ok":
                console.print(f"    [dim]{escape(c.fix)}[/]")
    return 1 if any(c.status == "fail" for c in checks) else 0
