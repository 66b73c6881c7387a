"""Whole-log evidence the rules weigh besides single lines: the log's own clock, where a start-up stalled, signs
of a container, the host driver, and whose memory the processes named by a CUDA OOM are.

Pure: each helper reads one line (or the collected state) and never does I/O. The engine calls them from its
single pass over the log (see scan.py); rules.yaml names the facts and values they feed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------- text


def normalise(text: str) -> str:
    """A copy-pasted line made comparable: full-width punctuation and blanks (``：``, ``（``, U+3000) folded to ASCII
    by NFKC. Runs of blanks stay (vLLM's banner marker has two). Plain-ASCII lines, nearly all of a log, are
    returned as they are."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text)


# ---------------------------------------------------------------------------------------------- the log's clock

# vLLM: "INFO 08-31 09:50:46 ..." / "INFO 2025-06-05 10:48:09", Python logging "2025-02-26 11:14:54,614",
# NCCL's "[2025-06-16 17:17:39]", glog (torch): "W0714 23:06:54.603780".
TS = re.compile(
    r"(?<!\d)(?:(?P<y>\d{4})-)?(?P<mo>[01]\d)-(?P<d>[0-3]\d)[ T](?P<h>[0-2]\d):(?P<mi>[0-5]\d):(?P<s>[0-5]\d)"
    r"|\b[IWEF](?P<gmo>[01]\d)(?P<gd>[0-3]\d) (?P<gh>[0-2]\d):(?P<gmi>[0-5]\d):(?P<gs>[0-5]\d)"
)
_DAYS_BEFORE = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
"""Days before each month (1-based) in a non-leap year: durations only, so a leap day is a 1-day error at most."""


def timestamp(text: str) -> tuple[float, str] | None:
    """Seconds on a year-relative clock and the time as written, from the first timestamp in a line's head."""
    m = TS.search(text, 0, 160)
    if m is None:
        return None
    if m.group("mo") is not None:
        mo, d, h, mi, s = (int(m.group(k)) for k in ("mo", "d", "h", "mi", "s"))
    else:
        mo, d, h, mi, s = (int(m.group(k)) for k in ("gmo", "gd", "gh", "gmi", "gs"))
    if not 1 <= mo <= 12 or not 1 <= d <= 31 or h > 23:
        return None
    days = _DAYS_BEFORE[mo] + d - 1
    return float(((days * 24 + h) * 60 + mi) * 60 + s), m.group(0)


def duration(seconds: float) -> str:
    """``"2 h 5 min"``, ``"4 min 12 s"``, ``"9 s"``."""
    s = max(0, round(seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


STALL_CHECKS: Mapping[str | None, str] = {
    None: "that the process is alive and what it waits on (`py-spy dump --pid PID`), the model download (the Hugging "
    "Face cache, HF_HUB_OFFLINE, network), and `qwendeploy doctor` (driver, GPUs)",
    "starting": "GPU peer-to-peer between the ranks (`qwendeploy doctor`: p2p, acs — PCIe ACS or an IOMMU redirects "
    "P2P), a run with NCCL_P2P_DISABLE=1 as a test (it passing means P2P is broken), `qwendeploy doctor --nccl-test`, "
    "a stuck or missing rank (every worker reached `init_distributed_environment`?), NCCL_SOCKET_IFNAME on several "
    "nodes, and `ray status` with the Ray backend",
    "loading": "the read speed of the weights (a network filesystem or a slow disk: `iostat -x 5`), free host memory "
    "(`free -g`: swapping stalls loading), and a download that is still running (the Hugging Face cache size)",
    "profiling": "torch.compile/Triton compilation (the first start compiles for minutes: ~/.cache/vllm grows), GPU "
    "utilisation in `nvidia-smi`, and a rank stuck in a collective (all ranks logged the same step?)",
    "cudagraph": "a rank stuck while capturing CUDA graphs (custom all-reduce over P2P: retry with "
    "--disable-custom-all-reduce, or --enforce-eager as a test), and `qwendeploy doctor` (p2p, acs)",
    "sampler": "the sampler warm-up and API-server start (GPU utilisation in `nvidia-smi`; `ss -ltnp` for the port), "
    "and "
    "the engine-core process still alive",
    "serving": "the requests: a first request stuck at 0% is a collective that never completes (P2P/ACS, "
    "`qwendeploy doctor --nccl-test`)",
}
"""What to check when a start-up stopped making progress in a phase (no error, never ready)."""


# ---------------------------------------------------------------------------------------------- containers, driver

_CONTAINER = re.compile(
    r"(?<![\d.])172\.17\.\d{1,3}\.\d{1,3}(?![\d.])"  # Docker's default bridge network
    r"|^(?:\S+\s+)?[0-9a-f]{12}:\d+:\d+ \[\d+\] NCCL"  # NCCL's "host:pid:tid [dev]" with a container id as host
    r"|/\.dockerenv|kubepods|\bdocker run\b|--shm-size|--ipc[= ]host|/usr/local/cuda[\w.-]*/compat"
)
_W_CONTAINER = ("172.17.", "NCCL", "docker", "kubepods", "shm-size", "ipc", "compat")


def container_hint(text: str) -> str | None:
    """The part of a line that shows the server ran in a container, if any."""
    if not any(w in text for w in _W_CONTAINER):
        return None
    m = _CONTAINER.search(text)
    return m.group(0).strip() if m else None


_DRIVER = re.compile(
    r"Driver Version:\s*(?P<a>\d{3})\.\d+|\bNVIDIA[- ](?P<b>\d{3})\.\d+(?:\.\d+)?\b|driver version (?P<c>\d{3})\.\d+"
    r"|NVRM version: .*?(?P<d>\d{3})\.\d+"
)


def host_driver(text: str) -> str | None:
    """The host driver's major version (``"580"``) named by an nvidia-smi header or a driver line."""
    if "river" not in text and "NVIDIA" not in text and "NVRM" not in text:
        return None
    m = _DRIVER.search(text)
    if m is None:
        return None
    return next(g for g in m.groups() if g is not None)


NEW_DRIVER_MAJOR = 580
"""R580 supports CUDA 13.0 and every CUDA 12 runtime: with it, an 803 is not a driver that is too old."""


# ---------------------------------------------------------------------------------------------- whose memory

_NAMED = re.compile(r"Process (?P<pid>\d+) has (?P<mem>[\d.]+ [GMK]iB) memory in use")
_SELF = re.compile(
    r"Of the allocated memory (?P<alloc>[\d.]+ [GMK]iB) is allocated by PyTorch, "
    r"and (?P<res>[\d.]+ [GMK]iB) is reserved"
)
PIDS = re.compile(r"\bpid[= ](?P<a>\d+)|Started server process \[(?P<b>\d+)\]|with PID (?P<c>\d+)")
PID_PATTERNS = (re.compile(r"pid[= ](\d+)"), re.compile(r"server process \[(\d+)\]"), re.compile(r"with PID (\d+)"))
"""The same, one literal-led pattern each (fast on a whole block)."""
_UNIT = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
MAX_PIDS = 256
"""vLLM pids remembered per log (a bound on memory for logs with many restarts)."""


OTHERS_MIN_BYTES = 2**30
"""Memory other processes must hold together before they count as "holding the GPU" (a bare CUDA context of a
monitoring agent or a sibling process is 0.25-0.5 GiB)."""


def to_bytes(text: str) -> float:
    """``"20.28 GiB"`` in bytes."""
    num, unit = text.split()
    return float(num) * _UNIT.get(unit, 1)


_bytes = to_bytes


@dataclass
class NamedProcess:
    pid: str
    mem: str
    line: int
    self_like: bool = False
    """Its memory is what PyTorch says this process holds: it is this process, seen from inside a container (the
    PID namespace hides its own pid from the driver's list)."""


@dataclass
class Processes:
    """Pids the log shows for vLLM processes (and the run each first appeared in) and the processes an OOM named."""

    seen: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    """pid → (run index, line, the line's text) where it first appeared."""
    named: list[NamedProcess] = field(default_factory=list)

    def read(self, line: int, text: str, run: int) -> None:
        if ("pid" in text or "PID" in text or "process [" in text) and len(self.seen) < MAX_PIDS:
            for m in PIDS.finditer(text):
                pid = m.group("a") or m.group("b") or m.group("c")
                if pid and "memory in use" not in text:
                    self.seen.setdefault(pid, (run, line, text[:160]))
        if "memory in use" in text and len(self.named) < 16:
            own = _SELF.search(text)
            own_bytes = _bytes(own.group("alloc")) + _bytes(own.group("res")) if own else None
            for m in _NAMED.finditer(text):
                mem = _bytes(m.group("mem"))
                like = own_bytes is not None and abs(mem - own_bytes) <= max(1.0 * 2**30, 0.1 * mem)
                self.named.append(NamedProcess(m.group("pid"), m.group("mem"), line, like))


@dataclass(frozen=True)
class MachineProcess:
    """A GPU process doctor found on this machine (from NVML and /proc)."""

    pid: int
    name: str
    orphan: bool
    """A vLLM engine/worker whose parent is gone (re-parented to PID 1 or a subreaper)."""
    vllm: bool = False


SAFE_KILL = (  # how to end an orphan safely
    "check it is yours and orphaned (`ps -o pid,ppid,pgid,user,etime,stat,cmd -p PID`: PPID 1, "
    "a VLLM::EngineCore / VLLM::Worker / ray::RayWorkerWrapper name, your user), then `kill -TERM PID` and wait up "
    "to 30 s for `nvidia-smi` to show the memory freed; `kill -KILL PID` only if it stays (state D, stuck in the "
    "driver, needs a GPU reset or a reboot). Never kill a pid that is someone else's job"
)


def whose_memory(procs: Processes, run: int, machine: Mapping[int, MachineProcess]) -> tuple[str, str | None]:
    """A note on whose memory the named processes are, and the pid of an orphan when one is certain."""
    if not procs.named:
        return "", None
    parts: list[str] = []
    unknown: list[NamedProcess] = []
    orphan: str | None = None
    largest = sorted({p.pid: p for p in procs.named}.values(), key=lambda p: -to_bytes(p.mem))[:4]
    for p in largest:
        found = machine.get(int(p.pid)) if p.pid.isdigit() else None
        earlier = procs.seen.get(p.pid)
        if found is not None and found.orphan:
            parts.append(
                f"pid {p.pid} ({p.mem}) is an orphaned vLLM process on this machine ({found.name}, parent gone)"
            )
            orphan = orphan or p.pid
        elif found is not None:
            who = "a vLLM process" if found.vllm else "another job"
            parts.append(f"pid {p.pid} ({p.mem}) is {who} on this machine ({found.name})")
        elif earlier is not None and earlier[0] < run:
            parts.append(
                f"pid {p.pid} ({p.mem}) is a vLLM process of an earlier run in this log (line {earlier[1]}): an orphan"
            )
            orphan = orphan or p.pid
        elif p.self_like:
            parts.append(
                f"pid {p.pid} ({p.mem}) is this vLLM process itself (the memory PyTorch reports for it; from inside a "
                "container the driver lists it under its host pid)"
            )
        elif earlier is not None:
            parts.append(f"pid {p.pid} ({p.mem}) is a process of this vLLM run (line {earlier[1]})")
        else:
            unknown.append(p)
    if unknown:
        pids = ",".join(p.pid for p in unknown)
        listed = ", ".join(f"{p.pid} ({p.mem})" for p in unknown)
        parts.append(
            f"{'pids' if len(unknown) > 1 else 'pid'} {listed} appear nowhere else in the log — "
            f"`ps -o pid,ppid,user,etime,cmd -p {pids}` (or `qwendeploy doctor` on this machine) tells: a "
            "VLLM::EngineCore / VLLM::Worker with PPID 1 is an orphan of an earlier run, anything else is another "
            "job (ask its owner)"
        )
    note = " Whose memory: " + "; ".join(parts) + "."
    if orphan is not None or unknown:
        note += " To end an orphan safely: " + SAFE_KILL + "."
    return note, orphan
