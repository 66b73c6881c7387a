"""Host facts that are not NVML's: /dev/shm, container, NCCL environment, InfiniBand, memlock, versions, ports.

Every function is best effort and never raises: what cannot be read is None. Paths and mappings are
parameters so tests point them at a temporary directory instead of the real /sys and /proc.
Never imports torch or vLLM: versions come from ``importlib.metadata`` and torch's CUDA build from the text of
``torch/version.py``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from qwendeploy.core.machine_facts import IbDevice, IbPort, SystemFacts

if TYPE_CHECKING:
    from qwendeploy.core.cluster import HostNetFacts

ENV_PREFIXES = ("NCCL_", "GLOO_", "VLLM_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_")
ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING", "LD_LIBRARY_PATH", "MASTER_ADDR")
VERSION_DISTS = (
    "vllm",
    "torch",
    "nvidia-nccl-cu12",
    "nvidia-nccl-cu13",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime",
    "flashinfer-python",
    "triton",
    "ray",
    "nvidia-ml-py",
)
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib", "/usr/lib/aarch64-linux-gnu")


def shm(path: str | os.PathLike[str] = "/dev/shm") -> tuple[int | None, int | None]:
    """(total, free) bytes of the filesystem at ``path``; (None, None) when it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def container(root: str | os.PathLike[str] = "/") -> tuple[bool | None, str | None, str | None]:
    """(in a container?, kind, evidence) from /.dockerenv, /run/.containerenv, env markers and cgroup text."""
    r = Path(root)
    try:
        if (r / ".dockerenv").exists():
            return True, "docker", "/.dockerenv exists"
        if (r / "run/.containerenv").exists():
            return True, "podman", "/run/.containerenv exists"
        if (r / "var/run/secrets/kubernetes.io").exists():
            return True, "kubernetes", "/var/run/secrets/kubernetes.io exists"
    except OSError:
        pass
    for name in ("proc/1/cgroup", "proc/self/cgroup"):
        try:
            text = (r / name).read_text(errors="replace")
        except OSError:
            continue
        for marker, kind in (
            ("kubepods", "kubernetes"),
            ("docker", "docker"),
            ("containerd", "containerd"),
            ("libpod", "podman"),
            ("lxc", "lxc"),
        ):
            if marker in text:
                return True, kind, f"/{name} mentions {marker}"
    try:
        mountinfo = (r / "proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        return None, None, None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and ("overlay" in line or "/docker/" in line):
            return True, "container", "the root filesystem is an overlay mount"
    return False, None, None


def relevant_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """NCCL_*, GLOO_*, VLLM_*, TORCH_NCCL_*, CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER … from ``env``."""
    source = os.environ if env is None else env
    return {
        k: v for k, v in sorted(source.items()) if k.startswith(ENV_PREFIXES) or k in ENV_NAMES or k == "NCCL_DEBUG"
    }


def infiniband(root: str | os.PathLike[str] = "/sys/class/infiniband") -> list[IbDevice] | None:
    """RDMA devices and their ports' state; None when the class directory does not exist."""
    base = Path(root)
    try:
        if not base.is_dir():
            return None
        names = sorted(p.name for p in base.iterdir())
    except OSError:
        return None
    devices = []
    for name in names:
        dev = IbDevice(name=name)
        ports_dir = base / name / "ports"
        try:
            port_names = sorted((p.name for p in ports_dir.iterdir()), key=lambda x: int(x) if x.isdigit() else 0)
        except OSError:
            port_names = []
        for pn in port_names:
            pdir = ports_dir / pn
            dev.ports.append(
                IbPort(
                    port=int(pn) if pn.isdigit() else 0,
                    state=_read_ib_value(pdir / "state"),
                    rate=_read_ib_value(pdir / "rate", keep_all=True),
                    link_layer=_read_ib_value(pdir / "link_layer", keep_all=True),
                )
            )
        devices.append(dev)
    return devices


def _read_ib_value(path: Path, keep_all: bool = False) -> str | None:
    """sysfs IB files read like ``4: ACTIVE``; keep the word after the colon."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    if keep_all:
        return text
    return text.split(":", 1)[-1].strip() or None


def nccl_net_plugin(env: Mapping[str, str] | None = None, lib_dirs: Iterable[str] | None = None) -> list[str]:
    """libnccl-net*.so files on LD_LIBRARY_PATH and the usual library directories."""
    source = os.environ if env is None else env
    dirs = [d for d in source.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += list(_LIB_DIRS if lib_dirs is None else lib_dirs)
    found: list[str] = []
    for d in dirs:
        try:
            for path in sorted(glob.glob(os.path.join(d, "libnccl-net*.so*"))):
                if path not in found:
                    found.append(path)
        except OSError:
            continue
    return found


def memlock() -> tuple[int | None, int | None]:
    """(soft, hard) RLIMIT_MEMLOCK in bytes; -1 means unlimited."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (ImportError, OSError, ValueError, AttributeError):
        return None, None
    inf = resource.RLIM_INFINITY
    return (-1 if soft == inf else int(soft)), (-1 if hard == inf else int(hard))


def versions(dists: Iterable[str] = VERSION_DISTS) -> dict[str, str | None]:
    """Installed version of each distribution, None when absent (importlib.metadata only: nothing is imported)."""
    out: dict[str, str | None] = {}
    for name in dists:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
        except Exception:  # broken metadata must not break doctor
            out[name] = None
    return out


_CUDA_RE = re.compile(r"""^cuda\s*(?::\s*[^=]+)?=\s*['"]([0-9.]+)['"]""", re.MULTILINE)


def torch_cuda_version(version_text: str | None = None) -> str | None:
    """torch's CUDA build ("12.8") from the text of torch/version.py, or from the "+cu128" local version."""
    text = version_text
    if text is None:
        text = _torch_version_file()
    if text:
        m = _CUDA_RE.search(text)
        if m:
            return m.group(1)
    try:
        v = importlib.metadata.version("torch")
    except Exception:
        return None
    m2 = re.search(r"\+cu(\d+)(\d)$", v)
    return f"{m2.group(1)}.{m2.group(2)}" if m2 else None


def _torch_version_file() -> str | None:
    try:
        dist = importlib.metadata.distribution("torch")
    except Exception:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == "torch/version.py":
            try:
                return Path(str(dist.locate_file(f))).read_text(errors="replace")
            except OSError:
                return None
    return None


def torch_available() -> bool:
    """Whether ``import torch`` would find a module (find_spec; torch itself is not imported)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def iommu(
    sys_root: str | os.PathLike[str] = "/sys/class/iommu", cmdline_path: str | os.PathLike[str] = "/proc/cmdline"
) -> tuple[bool | None, bool | None]:
    """(IOMMU active?, iommu=pt?) from /sys/class/iommu and the kernel command line."""
    enabled: bool | None
    try:
        enabled = any(Path(sys_root).iterdir())
    except OSError:
        enabled = None
    try:
        cmdline = Path(cmdline_path).read_text(errors="replace").split()
    except OSError:
        return enabled, None
    passthrough = "iommu=pt" in cmdline or "iommu.passthrough=1" in cmdline
    return enabled, passthrough


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP server could bind ``host:port`` now (SO_REUSEADDR, as uvicorn binds; IPv4 or IPv6)."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bare or "0.0.0.0", port))
        except OSError:
            return False
    return True


def collect(
    *,
    shm_path: str | os.PathLike[str] = "/dev/shm",
    env: Mapping[str, str] | None = None,
    root: str | os.PathLike[str] = "/",
    ports: Iterable[int] = (),
) -> SystemFacts:
    """All host facts doctor checks. ``root`` relocates /sys, /proc and marker files (tests)."""
    source = dict(os.environ if env is None else env)
    r = Path(root)
    facts = SystemFacts(shm_path=str(shm_path))
    facts.shm_total_bytes, facts.shm_free_bytes = shm(shm_path)
    facts.in_container, facts.container_kind, facts.container_evidence = container(r)
    facts.env = relevant_env(source)
    facts.infiniband = infiniband(r / "sys/class/infiniband")
    facts.nccl_net_plugin = source.get("NCCL_NET_PLUGIN")
    facts.nccl_net_plugin_libs = nccl_net_plugin(
        source, lib_dirs=[str(r / d.lstrip("/")) for d in _LIB_DIRS] if str(r) != "/" else None
    )
    facts.memlock_soft, facts.memlock_hard = memlock()
    facts.versions = versions()
    facts.torch_cuda = torch_cuda_version() if facts.versions.get("torch") else None
    facts.torch_available = torch_available()
    facts.iommu_enabled, facts.iommu_passthrough = iommu(r / "sys/class/iommu", r / "proc/cmdline")
    for port in ports:
        with contextlib.suppress(OSError, OverflowError):
            facts.ports_free[int(port)] = port_free(int(port))
    return facts


def host_network(
    env: Mapping[str, str] | None = None, sys_class_net: str | os.PathLike[str] = "/sys/class/net"
) -> HostNetFacts:
    """Interfaces, the NCCL/Gloo/vLLM address variables exported here, and what the host name resolves to
    (for a multi-node profile's checks in ``core.cluster.check_host_network``)."""
    from qwendeploy.core.cluster import HOST_IP_VAR, IFNAME_VARS, HostNetFacts

    env = os.environ if env is None else env
    try:
        names = sorted(p.name for p in Path(sys_class_net).iterdir())
    except OSError:
        names = sorted(name for _, name in socket.if_nameindex())
    hostname = socket.gethostname()
    try:
        ip: str | None = socket.gethostbyname(hostname)
    except OSError:
        ip = None
    keys = (*IFNAME_VARS, HOST_IP_VAR)
    return HostNetFacts(
        interfaces=tuple(names),
        env={k: env[k] for k in keys if env.get(k)},
        hostname=hostname,
        hostname_ip=ip,
    )
