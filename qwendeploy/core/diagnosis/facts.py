"""Whole-log facts (rules.yaml ``facts:``) and the values templates use, derived from the scan and from what doctor
knows besides the log: TP not set, fewer GPUs visible than TP, a hang in NCCL set-up, a stalled start-up and for
how long, harmful NCCL variables, container and host driver, whose memory an OOM names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from qwendeploy.core.diagnosis import evidence as evi
from qwendeploy.core.diagnosis.catalog import Rule
from qwendeploy.core.diagnosis.compiled import compiled, phase_label
from qwendeploy.core.diagnosis.lines import quote
from qwendeploy.core.diagnosis.state import ScanState
from qwendeploy.core.diagnosis.values import DiagnosisContext, Evidence

HARMFUL_NCCL_ENV: Mapping[str, str] = {
    "NCCL_P2P_DISABLE": "turns off GPU peer-to-peer (NVLink/PCIe P2P); all traffic goes through host memory",
    "NCCL_SHM_DISABLE": "turns off the shared-memory transport; ranks on one host fall back to sockets",
    "NCCL_ALGO": "forces an all-reduce algorithm instead of NCCL's tuned choice",
    "NCCL_PROTO": "forces a protocol (LL/LL128/Simple) instead of NCCL's tuned choice",
    "NCCL_MAX_NCHANNELS": "caps the channels, and with them the bandwidth",
    "NCCL_MIN_NCHANNELS": "forces extra channels",
    "NCCL_NTHREADS": "changes threads per block of the NCCL kernels",
    "NCCL_BUFFSIZE": "changes the buffer size of every channel",
    "NCCL_P2P_LEVEL": "limits which GPU pairs may use P2P",
    "NCCL_NET_GDR_LEVEL": "limits GPUDirect RDMA",
    "NCCL_IB_DISABLE": "turns off InfiniBand/RoCE; multi-node traffic falls back to TCP sockets",
    "NCCL_LAUNCH_MODE": "changes how NCCL launches its kernels",
}
"""NCCL variables that are tuning or debugging knobs; set in production they cost bandwidth or cause hangs."""


STILL_WRITING_S = 120.0
"""A log written this recently may belong to a start-up still under way (compiling, loading): said, not hidden."""


_HANG_TAIL = 4
"""Last lines of a log that may show it stopped in NCCL set-up."""


_NCCL_SETUP = re.compile(
    r"NCCL INFO|NCCL version|Bootstrap :|NET/Plugin|cudaDriverVersion|custom_all_reduce|[Cc]ustom all-?reduce"
    r"|pynccl|Found nccl from library|vLLM is using nccl|init_distributed_environment|world_size=|Init nccl"
    r"|nodes in the distributed environment|distributed_init_method"
    r"|\bP2P\b|shm_broadcast|Init COMPLETE|Init START"
)


_STALL = re.compile(r"Processed prompts:\s*0%|\b0%\|.*\b0/\d+ \[.*0\.00 ?(?:toks|tokens)/s")


@dataclass
class Fact:
    true: bool = False
    evidence: list[Evidence] = field(default_factory=list)


@dataclass(frozen=True)
class Facts:
    facts: Mapping[str, Fact]
    values: Mapping[str, str]


def whole_log_facts(st: ScanState, ctx: DiagnosisContext) -> Facts:
    rule_by_id = {r.id: r for r in compiled().catalog.rules}
    f: dict[str, Fact] = {}
    values: dict[str, str] = {}
    tp_requested: int | None = max((t for _, _, t in st.tp_values), default=None)
    tp_line = next(((ln, tx) for ln, tx, t in st.tp_values if t == tp_requested), None)
    if ctx.tensor_parallel_size is not None:
        tp_requested = max(tp_requested or 0, ctx.tensor_parallel_size)
    if tp_requested is not None:
        values["tp_requested"] = str(tp_requested)
    decl = next((v for v in st.visible if v[3]), st.visible[0] if st.visible else None)
    if decl is not None:
        values["visible_count"] = str(decl[2])
    smallest = min(st.visible, key=lambda v: v[2], default=None)
    if smallest is not None:
        values["visible_min"] = str(smallest[2])
        values["visible_min_value"] = smallest[1]

    f["tp_not_set"] = Fact(
        decl is not None and decl[2] > 1 and (tp_requested is None or tp_requested <= 1),
        [Evidence(decl[0], quote(_line_text(st, decl[0])))] if decl else [],
    )
    fewer = smallest is not None and tp_requested is not None and smallest[2] < tp_requested
    ev: list[Evidence] = []
    if fewer and smallest is not None:
        if tp_line is not None:
            ev.append(Evidence(tp_line[0], quote(tp_line[1])))
        ev.append(Evidence(smallest[0], quote(_line_text(st, smallest[0]))))
    f["visible_fewer_than_tp"] = Fact(fewer, ev)
    multi = bool(st.multi) or (tp_requested or 0) > 1
    f["multi_gpu"] = Fact(multi, list(st.multi))

    tail = list(st.tail)
    hang = False
    hang_ev: list[Evidence] = []
    # A silent stop is only a hang when nothing recognisable went wrong before it.
    recognised = any(
        not rule_by_id[rid].signatures[j].supporting and "hang" not in rule_by_id[rid].requires for rid, j in st.hits
    )
    # The log ends in NCCL set-up (its last line, or one of the last few with only chatter after it: workers
    # logging "ready; awaiting tasks", a banner) or at a first request stuck at 0%.
    last_phase = compiled().catalog.phases[-1].name
    if tail and st.error_count == 0 and not recognised and st.phase != last_phase:
        for ln, tx in reversed(tail[-_HANG_TAIL:]):
            if _STALL.search(tx) or _NCCL_SETUP.search(tx):
                hang = True
                hang_ev = [Evidence(n, quote(t)) for n, t in tail[-2:] if n != ln] + [Evidence(ln, quote(tx))]
                hang_ev.sort(key=lambda e: e.line)
                break
    elif tail and st.error_count == 0 and not recognised and _STALL.search(tail[-1][1]):
        hang, hang_ev = True, [Evidence(ln, quote(tx)) for ln, tx in tail[-2:]]
    f["hang"] = Fact(hang, hang_ev)
    f["acs_hint"] = Fact(bool(st.acs), list(st.acs))
    # Other processes, not this one seen under its host pid from a container, holding real memory (a CUDA
    # context alone is ~0.25-0.5 GiB).
    others = {p.pid: p for p in st.procs.named if not p.self_like}
    held = sum(evi.to_bytes(p.mem) for p in others.values())
    several = bool(st.several_procs) and len(others) >= 2 and held >= evi.OTHERS_MIN_BYTES
    f["several_processes_listed"] = Fact(several, list(st.several_procs) if several else [])
    f["nccl_activity"] = Fact(st.nccl, [])
    env_ev: list[Evidence] = []
    for name, value in sorted((ctx.env or {}).items()):
        if name in HARMFUL_NCCL_ENV and not (name.endswith("_DISABLE") and value.strip() in ("", "0")):
            env_ev.append(Evidence(0, f"environment: {name}={value} ({HARMFUL_NCCL_ENV[name]})"))
            values.setdefault("nccl_var", name)
            values.setdefault("nccl_value", value)
    f["harmful_nccl_env"] = Fact(bool(env_ev), env_ev)
    _stall_facts(st, ctx, f, values, rule_by_id)
    _machine_facts(st, ctx, f, values)
    return Facts(f, values)


def _stall_facts(
    st: ScanState, ctx: DiagnosisContext, f: dict[str, Fact], values: dict[str, str], rules: Mapping[str, Rule]
) -> None:
    """``stalled``: the log ends with no error before the server was ready; where, and for how long."""
    tail = list(st.tail)
    last_phase = compiled().catalog.phases[-1].name
    # Only when nothing named a failure: a rule of severity error that fired on a line of its own.
    named = any(
        not rules[rid].signatures[j].supporting and rules[rid].severity == "error" and not rules[rid].requires
        for rid, j in st.hits
    )
    # An excerpt that is not a vLLM start-up (bare NCCL lines) is stalled only when nothing else was found in it;
    # text that shows no start-up at all is not a start-up that stalled.
    anything = any(not rules[rid].signatures[j].supporting for rid, j in st.hits)
    stalled = (
        bool(tail)
        and st.phase != last_phase
        and not st.stopping
        and st.error_count == 0
        and not named
        and (st.vllm_seen or (st.phase is not None and not anything))
    )
    if not tail:
        f["stalled"] = Fact(False, [])
        return
    values["stall_phase"] = st.phase or "none"
    values["stall_phase_label"] = phase_label(st.phase) if st.phase else "the start (no start-up phase logged yet)"
    values["last_line"] = quote(tail[-1][1])[:200]
    span = ""
    if st.ts_last is not None and st.phase_ts is not None:
        secs = st.ts_last - st.phase_ts
        if secs < 1:  # the year turned, lines out of order, or the phase is the last line: no span to tell
            span = ""
        else:
            span = f" for {evi.duration(secs)} by the log's own clock ({st.phase_ts_text} → {st.ts_last_text})"
    elif st.ts_last is None:
        span = " (the log has no timestamps to say for how long)"
    values["stall_for"] = span
    age = ctx.log_age_s
    if age is None:
        values["stall_silent"] = ""
    elif age < STILL_WRITING_S:
        when = evi.duration(age)
        values["stall_silent"] = f" — but the file was written {when} ago: the start-up may still be running"
    else:
        values["stall_silent"] = f", and nothing was written for {evi.duration(age)} since"
    values["stall_checks"] = evi.STALL_CHECKS.get(st.phase, evi.STALL_CHECKS[None])
    ev = [Evidence(ln, quote(tx)) for ln, tx in tail[-2:]]
    f["stalled"] = Fact(stalled, ev)


def _machine_facts(st: ScanState, ctx: DiagnosisContext, f: dict[str, Fact], values: dict[str, str]) -> None:
    """Container, host driver and whose-memory evidence, from the log and from doctor's machine checks."""
    f["in_container"] = Fact(bool(st.container), list(st.container))
    values["container_note"] = (
        f" The log shows a container ({quote(st.container[0].text)[:120]!r})." if st.container else ""
    )
    driver_ev: list[Evidence] = []
    major: int | None = None
    if ctx.driver_version:
        head = ctx.driver_version.split(".", 1)[0]
        if head.isdigit():
            major = int(head)
            values["host_driver"] = ctx.driver_version
            driver_ev.append(Evidence(0, f"doctor (NVML): host driver {ctx.driver_version}"))
    if major is None and st.driver is not None:
        major = int(st.driver[1])
        values["host_driver"] = st.driver[1]
        driver_ev.append(Evidence(st.driver[0], quote(st.driver[2])))
    new = major is not None and major >= evi.NEW_DRIVER_MAJOR
    f["new_host_driver"] = Fact(new, driver_ev if new else [])
    f["old_host_driver"] = Fact(major is not None and not new, driver_ev if not new else [])
    machine = {p.pid: p for p in ctx.gpu_processes}
    note, orphan = evi.whose_memory(st.procs, st.run, machine)
    values["whose_note"] = note
    orphan_ev: list[Evidence] = []
    if orphan is not None:
        values["orphan_pid"] = orphan
        named = next(p for p in st.procs.named if p.pid == orphan)
        orphan_ev.append(Evidence(named.line, f"Process {orphan} has {named.mem} memory in use"))
        seen = st.procs.seen.get(orphan)
        if seen is not None:
            values.setdefault("orphan_name", f"first seen in this log as {quote(seen[2])[:100]!r}")
            orphan_ev.append(Evidence(seen[1], quote(seen[2])))
        elif int(orphan) in machine:
            values.setdefault("orphan_name", machine[int(orphan)].name)
            orphan_ev.append(Evidence(0, f"doctor: pid {orphan} {machine[int(orphan)].name} has lost its parent"))
    f["orphan_named"] = Fact(orphan is not None, orphan_ev)
    test = ctx.nccl_test
    f["nccl_test_hung"] = Fact(
        test is not None, [Evidence(0, f"doctor --nccl-test: {x}") for x in (test[2][-6:] if test else ())]
    )
    if test is not None:
        values["nccl_test_message"] = test[0]
        values["nccl_test_findings"] = test[1]


def _line_text(st: ScanState, line: int) -> str:
    for ln, tx in st.launch_lines:
        if ln == line:
            return tx
    for v in st.visible:
        if v[0] == line:
            return f"CUDA_VISIBLE_DEVICES={v[1]}" if not v[3] else v[1]
    return ""
