"""The walk over a log: one pass in blocks of lines (bounded memory), the word gates picking the few lines worth a
closer look, and on those the phase markers, the line facts and the rules' signatures (also across a line a
terminal wrapped)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from qwendeploy.core.diagnosis import evidence as evi
from qwendeploy.core.diagnosis.compiled import Compiled, Sig, compiled
from qwendeploy.core.diagnosis.gate import WordGate
from qwendeploy.core.diagnosis.line_facts import collect_line_facts
from qwendeploy.core.diagnosis.lines import MAX_LINE_CHARS, clean_line
from qwendeploy.core.diagnosis.state import FACTS_KEPT, Hit, ScanState, SigHits

_BLOCK_LINES = 2048
"""Lines scanned together: one C-level search of the joined block finds the few lines worth a closer look."""


def scan_log(lines: Iterable[object]) -> ScanState:
    """One pass over the log in blocks (bounded memory): lines no gate word touches only feed the tail."""
    c = compiled()
    st = ScanState()
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


def _scan_block(c: Compiled, st: ScanState, first: int, raws: list[object]) -> None:
    """Scan lines ``first``… of the log: pick the few a gate word touches, look closer at those only."""
    plain = _plain_block(raws)
    if plain is not None:
        texts, joined = plain
    else:
        texts = [clean_line(raw) for raw in raws]
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


# vLLM 0.26 on SIGTERM/SIGINT: "[shutdown] API server: shutdown triggered",
# "EngineCore: trigger received signal=SIGTERM".
# Its teardown can then log an EngineDeadError traceback (measured on an H100): an asked-for stop, not a failure.
_STOP_REQUESTED = re.compile(r"\[shutdown\] API server: shutdown triggered|received signal=SIG(?:TERM|INT)\b")


def _scan_line(c: Compiled, st: ScanState, i: int, text: str, block: str, offset: int) -> None:
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
        collect_line_facts(st, i, text)
    for sig, groups in _matches(c, text):
        _record(st, sig, Hit(i, text, groups, st.phase))


def _matches(c: Compiled, text: str) -> list[tuple[Sig, dict[str, str]]]:
    """The signatures that match one line, with their named groups."""
    lower = text.lower()
    if not c.gate.search(lower):
        return []
    out: list[tuple[Sig, dict[str, str]]] = []
    for sig in c.signatures:
        if sig.literals is not None:
            hay = lower if sig.icase else text
            if not any(lit in hay for lit in sig.literals):
                continue
        sm = sig.regex.search(text)
        if sm is not None:
            out.append((sig, {k: v for k, v in sm.groupdict().items() if v is not None}))
    return out


def _record(st: ScanState, sig: Sig, hit: Hit) -> None:
    if st.phase is None and len(st.unresolved) < FACTS_KEPT:
        st.unresolved.append(hit)
    st.hits.setdefault((sig.rule.id, sig.index), SigHits()).add(hit)


_WRAP_WORDS = ("error", "exception", "fail", "warn", "cannot", "unable", "must ")
"""A line with one of these (lower-cased) may be a message that copy-paste or a terminal wrapped onto the next."""


_WRAP_CHARS = 600
"""Characters of each line joined when a wrapped message is looked for."""


def _unwrap(c: Compiled, st: ScanState, i: int, text: str, nxt: str) -> None:
    """Signatures that match only across a line break (``… must be less than or equal to the`` / ``number of
    visible devices (8).``): recorded on the second line, quoting both."""
    joined = text[-_WRAP_CHARS:].rstrip() + " " + nxt[:_WRAP_CHARS].strip()
    both = _matches(c, joined)
    if not both:
        return
    alone = {id(sig) for sig, _ in (*_matches(c, text), *_matches(c, nxt))}
    for sig, groups in both:
        if id(sig) not in alone:
            _record(st, sig, Hit(i + 1, joined, groups, st.phase))
