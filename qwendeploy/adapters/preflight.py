"""Checks ``serve`` runs before starting anything. Each returns Check values; the CLI renders them and
refuses to start (exit 2) on any ``fail``.

GPU checks need NVML (``cli.wiring.probe_report``). Where NVML itself is missing (a laptop, CI) they are
reported as ``skip`` with a warning and the launch goes on, unless ``strict``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qwendeploy.adapters.system import port_free
from qwendeploy.core.checks import Check, Status
from qwendeploy.core.profile import Profile
from qwendeploy.core.units import human_size
from qwendeploy.core.vllm_args import LaunchSpec
from qwendeploy.errors import ProbeError


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_security(specs: Sequence[LaunchSpec], *, insecure: bool) -> list[Check]:
    out: list[Check] = []
    for s in specs:
        if is_loopback(s.host):
            continue
        if s.api_key is not None:
            out.append(Check("security", "ok", f"{s.name} binds {s.host}; API key from ${s.api_key_env}"))
        elif insecure:
            out.append(Check("security", "warn", f"{s.name} binds {s.host} without an API key (--insecure)"))
        else:
            out.append(
                Check(
                    "security",
                    "fail",
                    f"{s.name} would bind {s.host} (reachable from other machines) without an API key.",
                    fix="Set server.api_key_env in the profile and export that variable, bind 127.0.0.1, "
                    "or pass --insecure if the network is trusted.",
                )
            )
    return out


def _port_user(port: int) -> str:
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                p = psutil.Process(c.pid)
                return f" (pid {c.pid}: {' '.join(p.cmdline()[:4]) or p.name()})"
    except Exception:  # listing sockets may need privileges
        return ""
    return ""


def check_ports(specs: Sequence[LaunchSpec]) -> list[Check]:
    out: list[Check] = []
    for s in specs:
        if port_free(s.port, s.host):
            out.append(Check("port", "ok", f"{s.host}:{s.port} is free"))
        else:
            out.append(
                Check(
                    "port",
                    "fail",
                    f"Port {s.port} on {s.host} is already in use{_port_user(s.port)}.",
                    fix="Stop whatever holds it, or pass --port with a free port.",
                )
            )
    return out


def check_shm(profile: Profile, *, shm_path: str = "/dev/shm") -> list[Check]:
    """Read /dev/shm's size and free space; ``core.checks.shm`` judges them (the doctor's rule)."""
    from qwendeploy.core.checks.shm import serve_shm, shm_ranks

    if shm_ranks(profile) <= 1:
        return []
    try:
        st = os.statvfs(shm_path)
    except OSError:
        return [Check("shm", "warn", f"{shm_path} cannot be read; NCCL needs shared memory with TP > 1")]
    return serve_shm(profile, shm_path, st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def _kill_command(pids: Sequence[int]) -> str:
    p = " ".join(str(x) for x in pids)
    return f"kill -TERM {p}; sleep 5; kill -KILL {p}"


def check_orphans() -> list[Check]:
    """vLLM processes whose server is gone (they hold GPU memory even without NVML seeing them)."""
    from qwendeploy.adapters.nvml import psutil_lookup
    from qwendeploy.adapters.process import vllm_processes
    from qwendeploy.core.checks.processes import is_orphan, vllm_role

    orphans = []
    for p in vllm_processes():
        info = psutil_lookup(p.pid)
        if info is not None and is_orphan(vllm_role(info.name, info.cmdline), info):
            orphans.append(p)
    if not orphans:
        return []
    desc = ", ".join(f"{p.pid} ({p.info.get('name') or '?'})" for p in orphans)
    return [
        Check(
            "orphans",
            "warn",
            f"Orphaned vLLM processes from an earlier server: {desc}.",
            fix=f"End them with: {_kill_command([p.pid for p in orphans])}",
        )
    ]


def check_gpus(
    profile: Profile,
    specs: Sequence[LaunchSpec],
    *,
    strict: bool,
    probe: Callable[[], Any],
) -> list[Check]:
    """GPUs exist and have the free memory vLLM will ask for; hardware fingerprint matches the profile."""
    try:
        report = probe()
    except ProbeError as e:
        status: Status = "fail" if strict else "skip"
        return [
            Check(
                "gpus",
                status,
                f"GPU checks skipped: {e.message}",
                fix="--strict makes this an error." if not strict else (e.hint or ""),
            )
        ]
    from qwendeploy.core.checks.profile_fit import memory_need

    out: list[Check] = []
    by_key: dict[str, Any] = {}
    for g in report.gpus:
        by_key[str(g.index)] = g
        if g.uuid:
            by_key[g.uuid] = g
    util = profile.engine.gpu_memory_utilization
    for s in specs:
        for pos, gid in enumerate(s.gpus):
            g = by_key.get(gid)
            if g is None:
                have = ", ".join(str(x.index) for x in report.gpus) or "none"
                out.append(
                    Check(
                        "gpus",
                        "fail",
                        f"GPU {gid} (placement.gpus) does not exist here; NVML sees: {have}.",
                        fix="Edit placement.gpus or run `qwendeploy plan` on this machine.",
                    )
                )
                continue
            m = memory_need(profile, g, pos)
            total, need = m.cuda_total, m.need
            free = g.memory_free
            if free is None:
                out.append(Check("gpu memory", "warn", f"GPU {gid}: NVML does not report free memory"))
                continue
            if free >= need:
                out.append(Check("gpu memory", "ok", f"GPU {gid} ({g.name}): {human_size(free)} free"))
                continue
            holders = [p for p in g.processes if p.used_bytes is None or p.used_bytes > 0]
            names = "; ".join(
                f"pid {p.pid} {p.name or '(another container)'}"
                + (f" {human_size(p.used_bytes)}" if p.used_bytes else "")
                + (" [orphaned vLLM]" if p.orphan else "")
                for p in holders
            )
            orphans = [p.pid for p in holders if p.orphan or p.vllm_role]
            hint = (
                f"End the leftover vLLM processes: {_kill_command(orphans)}"
                if orphans
                else "Free the GPU, choose other GPUs (placement.gpus), or lower engine.gpu_memory_utilization "
                f"below {free / total:.2f}."
            )
            out.append(
                Check(
                    "gpu memory",
                    "fail",
                    f"GPU {gid} has {human_size(free)} free but vLLM will ask for {human_size(need)} "
                    f"(gpu_memory_utilization {util} × {human_size(total)})."
                    + (f" Held by: {names}." if names else ""),
                    fix=hint,
                )
            )
    out += _check_fingerprint(profile, report, specs)
    return out


def _check_fingerprint(profile: Profile, report: Any, specs: Sequence[LaunchSpec]) -> list[Check]:
    hw = profile.hardware
    if not hw.fingerprint:
        return []
    if hw.simulated:
        return [
            Check(
                "hardware",
                "warn",
                f"The profile was planned for a simulated inventory ({', '.join(hw.gpus) or '?'}), not measured.",
                fix="Run `qwendeploy plan` on this machine for numbers that match it.",
            )
        ]
    seen: set[str] = set()
    selection = ",".join(g for s in specs for g in s.gpus)
    for sel in ("auto", selection):
        try:
            seen.add(report.to_machine(sel).fingerprint())
        except Exception:  # a selection NVML cannot satisfy was reported above
            continue
    if hw.fingerprint in seen:
        return [Check("hardware", "ok", "hardware matches the profile")]
    return [
        Check(
            "hardware",
            "warn",
            f"This machine's GPUs differ from the ones the profile was planned for ({', '.join(hw.gpus) or '?'}).",
            fix="Run `qwendeploy plan` again here; memory figures may not hold.",
        )
    ]


def check_model(profile: Profile, env: Mapping[str, str]) -> list[Check]:
    ref = profile.model.id
    path = Path(ref).expanduser()
    if ref.startswith(("/", ".", "~")) or path.is_dir():
        if (path / "config.json").is_file():
            return [Check("model", "ok", f"local checkpoint {path}")]
        return [
            Check(
                "model",
                "fail",
                f"model.id {ref} looks like a local directory but {path / 'config.json'} does not exist.",
                fix="Point model.id at the checkpoint directory, or use a Hub id like Qwen/Qwen2.5-7B-Instruct.",
            )
        ]
    try:
        from huggingface_hub import try_to_load_from_cache

        from qwendeploy.adapters.hub import hub_cache_dir

        cache = hub_cache_dir(env)
        hit = try_to_load_from_cache(ref, "config.json", cache_dir=str(cache), revision=profile.model.revision or None)
    except Exception:  # a cache we cannot read only loses the check
        hit = None
    if isinstance(hit, str):
        return [Check("model", "ok", f"{ref} is in the local Hugging Face cache")]
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return [
            Check(
                "model",
                "warn",
                f"{ref} is not in the local cache and HF_HUB_OFFLINE is set; vLLM will not be able to download it.",
                fix=f"huggingface-cli download {ref}",
            )
        ]
    if _hub_reachable(env):
        return [Check("model", "ok", f"{ref} is not cached; vLLM will download it from the Hub")]
    return [
        Check(
            "model",
            "warn",
            f"{ref} is not in the local cache and huggingface.co is not reachable.",
            fix="Download it where there is network (huggingface-cli download) or set model.id to a local directory.",
        )
    ]


def _hub_reachable(env: Mapping[str, str], timeout: float = 3.0) -> bool:
    import urllib.error
    import urllib.request

    endpoint = env.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models?limit=1"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_log_dir(log_dir: Path) -> list[Check]:
    """The log directory exists or can be created, and a file can be written in it."""
    import tempfile

    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=log_dir):
            pass
    except OSError as e:
        return [
            Check(
                "log dir",
                "fail",
                f"Cannot write log files in {log_dir}: {e.strerror or e}.",
                fix="Pass --log-dir with a writable directory (or set QWENDEPLOY_HOME).",
            )
        ]
    return [Check("log dir", "ok", f"logs go to {log_dir}")]


def check_profile_env_secrets(profile: Profile) -> list[Check]:
    """Secret-looking variables in ``profile.env`` (their values are hidden everywhere, but profiles get
    copied, committed and shared: secrets belong in the environment)."""
    from qwendeploy.core.vllm_args import SECRET_NAME

    names = sorted(k for k in profile.env if SECRET_NAME.search(k))
    if not names:
        return []
    return [
        Check(
            "secrets",
            "warn",
            f"The profile's env holds secret-looking variables: {', '.join(names)} (values hidden in output).",
            fix=f"Remove them from the profile and export them in the environment (export {names[0]}=...).",
        )
    ]


def run_preflight(
    profile: Profile,
    specs: Sequence[LaunchSpec],
    *,
    env: Mapping[str, str],
    strict: bool = False,
    insecure: bool = False,
    probe: Callable[[], Any],
    ray_probe: Callable[[str, Sequence[str]], Any] | None = None,
    ray_address: str | None = None,
    log_dir: Path | None = None,
) -> list[Check]:
    """Every check, in the order a user would fix them. ``probe`` returns an NvmlReport or raises ProbeError.

    Multi-node profiles (placement.nodes > 1) check the Ray cluster at ``ray_address`` (chosen by the serve use
    case) instead of this host's GPUs: ``ray_probe`` (address, env keys) → ``core.cluster.RayCluster`` (default:
    ``adapters.ray_cluster.probe``). ``log_dir``: where serve will write its logs (checked writable when given).
    """
    checks = check_security(specs, insecure=insecure)
    checks += check_profile_env_secrets(profile)
    if log_dir is not None:
        checks += check_log_dir(log_dir)
    checks += check_ports(specs)
    if profile.placement.nodes > 1:
        checks += check_ray_cluster(profile, ray_address, env=env, ray_probe=ray_probe)
    else:
        checks += check_gpus(profile, specs, strict=strict, probe=probe)
    checks += check_orphans()
    checks += check_shm(profile)
    checks += check_model(profile, env)
    return checks


def check_ray_cluster(
    profile: Profile,
    address: str | None,
    *,
    env: Mapping[str, str],
    ray_probe: Callable[[str, Sequence[str]], Any] | None = None,
) -> list[Check]:
    """The Ray cluster at ``address`` has the nodes and GPUs the profile needs, the profile's environment on every
    node and the same vLLM/torch/ray everywhere (``core.cluster.check_cluster``). No cluster at all is a ``fail``."""
    from qwendeploy.adapters import ray_cluster
    from qwendeploy.core import cluster as core

    if address is None:  # the use case chooses the address of every multi-node serve
        return [Check("ray cluster", "fail", "No Ray cluster address was given for a multi-node profile.")]
    keys = sorted({*core.IFNAME_VARS, core.HOST_IP_VAR, *core.cluster_env(profile)})
    try:
        found = (ray_probe or (lambda a, k: ray_cluster.probe(a, env_keys=k, env=env)))(address, keys)
    except ProbeError as e:
        return [Check("ray cluster", "fail", e.message, fix=e.hint or "")]
    return core.check_cluster(profile, found)
