"""The rule catalog compiled once for matching: the start-up phase markers (and what they say about a line or a
log: ``phase_of_line``, ``detect_phase``), each signature with the literals it cannot match without, and the word
gates (gate.py) that let the scan skip the lines no rule could match."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qwendeploy.core.diagnosis.catalog import Catalog, Rule
from qwendeploy.core.diagnosis.gate import WordGate, trie_regex
from qwendeploy.core.diagnosis.line_facts import FACT_WORDS
from qwendeploy.core.diagnosis.lines import clean_line
from qwendeploy.core.diagnosis.literals import signature_literals
from qwendeploy.core.diagnosis.loading import load_catalog


@dataclass(frozen=True)
class Sig:
    rule: Rule
    index: int
    regex: re.Pattern[str]
    literals: tuple[str, ...] | None
    icase: bool


@dataclass(frozen=True)
class Compiled:
    catalog: Catalog
    phase_re: re.Pattern[str]
    phase_gate: re.Pattern[str]
    group_phase: Mapping[str, str]
    reset_group: str
    gate: re.Pattern[str]
    fact_gate: re.Pattern[str]
    signatures: tuple[Sig, ...]
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
def compiled() -> Compiled:
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
    markers = [m for ph in cat.phases for m in (*ph.markers, *ph.reset)]
    phase_gate = re.compile(trie_regex(markers))
    sigs: list[Sig] = []
    words: set[str] = set()
    always = False
    for r in cat.rules:
        for j, s in enumerate(r.signatures):
            lits, icase = signature_literals(s.pattern)
            sigs.append(Sig(r, j, s.regex, lits, icase))
            if lits is None:
                always = True
            else:
                words.update(w.lower() for w in lits)
    # The gate runs on the lower-cased line: a superset of the case-sensitive matches, which is all a gate needs.
    gate = re.compile("" if always else trie_regex(words))
    rank = {ph.name: i for i, ph in enumerate(cat.phases)}
    fact_gate = re.compile(trie_regex((*FACT_WORDS, "nccl")))
    restart = frozenset(m for ph in cat.phases for m in ph.restart)
    block_words = {w.lower() for w in (*words, *FACT_WORDS, *markers, "nccl", "shutdown", "signal=")}
    last = cat.phases[-1]
    others = {m.lower() for ph in cat.phases[:-1] for m in (*ph.markers, *ph.reset)}
    serving_only = {m.lower() for m in last.markers} - others
    block_gate = WordGate([""] if always else block_words)
    serving_gate = WordGate([""] if always else block_words - serving_only)
    return Compiled(
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
    c = compiled()
    m = c.phase_re.search(clean_line(text))
    return None if m is None else c.advance(None, m)


def phase_label(phase: str | None) -> str:
    """Human words for a phase name ("loading weights", ...)."""
    for ph in load_catalog().phases:
        if ph.name == phase:
            return ph.label
    return "unknown"


def detect_phase(lines: Iterable[str]) -> str | None:
    """The furthest start-up phase the (latest run in the) log reached; a restart line resets it."""
    c = compiled()
    current: str | None = None
    for raw in lines:
        m = c.phase_re.search(clean_line(raw))
        if m is not None:
            current = c.advance(current, m)
    return current
