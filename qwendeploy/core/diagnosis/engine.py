"""Match a vLLM log against the rule catalog and name the likely causes, with evidence and a filled-in fix.

Pure: lines in, diagnoses out. One pass over the log (linear in its length, ``scan``): each line is classified
into a start-up phase (``compiled``), cheaply prefiltered by words (``gate``, ``literals``), and only interesting
lines are matched against the rules' signatures. Whole-log facts (visible GPUs vs TP, a log that ends in NCCL
set-up, ...) are derived after it (``facts``). This module weighs each rule's evidence, ranks the candidates and
renders them. See qwendeploy/data/rules.yaml for the catalog and how ranking works.

The names other modules import from here (``diagnose``, ``DiagnosisContext``, ``phase_of_line`` …) stay
importable from ``qwendeploy.core.diagnosis.engine``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from qwendeploy.core.diagnosis.catalog import Rule, template_fields
from qwendeploy.core.diagnosis.compiled import compiled
from qwendeploy.core.diagnosis.compiled import detect_phase as detect_phase
from qwendeploy.core.diagnosis.compiled import phase_of_line as phase_of_line
from qwendeploy.core.diagnosis.facts import Facts, whole_log_facts
from qwendeploy.core.diagnosis.fixes import derive, fill
from qwendeploy.core.diagnosis.fixes import plan_command as plan_command
from qwendeploy.core.diagnosis.lines import MAX_LINE_CHARS as MAX_LINE_CHARS
from qwendeploy.core.diagnosis.lines import quote
from qwendeploy.core.diagnosis.literals import signature_literals as signature_literals
from qwendeploy.core.diagnosis.scan import scan_log
from qwendeploy.core.diagnosis.state import Hit, ScanState
from qwendeploy.core.diagnosis.values import Diagnosis as Diagnosis
from qwendeploy.core.diagnosis.values import DiagnosisContext as DiagnosisContext
from qwendeploy.core.diagnosis.values import Evidence
from qwendeploy.core.diagnosis.values import shown_name as shown_name

MAX_EVIDENCE = 4
"""Evidence lines quoted per diagnosis."""


MAX_DIAGNOSES = 6
"""Diagnoses returned at most (most likely first)."""


@dataclass
class _Candidate:
    rule: Rule
    confidence: float
    evidence: list[Evidence]
    values: dict[str, str]
    phase: str | None
    no_phase: bool = False
    """The rule needs a phase and the log shows none (the summary says so)."""


NO_PHASE_WEIGHT = 0.6
"""Factor on the signature weights of a phase-classified rule (``when_phase``) whose lines show no start-up
phase: a bare OOM line is a weaker sign of weights that do not fit than one under load_model."""


def _qualifies(rule: Rule, hit: Hit) -> bool:
    if rule.when_phase is None:
        return True
    return (hit.phase or "none") in rule.when_phase


def _evaluate(rule: Rule, st: ScanState, facts: Facts, ctx: DiagnosisContext) -> _Candidate | None:
    if any(not facts.facts[r].true for r in rule.requires):
        return None
    matched: list[tuple[float, bool, list[Hit]]] = []
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
            ev.append(Evidence(h.line, quote(h.text)))
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


def _fallback(rule: Rule, st: ScanState) -> _Candidate | None:
    if st.error_count == 0:
        return None
    ev = [Evidence(ln, quote(tx)) for ln, tx in st.errors]
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
    c = compiled()
    st = scan_log(lines)
    facts = whole_log_facts(st, ctx)
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
