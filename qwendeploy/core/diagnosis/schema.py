"""rules.yaml's shape as pydantic models: what a rule *is* (types, unknown keys, weights in (0, 1], kebab-case ids,
known categories, facts, derivations and machine checks, patterns that compile and cannot match the empty string).

What needs the whole catalog (phase names, template fields something can fill) is checked by ``loading``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qwendeploy.core.diagnosis.catalog import CATEGORIES, CHECKS, DERIVATIONS, FACTS


def _known(names: Any, value: str, what: str) -> str:
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}")
    return value


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("weight must be a number in (0, 1], not a boolean")
    return value


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class SignatureEntry(_Entry):
    pattern: str = Field(min_length=1)
    weight: float = Field(gt=0.0, le=1.0)
    supporting: bool = False

    _weight_not_bool = field_validator("weight", mode="before")(_no_bool)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as e:
            raise ValueError(f"does not compile: {e}") from e
        if "(?P=" in v:
            raise ValueError("back-references are not allowed (they defeat the prefilter)")
        if compiled.search(""):
            raise ValueError("matches the empty string")
        return v


class FactEntry(_Entry):
    fact: str
    weight: float = Field(gt=0.0, le=1.0)
    supporting: bool = False

    _weight_not_bool = field_validator("weight", mode="before")(_no_bool)

    @field_validator("fact")
    @classmethod
    def _fact_known(cls, v: str) -> str:
        return _known(FACTS, v, "fact")


class RuleEntry(_Entry):
    """One rule as rules.yaml writes it (the FAQ at the top of the file explains each key)."""

    id: str = Field(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
    category: str
    phase: str | None = None
    severity: Literal["error", "warning"]
    signatures: tuple[SignatureEntry, ...] = ()
    facts: tuple[FactEntry, ...] = ()
    requires: tuple[str, ...] = ()
    when_phase: tuple[str, ...] | None = None
    explains: tuple[str, ...] = ()
    derive: tuple[str, ...] = ()
    summary: str
    summary_fallback: str | None = None
    summary_no_phase: str | None = None
    summary_no_phase_fallback: str | None = None
    explanation: str
    fix: str
    fix_fallback: str | None = None
    plan_args: str | None = None
    checks: tuple[str, ...] = ()
    looks_for: str
    fallback: bool = False

    @field_validator("category")
    @classmethod
    def _category_known(cls, v: str) -> str:
        return _known(CATEGORIES, v, "category")

    @field_validator("requires")
    @classmethod
    def _facts_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_known(FACTS, f, "fact") for f in v)

    @field_validator("derive")
    @classmethod
    def _derivations_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_known(DERIVATIONS, d, "derivation") for d in v)

    @field_validator("checks")
    @classmethod
    def _checks_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_known(CHECKS, c, "machine check") for c in v)

    @model_validator(mode="after")
    def _shape(self) -> RuleEntry:
        for c in self.explains:
            if c not in CATEGORIES or c == self.category:
                raise ValueError(f"explains: {c!r} is not another category")
        if not self.fallback and all(s.supporting for s in self.signatures) and all(f.supporting for f in self.facts):
            raise ValueError("needs a signature or fact that is not only supporting")
        return self


class PhaseEntry(_Entry):
    name: str
    label: str | None = None
    markers: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _restart_markers(self) -> PhaseEntry:
        if not set(self.restart) <= set(self.markers):
            raise ValueError("restart: every restart marker must also be one of the markers")
        return self


class RestartEntry(_Entry):
    deterministic: frozenset[str] = frozenset()
    transient: frozenset[str] = frozenset()

    @model_validator(mode="after")
    def _categories_known(self) -> RestartEntry:
        unknown = sorted((self.deterministic | self.transient) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"restart names unknown categories {unknown}")
        return self


class CatalogFile(_Entry):
    """rules.yaml as a whole."""

    version: Literal[1]
    phases: tuple[PhaseEntry, ...] = Field(min_length=1)
    restart: RestartEntry = RestartEntry()
    rules: tuple[RuleEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _whole(self) -> CatalogFile:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names) or "none" in names:
            raise ValueError("phases: names must be unique and not 'none'")
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate rule ids {dupes}")
        missing = [c for c in CATEGORIES if c not in {r.category for r in self.rules}]
        if missing:
            raise ValueError(f"no rule for categories {missing}")
        if sum(1 for r in self.rules if r.fallback) != 1:
            raise ValueError("exactly one rule must be the fallback")
        return self
