"""The facts one log line adds to the scan: launch command, CUDA_VISIBLE_DEVICES, tensor-parallel size, ranks,
ACS/IOMMU signs, processes holding memory, errors. Each pattern runs only on a line that has its key words
(``FACT_WORDS`` is the prefilter the scan tries first)."""

from __future__ import annotations

import re

from qwendeploy.core.diagnosis import evidence as evi
from qwendeploy.core.diagnosis.lines import quote
from qwendeploy.core.diagnosis.state import FACTS_KEPT, ScanState
from qwendeploy.core.diagnosis.values import Evidence

_DEVICE = r"(?:\d+|GPU-[\w-]+|MIG-[\w/-]+)"


_VISIBLE = re.compile(rf"CUDA_VISIBLE_DEVICES(?:=|:\s*|\s+=\s*)[\"']?(?P<v>{_DEVICE}(?:,{_DEVICE})*)")


_TP = re.compile(
    r"(?:--tensor[-_]parallel[-_]size|(?<![\w-])-tp)(?:=|\s+)(?P<a>\d+)|tensor_parallel_size\s*=\s*(?P<b>\d+)"
)


_LAUNCH = re.compile(r"vllm serve|vllm\.entrypoints|api_server\b|\bLLM\(")


_RANKS = re.compile(
    r"\[(?P<rank>\d+)\] NCCL INFO|\bnranks (?P<nranks>\d+)|\bworld_size=(?P<world>\d+)"
    r"|nproc[-_]per[-_]node[= ](?P<nproc>\d+)|VllmWorker(?:Process)? (?:rank=(?P<wrank>\d+))?|RayWorker"
)


_ACS = re.compile(r"via SHM/|ACSCtl:\s+SrcValid\+|(?i:\biommu\b)|AMD-Vi|DMAR:")


_OTHER_PROCESS = re.compile(r"Process (?P<pid>\d+) has [\d.]+ [GMK]iB memory in use")


_ERROR = re.compile(
    r"(?:^|[\s\]|(])(?:ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\)"
    r"|(?:^|[\s:\]])(?:[A-Za-z_][\w.]*)?(?:Error|Exception)(?::\s|:$|$)|Segmentation fault|core dumped"
    r"|(?i:failed to (?:start|load))|\bFailed: |(?i:\bcuda error\b)|NCCL WARN"
)


_NOT_ERROR = re.compile(r"\bINFO\b|(?<!NCCL )\bWARN(?:ING)?\b|UserWarning")


def _count_devices(value: str) -> int:
    return len([v for v in value.split(",") if v])


def _has(text: str, words: tuple[str, ...]) -> bool:
    return any(w in text for w in words)


_W_LAUNCH = ("vllm", "api_server", "LLM(")


_W_TP = ("tensor", "-tp")


_W_RANKS = ("NCCL INFO", "nranks", "world_size", "nproc", "VllmWorker", "RayWorker")


_W_ACS = ("via SHM", "ACSCtl", "iommu", "IOMMU", "AMD-Vi", "DMAR")


_W_EVIDENCE = (
    "172.17.",
    "docker",
    "kubepods",
    "shm-size",
    "ipc",
    "compat",
    "river",
    "NVRM",
    "NVIDIA",
)


_W_ERROR = (
    "ERROR",
    "CRITICAL",
    "FATAL",
    "Traceback",
    "rror",
    "xception",
    "Segmentation",
    "core dumped",
    "ailed",
    "WARN",
)


FACT_WORDS: tuple[str, ...] = (
    *_W_LAUNCH,
    *_W_TP,
    *_W_RANKS,
    *_W_ACS,
    *_W_ERROR,
    *_W_EVIDENCE,
    "CUDA_VISIBLE_DEVICES",
    "memory in use",
    "NCCL",
)
"""Every word a line fact looks for: a line with none of them adds no fact."""


def collect_line_facts(st: ScanState, i: int, text: str) -> None:
    # Each pattern runs only when its key words are in the line: most lines of a long log have none.
    if len(st.container) < 2:
        hint = evi.container_hint(text)
        if hint is not None:
            st.container.append(Evidence(i, quote(text)))
    if st.driver is None:
        drv = evi.host_driver(text)
        if drv is not None:
            st.driver = (i, drv, text)
    if not st.nccl and ("NCCL" in text or "nccl" in text):
        st.nccl = True
    launch = _has(text, _W_LAUNCH) and bool(_LAUNCH.search(text))
    if launch and len(st.launch_lines) < FACTS_KEPT:
        st.launch_lines.append((i, text))
    if "CUDA_VISIBLE_DEVICES" in text and len(st.visible) < FACTS_KEPT:
        for m in _VISIBLE.finditer(text):
            st.visible.append((i, m.group("v"), _count_devices(m.group("v")), launch))
    if _has(text, _W_TP) and len(st.tp_values) < FACTS_KEPT:
        for m in _TP.finditer(text):
            st.tp_values.append((i, text, int(m.group("a") or m.group("b"))))
    if len(st.multi) < 2 and _has(text, _W_RANKS):
        for m in _RANKS.finditer(text):
            nums = [m.group(k) for k in ("rank", "nranks", "world", "nproc", "wrank")]
            if m.group("rank") is not None:
                multi = int(m.group("rank")) > 0
            elif any(m.group(k) is not None for k in ("nranks", "world", "nproc")):
                multi = any(m.group(k) is not None and int(m.group(k)) > 1 for k in ("nranks", "world", "nproc"))
            else:
                # A worker process line: rank > 0, or RayWorker / VllmWorkerProcess without a rank.
                multi = int(m.group("wrank")) > 0 if m.group("wrank") is not None else all(n is None for n in nums)
            if multi:
                st.multi.append(Evidence(i, quote(text)))
                break
    if len(st.acs) < 2 and _has(text, _W_ACS) and _ACS.search(text):
        st.acs.append(Evidence(i, quote(text)))
    if not st.several_procs and "memory in use" in text:
        pids = {m.group("pid") for m in _OTHER_PROCESS.finditer(text)}
        if len(pids) >= 2:
            st.several_procs.append(Evidence(i, quote(text)))
    if not st.stopping and _has(text, _W_ERROR) and _ERROR.search(text) and not _NOT_ERROR.search(text):
        st.error_count += 1
        st.errors.append((i, text))
