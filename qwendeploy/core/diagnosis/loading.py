"""``qwendeploy/data/rules.yaml`` loaded: parsed, validated by the pydantic models of ``schema``, turned into the
frozen values of ``catalog``, and checked as a whole (known phases, templates whose fields something fills, plain
fallbacks for templates that need a number). Read once per process, on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError

from qwendeploy.core import safe_yaml
from qwendeploy.core.diagnosis.catalog import (
    DERIVATIONS,
    Catalog,
    CatalogError,
    FactRef,
    Phase,
    Rule,
    Signature,
    template_fields,
)
from qwendeploy.core.diagnosis.schema import CatalogFile, RuleEntry


def _to_rule(e: RuleEntry) -> Rule:
    return Rule(
        id=e.id,
        category=e.category,
        phase=e.phase,
        severity=e.severity,
        signatures=tuple(Signature(s.pattern, float(s.weight), s.supporting) for s in e.signatures),
        facts=tuple(FactRef(f.fact, float(f.weight), f.supporting) for f in e.facts),
        requires=e.requires,
        when_phase=e.when_phase,
        explains=e.explains,
        derive=e.derive,
        summary=e.summary,
        summary_fallback=e.summary_fallback,
        explanation=e.explanation,
        fix=e.fix,
        fix_fallback=e.fix_fallback,
        plan_args=e.plan_args,
        checks=e.checks,
        looks_for=e.looks_for,
        fallback=e.fallback,
        summary_no_phase=e.summary_no_phase,
        summary_no_phase_fallback=e.summary_no_phase_fallback,
    )


_TEMPLATE_KEYS = (
    "summary",
    "summary_fallback",
    "summary_no_phase",
    "summary_no_phase_fallback",
    "fix",
    "fix_fallback",
    "plan_args",
)


def _check_rule(rule: Rule, phase_names: Sequence[str]) -> None:
    """What a rule needs from the rest of the catalog: known phases, and templates something can fill."""
    where = f"rule {rule.id!r}"
    if rule.phase is not None and rule.phase not in phase_names:
        raise CatalogError(f"{where}: unknown phase {rule.phase!r}")
    for p in rule.when_phase or ():
        if p != "none" and p not in phase_names:
            raise CatalogError(f"{where}.when_phase: unknown phase {p!r}")
    known = rule.fields
    for key in _TEMPLATE_KEYS:
        text = getattr(rule, key)
        if text is None:
            continue
        try:
            missing = template_fields(text) - known
        except ValueError as e:
            raise CatalogError(f"{where}.{key}: bad template: {e}") from e
        if missing:
            raise CatalogError(f"{where}.{key}: nothing provides {sorted(missing)}")
    # A template that needs a number must have a plain fallback, or a log without the number shows nothing.
    always = always_known(rule)
    for key, fb in (("summary", "summary_fallback"), ("fix", "fix_fallback")):
        needs = template_fields(getattr(rule, key)) - always
        if needs and getattr(rule, fb) is None:
            raise CatalogError(f"{where}: {key} uses {sorted(needs)}, so it needs {fb}")
        fb_text = getattr(rule, fb)
        if fb_text is not None and template_fields(fb_text) - always:
            raise CatalogError(f"{where}.{fb}: a fallback may only use fields that are always known")


_ALWAYS_SET: Mapping[str, tuple[str, ...]] = {
    "tp_for_visible": ("tp_not_set_note",),
    "oom_detail": ("oom_detail",),
    "ray_note": ("ray_gpus_note",),
    "driver_found_cuda": ("driver_detail", "cuda_needed_note"),
    "visible_note": ("visible_value_note",),
    "argument_hint": ("rejected", "argument_hint"),
}
"""Derived notes that are always set (to "" when their inputs are missing)."""


ALWAYS_VALUES: frozenset[str] = frozenset(
    {
        "stall_phase",
        "stall_phase_label",
        "stall_for",
        "stall_silent",
        "stall_checks",
        "last_line",
        "container_note",
        "whose_note",
    }
)
"""Whole-log values the engine sets for every log with a line in it (notes are "" when there is nothing to say)."""


def always_known(rule: Rule) -> set[str]:
    """Fields a firing rule always has: groups every non-supporting signature captures (when no fact can fire
    the rule instead), the always-set notes, and what derivations make from those."""
    out: set[str] = set(ALWAYS_VALUES)
    firing = [s for s in rule.signatures if not s.supporting]
    if firing and not any(not f.supporting for f in rule.facts):
        common = set(firing[0].groups)
        for s in firing[1:]:
            common &= set(s.groups)
        out |= common
    for d in rule.derive:
        out.update(_ALWAYS_SET.get(d, ()))
        needs, gives = DERIVATIONS[d]
        if needs and set(needs) <= out:
            out.update(gives)
    return out


def parse_catalog(text: str) -> Catalog:
    """Validate catalog YAML text.

    Raises:
        CatalogError: the text is not a valid catalog (the message names the rule and field).
    """
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"rules.yaml is not YAML: {e}") from e
    try:
        doc = CatalogFile.model_validate(data)
    except ValidationError as e:
        raise CatalogError(f"rules.yaml is not a valid rule catalog: {_name_rules(e, data)}") from None
    phases = tuple(
        Phase(name=p.name, label=p.label or p.name, markers=p.markers, reset=p.reset, restart=p.restart)
        for p in doc.phases
    )
    names = [p.name for p in phases]
    rules = tuple(_to_rule(r) for r in doc.rules)
    for r in rules:
        _check_rule(r, names)
    return Catalog(
        version=1,
        phases=phases,
        rules=rules,
        deterministic=doc.restart.deterministic,
        transient=doc.restart.transient,
    )


def _name_rules(e: ValidationError, data: Any) -> str:
    """pydantic's report with ``rules.7`` written as ``rules.7 (id 'shm-nccl-segment')``."""
    out: list[str] = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        if len(loc) > 1 and loc[0] == "rules" and loc[1].isdigit() and isinstance(data, dict):
            raw = (data.get("rules") or [None] * (int(loc[1]) + 1))[int(loc[1])]
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                loc[1] += f" (id {raw['id']!r})"
        out.append(f"{'.'.join(loc) or 'top level'}: {err['msg']}")
    return "; ".join(out)


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The packaged catalog (qwendeploy/data/rules.yaml), parsed once per process."""
    text = resources.files("qwendeploy").joinpath("data/rules.yaml").read_text(encoding="utf-8")
    return parse_catalog(text)
