"""Match a vLLM log against the rule catalog and name the likely causes, with evidence and a filled-in fix.

Pure: lines in, diagnoses out. One pass over the log (linear in its length): each line is classified into a
start-up phase, cheaply prefiltered with one combined regex, and only interesting lines are matched against the
rules' signatures. Whole-log facts (visible GPUs vs TP, a log that ends in NCCL set-up, ...) are collected on
the way. See qwendeploy/data/rules.yaml for the catalog and how ranking works.
"""

from __future__ import annotations

import functools
import itertools
import re
import shlex
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwendeploy.core.diagnosis import evidence as evi
from qwendeploy.core.diagnosis.evidence import MachineProcess
from qwendeploy.core.diagnosis.fixes import derive, fill, plan_command
from qwendeploy.core.diagnosis.gate import WordGate, trie_regex
from qwendeploy.core.diagnosis.literals import signature_literals
from qwendeploy.core.diagnosis.rules import (
    Catalog,
    Rule,
    load_catalog,
    template_fields,
)
from qwendeploy.core.profile import Profile

MAX_LINE_CHARS = 4000
"""Characters of a line that are examined (a binary blob or a 1 MB JSON line must not stall matching)."""
MAX_EVIDENCE = 4
"""Evidence lines quoted per diagnosis."""
MAX_DIAGNOSES = 6
"""Diagnoses returned at most (most likely first)."""
_HITS_KEPT = 16
"""Hits remembered per signature (the first one and the latest ones)."""
_HANG_TAIL = 4
"""Last lines of a log that may show it stopped in NCCL set-up."""
_FACTS_KEPT = 256
"""Launch lines, CUDA_VISIBLE_DEVICES values, TP values and unplaced hits remembered at most: memory stays bounded
on a log of any length (the first ones carry the launch; later repeats add nothing)."""

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


# ---------------------------------------------------------------------------------------------- public values


@dataclass(frozen=True)
class Evidence:
    """A quoted log line. ``line`` is 1-based in the input; 0 means it came from the environment, not the log."""

    line: int
    text: str


def shown_name(category: str, rule_id: str, recognised: bool) -> str:
    """What to call a diagnosis: its category, or, for a named cause filed under ``unknown`` (a killed engine core,
    an OOM while serving), its rule."""
    return rule_id if category == "unknown" and recognised and rule_id else category


@dataclass(frozen=True)
class Diagnosis:
    """One likely cause of the failure, with the lines that show it and the change to make."""

    category: str
    summary: str
    evidence: tuple[Evidence, ...]
    fix: str
    confidence: float
    """0..1; a noisy-OR of the weights of what matched (see rules.yaml)."""
    rule_id: str
    phase: str | None
    """Start-up phase the failure happened in (or the rule's phase when the log does not say)."""
    checks: tuple[str, ...]
    """Machine checks of ``qwendeploy doctor`` that would confirm it."""
    recognised: bool = True
    """A rule named the cause (False only for the catch-all that quotes an unrecognised error). Rules of category
    ``unknown`` with a named cause (a killed engine core, an OOM while serving) are recognised."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "summary": self.summary,
            "evidence": [{"line": e.line, "text": e.text} for e in self.evidence],
            "fix": self.fix,
            "confidence": self.confidence,
            "rule_id": self.rule_id,
            "phase": self.phase,
            "recognised": self.recognised,
        }


@dataclass(frozen=True)
class DiagnosisContext:
    """What is known besides the log."""

    profile: Profile | None = None
    """When given, fixes also name the ``qwendeploy plan`` command that produces a profile that fits."""
    tensor_parallel_size: int | None = None
    env: Mapping[str, str] | None = None
    """Environment the server ran with (for nccl_env_misconfig)."""
    driver_version: str | None = None
    """The host's NVIDIA driver ("580.65.06") from doctor's NVML check: tells a driver that is too old from a
    container's CUDA compat library loaded in front of a new one (error 803)."""
    gpu_processes: Sequence[MachineProcess] = ()
    """GPU processes doctor found on this machine: whose memory the processes an OOM names are."""
    log_age_s: float | None = None
    """Seconds since the log was last written (doctor: now minus the file's mtime), for how long it has been silent."""
    nccl_test: tuple[str, str, tuple[str, ...]] | None = None
    """Doctor's NCCL test hung: (its message, the machine findings that did not pass, its last output lines)."""


# ---------------------------------------------------------------------------------------------- compiled catalog


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
_NCCL_SETUP = re.compile(
    r"NCCL INFO|NCCL version|Bootstrap :|NET/Plugin|cudaDriverVersion|custom_all_reduce|[Cc]ustom all-?reduce"
    r"|pynccl|Found nccl from library|vLLM is using nccl|init_distributed_environment|world_size=|Init nccl"
    r"|nodes in the distributed environment|distributed_init_method"
    r"|\bP2P\b|shm_broadcast|Init COMPLETE|Init START"
)
_STALL = re.compile(r"Processed prompts:\s*0%|\b0%\|.*\b0/\d+ \[.*0\.00 ?(?:toks|tokens)/s")
_ACS = re.compile(r"via SHM/|ACSCtl:\s+SrcValid\+|(?i:\biommu\b)|AMD-Vi|DMAR:")
_OTHER_PROCESS = re.compile(r"Process (?P<pid>\d+) has [\d.]+ [GMK]iB memory in use")
_ERROR = re.compile(
    r"(?:^|[\s\]|(])(?:ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\)"
    r"|(?:^|[\s:\]])(?:[A-Za-z_][\w.]*)?(?:Error|Exception)(?::\s|:$|$)|Segmentation fault|core dumped"
    r"|(?i:failed to (?:start|load))|\bFailed: |(?i:\bcuda error\b)|NCCL WARN"
)
# vLLM 0.26 on SIGTERM/SIGINT: "[shutdown] API server: shutdown triggered",
# "EngineCore: trigger received signal=SIGTERM".
# Its teardown can then log an EngineDeadError traceback (measured on an H100): an asked-for stop, not a failure.
_STOP_REQUESTED = re.compile(r"\[shutdown\] API server: shutdown triggered|received signal=SIG(?:TERM|INT)\b")
_NOT_ERROR = re.compile(r"\bINFO\b|(?<!NCCL )\bWARN(?:ING)?\b|UserWarning")


@dataclass(frozen=True)
class _Sig:
    rule: Rule
    index: int
    regex: re.Pattern[str]
    literals: tuple[str, ...] | None
    icase: bool


@dataclass(frozen=True)
class _Compiled:
    catalog: Catalog
    phase_re: re.Pattern[str]
    phase_gate: re.Pattern[str]
    group_phase: Mapping[str, str]
    reset_group: str
    gate: re.Pattern[str]
    fact_gate: re.Pattern[str]
    signatures: tuple[_Sig, ...]
    rank: Mapping[str, int]
    restart: frozenset[str]
    """Markers that, seen while serving, begin a new run (``Phase.restart``)."""
    block_gate: WordGate
    """Every word any gate looks for, lower-cased: tried on 64 lower-cased lines at a time, then on each line."""
    serving_gate: WordGate
    """The same without the markers of the last phase: once serving, its markers (every request line) change
    nothing, so a serving log's lines skip the closer look."""

    def advance(self, current: str | None, m: re.Match[str]) -> str | None:
        """The phase after a line whose phase marker matched ``m``, given the phase so far.

        A reset marker begins a new run; within a run the phase only moves forward (a worker's late line
        does not undo a phase another reached), except that a restart marker after serving is a new run.
        """
        group = m.lastgroup
        if group is None:
            return current
        if group == self.reset_group:
            return self.catalog.phases[0].name
        ph = self.group_phase[group]
        if current is None or self.rank[ph] > self.rank[current]:
            return ph
        if current == self.catalog.phases[-1].name and ph != current and m.group(group) in self.restart:
            return ph
        return current


@functools.lru_cache(maxsize=1)
def _compiled() -> _Compiled:
    cat = load_catalog()
    parts: list[str] = []
    group_phase: dict[str, str] = {}
    # Later phases first: at the same position the more advanced marker wins ("Loading weights took" is the
    # end of loading, not the start).
    for i, ph in reversed(list(enumerate(cat.phases))):
        if not ph.markers:
            continue
        name = f"ph{i}"
        group_phase[name] = ph.name
        parts.append(f"(?P<{name}>" + "|".join(re.escape(m) for m in ph.markers) + ")")
    resets = [m for ph in cat.phases for m in ph.reset]
    reset_group = "reset"
    if resets:
        parts.insert(0, f"(?P<{reset_group}>" + "|".join(re.escape(m) for m in resets) + ")")
    phase_re = re.compile("|".join(parts))
    phase_gate = re.compile(trie_regex([m for ph in cat.phases for m in (*ph.markers, *ph.reset)]))
    sigs: list[_Sig] = []
    words: set[str] = set()
    always = False
    for r in cat.rules:
        for j, s in enumerate(r.signatures):
            lits, icase = signature_literals(s.pattern)
            sigs.append(_Sig(r, j, s.regex, lits, icase))
            if lits is None:
                always = True
            else:
                words.update(w.lower() for w in lits)
    # The gate runs on the lower-cased line: a superset of the case-sensitive matches, which is all a gate needs.
    gate = re.compile("" if always else trie_regex(words))
    rank = {ph.name: i for i, ph in enumerate(cat.phases)}
    fact_words = (
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
    fact_gate = re.compile(trie_regex((*fact_words, "nccl")))
    restart = frozenset(m for ph in cat.phases for m in ph.restart)
    markers = [m for ph in cat.phases for m in (*ph.markers, *ph.reset)]
    block_words = {w.lower() for w in (*words, *fact_words, *markers, "nccl", "shutdown", "signal=")}
    last = cat.phases[-1]
    others = {m.lower() for ph in cat.phases[:-1] for m in (*ph.markers, *ph.reset)}
    serving_only = {m.lower() for m in last.markers} - others
    block_gate = WordGate([""] if always else block_words)
    serving_gate = WordGate([""] if always else block_words - serving_only)
    return _Compiled(
        cat,
        phase_re,
        phase_gate,
        group_phase,
        reset_group,
        gate,
        fact_gate,
        tuple(sigs),
        rank,
        restart,
        block_gate,
        serving_gate,
    )


def phase_of_line(text: str) -> str | None:
    """The start-up phase a single vLLM log line shows was reached (``None`` when it shows none).

    Phases, in order: starting, loading, profiling, cudagraph, sampler, serving. ``serve`` uses this for its
    live status line.
    """
    c = _compiled()
    m = c.phase_re.search(_clean(text))
    if m is None or m.lastgroup is None:
        return None
    if m.lastgroup == c.reset_group:
        return c.catalog.phases[0].name
    return c.group_phase.get(m.lastgroup)


def phase_label(phase: str | None) -> str:
    """Human words for a phase name ("loading weights", ...)."""
    for ph in load_catalog().phases:
        if ph.name == phase:
            return ph.label
    return "unknown"


def detect_phase(lines: Iterable[str]) -> str | None:
    """The furthest start-up phase the (latest run in the) log reached; a restart line resets it."""
    c = _compiled()
    current: str | None = None
    for raw in lines:
        m = c.phase_re.search(_clean(raw))
        if m is not None:
            current = c.advance(current, m)
    return current


# ---------------------------------------------------------------------------------------------- scanning


def _clean(raw: object) -> str:
    text = raw if isinstance(raw, str) else str(raw)
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS]
    if text[:1] == ">":  # a log pasted as a quote (GitHub, e-mail): "> line", "> > line"
        text = _QUOTED.sub("", text, count=1)
    text = text.rstrip("\r\n")
    if "\n" in text or "\r" in text:  # one item holding several lines: keep it one line
        text = text.replace("\r", " ").replace("\n", " ")
    return evi.normalise(text)


_QUOTED = re.compile(r"^(?:> ?)+")


def _quote(text: str) -> str:
    t = " ".join(text.split())
    return t if len(t) <= 400 else t[:397] + "..."


@dataclass
class _Hit:
    line: int
    text: str
    groups: dict[str, str]
    phase: str | None


@dataclass
class _SigHits:
    first: _Hit | None = None
    latest: deque[_Hit] = field(default_factory=lambda: deque(maxlen=_HITS_KEPT))

    def add(self, hit: _Hit) -> None:
        if self.first is None:
            self.first = hit
        self.latest.append(hit)

    def all(self) -> list[_Hit]:
        out = list(self.latest)
        if self.first is not None and (not out or out[0].line != self.first.line):
            out.insert(0, self.first)
        return out


@dataclass
class _Fact:
    true: bool = False
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class _Scan:
    hits: dict[tuple[str, int], _SigHits] = field(default_factory=dict)
    unresolved: list[_Hit] = field(default_factory=list)
    tail: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=8))
    errors: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=3))
    error_count: int = 0
    visible: list[tuple[int, str, int, bool]] = field(default_factory=list)  # line, value, count, on launch line
    tp_values: list[tuple[int, str, int]] = field(default_factory=list)
    launch_lines: list[tuple[int, str]] = field(default_factory=list)
    multi: list[Evidence] = field(default_factory=list)
    acs: list[Evidence] = field(default_factory=list)
    several_procs: list[Evidence] = field(default_factory=list)
    nccl: bool = False
    phase: str | None = None
    stopping: bool = False  # a stop was requested (SIGTERM/SIGINT): errors of the teardown are not the failure
    run: int = 0
    """Runs begun so far (a reset marker starts a new one): a pid of an earlier run is an orphan of it."""
    ts_last: float | None = None
    ts_last_text: str = ""
    phase_ts: float | None = None
    """The log's own time when the current phase was reached (or the first time seen after it)."""
    phase_ts_text: str = ""
    phase_ts_pending: bool = False
    """The line that reached the phase had no time: the next time written anywhere is taken."""
    container: list[Evidence] = field(default_factory=list)
    driver: tuple[int, str, str] | None = None
    """Line, major version and text of the first line that names the host driver."""
    procs: evi.Processes = field(default_factory=evi.Processes)
    vllm_seen: bool = False
    """A line names vLLM: the log is a vLLM start-up, not a bare NCCL or driver excerpt."""


_BLOCK_LINES = 2048
"""Lines scanned together: one C-level search of the joined block finds the few lines worth a closer look."""


def _scan(lines: Iterable[object]) -> _Scan:
    """One pass over the log in blocks (bounded memory): lines no gate word touches only feed the tail."""
    c = _compiled()
    st = _Scan()
    it = iter(lines)
    first = 1
    while True:
        raws = list(itertools.islice(it, _BLOCK_LINES))
        if not raws:
            break
        _scan_block(c, st, first, raws)
        first += len(raws)
    for _, text in reversed(st.tail):
        ts = evi.timestamp(text)
        if ts is not None:
            st.ts_last, st.ts_last_text = ts
            break
    return st


def _plain_block(raws: list[object]) -> tuple[list[str], str] | None:
    """The block as it is when no line needs cleaning (plain ASCII, no line ends, no quote marks, not too long),
    which whole-block checks in C tell for nearly every block of a real log; else None."""
    try:
        joined = "\n".join(raws)  # type: ignore[arg-type]
    except TypeError:  # an item that is not a str
        return None
    texts: list[str] = raws  # type: ignore[assignment]
    if (
        joined.isascii()
        and "\r" not in joined
        and not joined.startswith(">")
        and "\n>" not in joined
        and joined.count("\n") == len(texts) - 1
        and max(map(len, texts), default=0) <= MAX_LINE_CHARS
    ):
        return texts, joined
    return None


_VLLM_WORDS = ("vllm", "enginecore", "apiserver", "parallel_state", "distributed_init_method", "worker pid=")
"""Lower-cased words that show a vLLM process wrote the log (a bare excerpt may not say "vllm")."""


def _offset(texts: list[str], k: int) -> int:
    """Where line ``k`` starts in the block joined by newlines."""
    return sum(map(len, texts[:k])) + k


def _scan_block(c: _Compiled, st: _Scan, first: int, raws: list[object]) -> None:
    """Scan lines ``first``… of the log: pick the few a gate word touches, look closer at those only."""
    plain = _plain_block(raws)
    if plain is not None:
        texts, joined = plain
    else:
        texts = [_clean(raw) for raw in raws]
        joined = "\n".join(texts)
    lower = joined.lower()
    if not st.vllm_seen and any(w in lower for w in _VLLM_WORDS):
        st.vllm_seen = True
    lows = lower.split("\n")
    last = c.catalog.phases[-1].name
    serving = st.phase == last
    picked = _pick(c.serving_gate if serving else c.block_gate, lows, 0)
    # The first line each vLLM pid appears on (a pid of an earlier run that an OOM names is an orphan). Processes
    # start while a server starts, not while it serves: serving blocks (nearly all of a long log) are skipped.
    # Three literal-led patterns: re finds those at memchr speed, an alternation of them it would not.
    if not serving and len(st.procs.seen) < evi.MAX_PIDS:
        for pattern in evi.PID_PATTERNS:
            for pid in set(pattern.findall(joined)):
                if pid not in st.procs.seen:
                    where = re.search(rf"(?<!\d){pid}(?!\d)", joined)
                    if where is not None:
                        picked.add(joined.count("\n", 0, where.start()))
    if st.phase_ts_pending:
        ts_m = evi.TS.search(joined)
        if ts_m is not None:
            got = evi.timestamp(ts_m.group(0))
            if got is not None:
                st.phase_ts, st.phase_ts_text = got
                st.phase_ts_pending = False
    order = sorted(picked)
    n = 0
    while n < len(order):
        k = order[n]
        n += 1
        text = texts[k]
        if text.strip():
            _scan_line(c, st, first + k, text, joined, _offset(texts, k))
            if k + 1 < len(texts) and any(w in lows[k] for w in _WRAP_WORDS) and texts[k + 1].strip():
                _unwrap(c, st, first + k, text, texts[k + 1])
        if serving and st.phase != last:  # a restart inside the block: its later lines need the full gate
            serving = False
            order = sorted({*order[n:], *_pick(c.block_gate, lows, k + 1)})
            n = 0
    tail: list[tuple[int, str]] = []
    for k in range(len(texts) - 1, -1, -1):
        if texts[k].strip():
            tail.append((first + k, texts[k]))
            if len(tail) == st.tail.maxlen:
                break
    st.tail.extend(reversed(tail))


_SUB_BLOCK = 64
"""Lines tried together by the gate before each is tried alone."""


def _pick(gate: WordGate, lows: list[str], start: int) -> set[int]:
    """Indices (from ``start``) of the lower-cased lines that contain a gate word."""
    out: set[int] = set()
    for a in range(start, len(lows), _SUB_BLOCK):
        part = lows[a : a + _SUB_BLOCK]
        if gate("\n".join(part)):
            out.update(a + j for j, low in enumerate(part) if gate(low))
    return out


def _scan_line(c: _Compiled, st: _Scan, i: int, text: str, block: str, offset: int) -> None:
    m = c.phase_re.search(text) if c.phase_gate.search(text) else None
    if m is not None and m.lastgroup is not None:
        before = st.phase
        st.phase = c.advance(st.phase, m)
        if st.phase != before or m.lastgroup == c.reset_group:
            # When the phase was reached, by the log's own clock: this line's time, else the next one written.
            ts_m = evi.TS.search(block, offset)
            got = evi.timestamp(ts_m.group(0)) if ts_m is not None else None
            st.phase_ts, st.phase_ts_text = got if got is not None else (None, "")
            st.phase_ts_pending = got is None
        if m.lastgroup == c.reset_group:
            st.stopping = False
            # A new run only once the last one got past its start (the API server and its engine both
            # print reset markers while starting).
            if before is not None and c.rank.get(before, 0) > 0:
                st.run += 1
        else:
            ph = c.group_phase[m.lastgroup]
            # Reverse-chronological logs (web consoles print newest first): a hit before any marker
            # takes the phase of the nearest marker after it.
            for h in st.unresolved:
                h.phase = ph
            st.unresolved.clear()
    if not st.stopping and ("shutdown" in text or "signal=" in text) and _STOP_REQUESTED.search(text):
        st.stopping = True
    st.procs.read(i, text, st.run)
    if c.fact_gate.search(text):
        _collect_facts(st, i, text)
    for sig, groups in _matches(c, text):
        _record(st, sig, _Hit(i, text, groups, st.phase))


def _matches(c: _Compiled, text: str) -> list[tuple[_Sig, dict[str, str]]]:
    """The signatures that match one line, with their named groups."""
    lower = text.lower()
    if not c.gate.search(lower):
        return []
    out: list[tuple[_Sig, dict[str, str]]] = []
    for sig in c.signatures:
        if sig.literals is not None:
            hay = lower if sig.icase else text
            if not any(lit in hay for lit in sig.literals):
                continue
        sm = sig.regex.search(text)
        if sm is not None:
            out.append((sig, {k: v for k, v in sm.groupdict().items() if v is not None}))
    return out


def _record(st: _Scan, sig: _Sig, hit: _Hit) -> None:
    if st.phase is None and len(st.unresolved) < _FACTS_KEPT:
        st.unresolved.append(hit)
    st.hits.setdefault((sig.rule.id, sig.index), _SigHits()).add(hit)


_WRAP_WORDS = ("error", "exception", "fail", "warn", "cannot", "unable", "must ")
"""A line with one of these (lower-cased) may be a message that copy-paste or a terminal wrapped onto the next."""
_WRAP_CHARS = 600
"""Characters of each line joined when a wrapped message is looked for."""


def _unwrap(c: _Compiled, st: _Scan, i: int, text: str, nxt: str) -> None:
    """Signatures that match only across a line break (``… must be less than or equal to the`` / ``number of
    visible devices (8).``): recorded on the second line, quoting both."""
    joined = text[-_WRAP_CHARS:].rstrip() + " " + nxt[:_WRAP_CHARS].strip()
    both = _matches(c, joined)
    if not both:
        return
    alone = {id(sig) for sig, _ in (*_matches(c, text), *_matches(c, nxt))}
    for sig, groups in both:
        if id(sig) not in alone:
            _record(st, sig, _Hit(i + 1, joined, groups, st.phase))


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


def _collect_facts(st: _Scan, i: int, text: str) -> None:
    # Each pattern runs only when its key words are in the line: most lines of a long log have none.
    if len(st.container) < 2:
        hint = evi.container_hint(text)
        if hint is not None:
            st.container.append(Evidence(i, _quote(text)))
    if st.driver is None:
        drv = evi.host_driver(text)
        if drv is not None:
            st.driver = (i, drv, text)
    if not st.nccl and ("NCCL" in text or "nccl" in text):
        st.nccl = True
    launch = _has(text, _W_LAUNCH) and bool(_LAUNCH.search(text))
    if launch and len(st.launch_lines) < _FACTS_KEPT:
        st.launch_lines.append((i, text))
    if "CUDA_VISIBLE_DEVICES" in text and len(st.visible) < _FACTS_KEPT:
        for m in _VISIBLE.finditer(text):
            st.visible.append((i, m.group("v"), _count_devices(m.group("v")), launch))
    if _has(text, _W_TP) and len(st.tp_values) < _FACTS_KEPT:
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
                st.multi.append(Evidence(i, _quote(text)))
                break
    if len(st.acs) < 2 and _has(text, _W_ACS) and _ACS.search(text):
        st.acs.append(Evidence(i, _quote(text)))
    if not st.several_procs and "memory in use" in text:
        pids = {m.group("pid") for m in _OTHER_PROCESS.finditer(text)}
        if len(pids) >= 2:
            st.several_procs.append(Evidence(i, _quote(text)))
    if not st.stopping and _has(text, _W_ERROR) and _ERROR.search(text) and not _NOT_ERROR.search(text):
        st.error_count += 1
        st.errors.append((i, text))


# ---------------------------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class _Facts:
    facts: Mapping[str, _Fact]
    values: Mapping[str, str]


def _facts(st: _Scan, ctx: DiagnosisContext) -> _Facts:
    rule_by_id = {r.id: r for r in _compiled().catalog.rules}
    f: dict[str, _Fact] = {}
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

    f["tp_not_set"] = _Fact(
        decl is not None and decl[2] > 1 and (tp_requested is None or tp_requested <= 1),
        [Evidence(decl[0], _quote(_line_text(st, decl[0])))] if decl else [],
    )
    fewer = smallest is not None and tp_requested is not None and smallest[2] < tp_requested
    ev: list[Evidence] = []
    if fewer and smallest is not None:
        if tp_line is not None:
            ev.append(Evidence(tp_line[0], _quote(tp_line[1])))
        ev.append(Evidence(smallest[0], _quote(_line_text(st, smallest[0]))))
    f["visible_fewer_than_tp"] = _Fact(fewer, ev)
    multi = bool(st.multi) or (tp_requested or 0) > 1
    f["multi_gpu"] = _Fact(multi, list(st.multi))

    tail = list(st.tail)
    hang = False
    hang_ev: list[Evidence] = []
    # A silent stop is only a hang when nothing recognisable went wrong before it.
    recognised = any(
        not rule_by_id[rid].signatures[j].supporting and "hang" not in rule_by_id[rid].requires for rid, j in st.hits
    )
    # The log ends in NCCL set-up (its last line, or one of the last few with only chatter after it: workers
    # logging "ready; awaiting tasks", a banner) or at a first request stuck at 0%.
    last_phase = _compiled().catalog.phases[-1].name
    if tail and st.error_count == 0 and not recognised and st.phase != last_phase:
        for ln, tx in reversed(tail[-_HANG_TAIL:]):
            if _STALL.search(tx) or _NCCL_SETUP.search(tx):
                hang = True
                hang_ev = [Evidence(n, _quote(t)) for n, t in tail[-2:] if n != ln] + [Evidence(ln, _quote(tx))]
                hang_ev.sort(key=lambda e: e.line)
                break
    elif tail and st.error_count == 0 and not recognised and _STALL.search(tail[-1][1]):
        hang, hang_ev = True, [Evidence(ln, _quote(tx)) for ln, tx in tail[-2:]]
    f["hang"] = _Fact(hang, hang_ev)
    f["acs_hint"] = _Fact(bool(st.acs), list(st.acs))
    # Other processes, not this one seen under its host pid from a container, holding real memory (a CUDA
    # context alone is ~0.25-0.5 GiB).
    others = {p.pid: p for p in st.procs.named if not p.self_like}
    held = sum(evi.to_bytes(p.mem) for p in others.values())
    several = bool(st.several_procs) and len(others) >= 2 and held >= evi.OTHERS_MIN_BYTES
    f["several_processes_listed"] = _Fact(several, list(st.several_procs) if several else [])
    f["nccl_activity"] = _Fact(st.nccl, [])
    env_ev: list[Evidence] = []
    for name, value in sorted((ctx.env or {}).items()):
        if name in HARMFUL_NCCL_ENV and not (name.endswith("_DISABLE") and value.strip() in ("", "0")):
            env_ev.append(Evidence(0, f"environment: {name}={value} ({HARMFUL_NCCL_ENV[name]})"))
            values.setdefault("nccl_var", name)
            values.setdefault("nccl_value", value)
    f["harmful_nccl_env"] = _Fact(bool(env_ev), env_ev)
    _stall_facts(st, ctx, f, values)
    _machine_facts(st, ctx, f, values)
    return _Facts(f, values)


def _stall_facts(st: _Scan, ctx: DiagnosisContext, f: dict[str, _Fact], values: dict[str, str]) -> None:
    """``stalled``: the log ends with no error before the server was ready; where, and for how long."""
    tail = list(st.tail)
    last_phase = _compiled().catalog.phases[-1].name
    rules = {r.id: r for r in _compiled().catalog.rules}
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
        f["stalled"] = _Fact(False, [])
        return
    values["stall_phase"] = st.phase or "none"
    values["stall_phase_label"] = phase_label(st.phase) if st.phase else "the start (no start-up phase logged yet)"
    values["last_line"] = _quote(tail[-1][1])[:200]
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
    ev = [Evidence(ln, _quote(tx)) for ln, tx in tail[-2:]]
    f["stalled"] = _Fact(stalled, ev)


def _machine_facts(st: _Scan, ctx: DiagnosisContext, f: dict[str, _Fact], values: dict[str, str]) -> None:
    """Container, host driver and whose-memory evidence, from the log and from doctor's machine checks."""
    f["in_container"] = _Fact(bool(st.container), list(st.container))
    values["container_note"] = (
        f" The log shows a container ({_quote(st.container[0].text)[:120]!r})." if st.container else ""
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
        driver_ev.append(Evidence(st.driver[0], _quote(st.driver[2])))
    new = major is not None and major >= evi.NEW_DRIVER_MAJOR
    f["new_host_driver"] = _Fact(new, driver_ev if new else [])
    f["old_host_driver"] = _Fact(major is not None and not new, driver_ev if not new else [])
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
            values.setdefault("orphan_name", f"first seen in this log as {_quote(seen[2])[:100]!r}")
            orphan_ev.append(Evidence(seen[1], _quote(seen[2])))
        elif int(orphan) in machine:
            values.setdefault("orphan_name", machine[int(orphan)].name)
            orphan_ev.append(Evidence(0, f"doctor: pid {orphan} {machine[int(orphan)].name} has lost its parent"))
    f["orphan_named"] = _Fact(orphan is not None, orphan_ev)
    test = ctx.nccl_test
    f["nccl_test_hung"] = _Fact(
        test is not None, [Evidence(0, f"doctor --nccl-test: {x}") for x in (test[2][-6:] if test else ())]
    )
    if test is not None:
        values["nccl_test_message"] = test[0]
        values["nccl_test_findings"] = test[1]


def _line_text(st: _Scan, line: int) -> str:
    for ln, tx in st.launch_lines:
        if ln == line:
            return tx
    for v in st.visible:
        if v[0] == line:
            return f"CUDA_VISIBLE_DEVICES={v[1]}" if not v[3] else v[1]
    return ""


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass
class _Candidate:
    rule: Rule
    confidence: float
    evidence: list[Evidence]
    values: dict[str, str]
    phase: str | None
    no_phase: bool = False
    """The rule needs a phase and the log shows none (the summary says so)."""


STILL_WRITING_S = 120.0
"""A log written this recently may belong to a start-up still under way (compiling, loading): said, not hidden."""
NO_PHASE_WEIGHT = 0.6
"""Factor on the signature weights of a phase-classified rule (``when_phase``) whose lines show no start-up
phase: a bare OOM line is a weaker sign of weights that do not fit than one under load_model."""


def _qualifies(rule: Rule, hit: _Hit) -> bool:
    if rule.when_phase is None:
        return True
    return (hit.phase or "none") in rule.when_phase


def _evaluate(rule: Rule, st: _Scan, facts: _Facts, ctx: DiagnosisContext) -> _Candidate | None:
    if any(not facts.facts[r].true for r in rule.requires):
        return None
    matched: list[tuple[float, bool, list[_Hit]]] = []
    for j, sig in enumerate(rule.signatures):
        sh = st.hits.get((rule.id, j))
        if sh is None:
            continue
        hits = [h for h in sh.all() if _qualifies(rule, h)]
        if hits:
            matched.append((sig.weight, sig.supporting, hits))
    true_facts = [fr for fr in rule.facts if facts.facts[fr.fact].true]
    if not any(not sup for _, sup, _ in matched) and not any(not fr.supporting for fr in true_facts):
        return None
    # A rule that classifies by phase (an OOM) whose firing lines sit in no phase at all: the log does not say
    # when it happened, so the phase is a guess and its lines count for less.
    firing = [h for _, sup, hs in matched if not sup for h in hs]
    no_phase = rule.when_phase is not None and bool(firing) and all(h.phase is None for h in firing)
    scale = NO_PHASE_WEIGHT if no_phase else 1.0
    miss = 1.0
    for w, _, _ in matched:
        miss *= 1.0 - w * scale
    for fr in true_facts:
        miss *= 1.0 - fr.weight
    confidence = round(1.0 - miss, 2)

    values: dict[str, str] = dict(facts.values)
    all_hits = sorted((h for _, _, hs in matched for h in hs), key=lambda h: h.line)
    for h in all_hits:
        values.update(h.groups)
    for d in rule.derive:
        derive(d, values, facts.facts["tp_not_set"].true)

    ev: list[Evidence] = []
    seen: set[int] = set()
    ordered = sorted(matched, key=lambda m: (m[1], -m[0]))  # firing signatures first, heaviest first
    best_phase: str | None = None
    for _w, sup, hits in ordered:
        h = hits[-1]
        if best_phase is None and not sup:
            best_phase = h.phase
        if h.line not in seen:
            seen.add(h.line)
            ev.append(Evidence(h.line, _quote(h.text)))
    for fr in true_facts:
        for e in facts.facts[fr.fact].evidence:
            if e.line not in seen or e.line == 0:
                seen.add(e.line)
                ev.append(e)
    ev = ev[:MAX_EVIDENCE]
    ev.sort(key=lambda e: e.line)
    # A diagnosis shown only by whole-log facts (a hang) happened where the log stopped.
    if no_phase:
        return _Candidate(rule, confidence, ev, values, None, no_phase=True)
    return _Candidate(rule, confidence, ev, values, best_phase or st.phase or rule.phase)


def _fallback(rule: Rule, st: _Scan) -> _Candidate | None:
    if st.error_count == 0:
        return None
    ev = [Evidence(ln, _quote(tx)) for ln, tx in st.errors]
    return _Candidate(rule, 0.3, ev, {}, st.phase)


def diagnose(lines: Iterable[str], context: DiagnosisContext | None = None) -> list[Diagnosis]:
    """Name the likely causes of a failed or hung vLLM run from its log.

    Args:
        lines: the log, one line per item (any length; trailing newlines are ignored). Read once, in order, so a
            generator streams a log of any size in bounded memory.
        context: what else is known (profile, TP size, environment).

    Returns:
        Diagnoses, most likely first; ``[]`` for a log that shows nothing wrong. Never raises on any text.
    """
    ctx = context or DiagnosisContext()
    c = _compiled()
    st = _scan(lines)
    facts = _facts(st, ctx)
    candidates: list[_Candidate] = []
    fallback_rule: Rule | None = None
    for rule in c.catalog.rules:
        if rule.fallback:
            fallback_rule = rule
            continue
        cand = _evaluate(rule, st, facts, ctx)
        if cand is not None:
            candidates.append(cand)
    # One diagnosis per category: the strongest rule speaks for it.
    best: dict[str, _Candidate] = {}
    for cand in candidates:
        cur = best.get(cand.rule.category)
        if cur is None or cand.confidence > cur.confidence:
            best[cand.rule.category] = cand
    # Root cause before symptom: an explained category ranks below the rule that explains it.
    # Only a cause at least as likely as its symptom demotes it (weak environment-only evidence does not).
    for cand in list(best.values()):
        for cat in cand.rule.explains:
            other = best.get(cat)
            if other is not None and cand.confidence >= other.confidence:
                other.confidence = round(max(0.05, min(other.confidence, cand.confidence - 0.05)), 2)
    ranked = sorted(
        best.values(),
        key=lambda x: (-x.confidence, x.rule.severity != "error", x.evidence[0].line if x.evidence else 0),
    )
    if not ranked and fallback_rule is not None:
        fb = _fallback(fallback_rule, st)
        if fb is not None:
            ranked = [fb]
    return [_render(cand, ctx) for cand in ranked[:MAX_DIAGNOSES]]


def _render(cand: _Candidate, ctx: DiagnosisContext) -> Diagnosis:
    r = cand.rule
    if cand.no_phase and r.summary_no_phase:
        summary = fill(r.summary_no_phase, r.summary_no_phase_fallback, cand.values)
    else:
        summary = fill(r.summary, r.summary_fallback, cand.values)
        if cand.no_phase:
            summary += " (The log shows no start-up phase: when it happened is unknown.)"
    fix = fill(r.fix, r.fix_fallback, cand.values)
    if ctx.profile is not None and r.plan_args:
        needed = template_fields(r.plan_args)
        if needed <= set(cand.values):
            try:
                args = shlex.split(r.plan_args.format_map(cand.values))
            except ValueError:
                args = []
            if args:
                fix += f" For your profile: `{plan_command(ctx.profile, args)}`."
    return Diagnosis(
        category=r.category,
        summary=summary,
        evidence=tuple(cand.evidence),
        fix=fix,
        confidence=cand.confidence,
        rule_id=r.id,
        phase=cand.phase,
        checks=r.checks,
        recognised=not r.fallback,
    )
