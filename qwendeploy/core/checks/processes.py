"""Which processes are vLLM's, and which of them are orphans: the one rule doctor (``gpu_processes``, through
NVML's process list) and serve's preflight (``orphans``, through the whole process table) share. The adapters
gather :class:`ProcessInfo`; this module judges it."""

from __future__ import annotations

from qwendeploy.core.machine_facts import ProcessInfo

VLLM_PROCESS_MARKERS = (
    ("VLLM::EngineCore", "engine_core"),
    ("VLLM::Worker", "worker"),
    ("ray::RayWorkerWrapper", "ray_worker"),
)
# Parents that adopt orphans: PID 1 (unless it is itself vLLM, as in `docker run ... vllm serve`) and subreapers.
_REAPER_NAMES = ("systemd", "init", "tini", "dumb-init", "docker-init", "containerd-shim", "catatonit")


def vllm_role(name: str, cmdline: str) -> str | None:
    """Which vLLM process this is, from its name/command line (vLLM renames its processes via setproctitle)."""
    text = f"{name} {cmdline}"
    for marker, role in VLLM_PROCESS_MARKERS:
        if marker in text:
            return role
    if name.startswith("VLLM::") or cmdline.startswith("VLLM::"):
        return "vllm_process"  # a process title vLLM sets that none of the markers above names
    lowered = cmdline.lower()
    if "vllm serve" in lowered or "vllm.entrypoints" in lowered or "vllm::apiserver" in lowered.replace(" ", ""):
        return "api_server"
    return None


def is_orphan(role: str | None, info: ProcessInfo) -> bool:
    """A vLLM engine/worker whose parent is gone: adopted by PID 1 (when PID 1 is not vLLM) or a subreaper."""
    if role in (None, "api_server") or info.ppid is None:
        return False
    parent_is_vllm = vllm_role(info.parent_name, info.parent_cmdline) is not None or "vllm" in (
        info.parent_cmdline.lower()
    )
    if info.ppid == 1:
        return not parent_is_vllm
    parent = info.parent_name.lower()
    return any(parent.startswith(r) for r in _REAPER_NAMES) and not parent_is_vllm
