"""The diagnosis rule catalog: ``qwendeploy/data/rules.yaml`` loaded, validated and rendered as docs.

The catalog is data (see the FAQ at the top of the YAML file); this module turns it into frozen values, checks
that every rule is usable (known category, compilable patterns, known facts and derivations, template fields
that something can fill) and renders docs/troubleshooting.md from it. Matching lives in ``engine.py``.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qwendeploy.core import safe_yaml

CATEGORIES: tuple[str, ...] = (
    "shm_too_small",
    "tp_heads_not_divisible",
    "kv_cache_no_blocks",
    "max_model_len_exceeds_kv_cache",
    "max_model_len_exceeds_model",
    "weights_oom_tp_not_set",
    "cudagraph_capture_oom",
    "sampler_warmup_oom",
    "gpu_memory_held_by_other_process",
    "orphaned_gpu_process",
    "p2p_unsupported_consumer_gpu",
    "nccl_p2p_hang",
    "acs_iommu_blocks_p2p",
    "custom_allreduce_failure",
    "multinode_wrong_interface",
    "infiniband_failure",
    "cuda_visible_devices_mismatch",
    "ray_placement_group",
    "driver_cuda_mismatch",
    "nccl_watchdog_timeout",
    "nccl_env_misconfig",
    "gpu_hardware_fault",
    "dtype_unsupported",
    "port_in_use",
    "unknown",
)
"""Every category a diagnosis can have (issue 3 fixes the names)."""

CHECKS: frozenset[str] = frozenset(
    {
        "shm",
        "p2p",
        "acs",
        "gpu_processes",
        "cuda_visible_devices",
        "nccl_env",
        "driver",
        "ecc",
        "infiniband",
        "network",
        "port",
        "gpus",
    }
)
"""Names of the machine checks of ``qwendeploy doctor`` a rule may point at."""

FACT_VALUES: Mapping[str, str] = {
    "visible_count": "GPUs listed by the CUDA_VISIBLE_DEVICES of the launch command",
    "visible_min": "fewest GPUs any CUDA_VISIBLE_DEVICES in the log lists",
    "visible_min_value": "that CUDA_VISIBLE_DEVICES value",
    "tp_requested": "the tensor-parallel size asked for (flag, engine config or context)",
    "stall_phase": "the start-up phase the log last reached",
    "stall_phase_label": "that phase in words",
    "stall_for": "how long the log kept going after reaching that phase, by its own timestamps",
    "stall_silent": "how long nothing has been written since the last line (when the file's age is known)",
    "stall_checks": "the checks that fit the phase the start-up stopped in",
    "last_line": "the last line of the log",
    "container_note": "the container evidence, in words",
    "host_driver": "the host driver version (from the log or doctor's NVML check)",
    "whose_note": "whose memory the processes named by a CUDA OOM are (this process, an orphan, another job)",
    "nccl_test_message": "what doctor's NCCL test reported",
    "nccl_test_findings": "the P2P/ACS/NCCL machine checks that did not pass",
}
"""Values the engine extracts from the whole log; templates may use them like captured groups."""

FACTS: Mapping[str, str] = {
    "tp_not_set": "CUDA_VISIBLE_DEVICES lists several GPUs but the launch sets no tensor-parallel size above 1",
    "visible_fewer_than_tp": "a CUDA_VISIBLE_DEVICES in the log lists fewer GPUs than the tensor-parallel size",
    "multi_gpu": "the run uses several GPUs (TP > 1, NCCL ranks > 0, nranks > 1, several workers)",
    "hang": "the log ends without an error, in NCCL/all-reduce set-up lines or at a first request stuck at 0%",
    "acs_hint": "signs that GPU peer traffic goes through the CPU: NCCL channels via SHM, ACSCtl SrcValid+, IOMMU",
    "several_processes_listed": "a CUDA OOM message lists two or more other processes holding memory",
    "nccl_activity": "the log shows NCCL at work",
    "harmful_nccl_env": "the environment the server ran with sets NCCL tuning variables (DiagnosisContext.env)",
    "stalled": "the log ends without an error and before the server was ready (a start-up that stopped making "
    "progress)",
    "in_container": "signs that the server ran in a container: a Docker bridge address (172.17.x.x), a 12-hex-digit "
    "host name in NCCL's lines, docker/kubepods paths, or the container's CUDA compat library",
    "new_host_driver": "the host driver is R580 or newer (nvidia-smi in the log, or doctor's NVML check)",
    "old_host_driver": "the host driver is older than R580 (nvidia-smi in the log, or doctor's NVML check)",
    "orphan_named": "a process an OOM names is a vLLM process of an earlier run in the same log, or one doctor "
    "found re-parented to PID 1 on this machine",
    "nccl_test_hung": "doctor's own NCCL all-reduce test hung (doctor --nccl-test)",
}
"""Whole-log facts the engine computes (engine.py implements each)."""

DERIVATIONS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (fields it needs, fields it provides). A derivation that needs nothing always provides its
    # fields (notes that are "" when there is nothing to say).
    "shm_size_mib": (("shm_size",), ("shm_size_mib",)),
    "tp_divisors": (("heads", "tp"), ("tp_valid", "tp_suggest", "tp_best", "tp_use_rest")),
    "yarn_len": (("derived_len",), ("yarn_len",)),
    "port_next": (("port",), ("port_next",)),
    "util_up": (("util",), ("util_up",)),
    "util_down": (("util",), ("util_down",)),
    "util_fit": (("free_gib", "total_gib"), ("util_fit",)),
    "fit_len": ((), ("fit_len", "fit_len_fp8")),
    "tp_for_visible": ((), ("tp_for_visible", "tp_not_set_note")),
    "oom_detail": ((), ("oom_detail",)),
    "num_seqs_half": (("num_seqs",), ("num_seqs_half",)),
    "timeout_s": (("timeout_ms",), ("timeout_s",)),
    "ray_note": ((), ("ray_gpus_note",)),
    "visible_note": ((), ("visible_value_note",)),
    "driver_found_cuda": ((), ("driver_detail", "cuda_needed_note")),
}
"""Computations that turn captured numbers into fix numbers, and the template fields each provides."""


class CatalogError(ValueError):
    """The rule catalog is malformed (a bug in qwendeploy/data/rules.yaml, caught by the tests)."""


@dataclass(frozen=True)
class Signature:
    """One regex matched against each log line."""

    pattern: str
    weight: float
    supporting: bool = False

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.pattern)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.regex.groupindex)


@dataclass(frozen=True)
class FactRef:
    """A whole-log fact a rule counts, with its weight."""

    fact: str
    weight: float
    supporting: bool = False


@dataclass(frozen=True)
class Phase:
    """A start-up phase and the log text that shows it was reached."""

    name: str
    label: str
    markers: tuple[str, ...]
    reset: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    """Markers (a subset of ``markers``) that, seen after the server was serving, mean a new run reached this
    phase (a log appended across restarts): plain start-up log lines, never traceback frame names."""


@dataclass(frozen=True)
class Rule:
    """One way a vLLM start-up or run fails, with what shows it and how to fix it."""

    id: str
    category: str
    phase: str | None
    severity: str
    signatures: tuple[Signature, ...]
    facts: tuple[FactRef, ...]
    requires: tuple[str, ...]
    when_phase: tuple[str, ...] | None
    explains: tuple[str, ...]
    derive: tuple[str, ...]
    summary: str
    summary_fallback: str | None
    explanation: str
    fix: str
    fix_fallback: str | None
    plan_args: str | None
    checks: tuple[str, ...]
    looks_for: str
    fallback: bool = False
    summary_no_phase: str | None = None
    """Summary when the rule needs a phase (``when_phase``) and the log shows none."""
    summary_no_phase_fallback: str | None = None

    @property
    def fields(self) -> frozenset[str]:
        """Every value this rule can know: captured groups, fact values and derived numbers."""
        names: set[str] = set(FACT_VALUES)
        for sig in self.signatures:
            names.update(sig.groups)
        for d in self.derive:
            names.update(DERIVATIONS[d][1] if d in DERIVATIONS else ())
        return frozenset(names)


@dataclass(frozen=True)
class Catalog:
    """The validated catalog: ordered phases and rules."""

    version: int
    phases: tuple[Phase, ...]
    rules: tuple[Rule, ...]
    deterministic: frozenset[str] = frozenset()
    """Categories that, before the server was ever ready, will happen again on a restart (``restart:``)."""
    transient: frozenset[str] = frozenset()
    """Top categories that make an out-of-memory start-up worth a retry (``restart:``)."""

    @property
    def phase_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases)

    def by_category(self) -> dict[str, list[Rule]]:
        out: dict[str, list[Rule]] = {c: [] for c in CATEGORIES}
        for r in self.rules:
            out[r.category].append(r)
        return out


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def template_fields(template: str) -> set[str]:
    """The ``{field}`` names a str.format template uses (``{{`` escapes excluded)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# ---------------------------------------------------------------------------------------------- the YAML's shape
# pydantic models check what a rule *is* (types, unknown keys, weights, kebab-case ids, known names, patterns that
# compile); `_check_rule` checks what needs the whole catalog (phase names, template fields).


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


def rules() -> tuple[Rule, ...]:
    """All rules of the packaged catalog, in catalog order."""
    return load_catalog().rules


# ---------------------------------------------------------------------------------------------- docs


def _md(text: str) -> str:
    return " ".join(text.split())


_TITLES: Mapping[str, str] = {
    "shm_too_small": "/dev/shm too small for NCCL",
    "tp_heads_not_divisible": "Tensor-parallel size does not divide the attention heads",
    "kv_cache_no_blocks": "No memory left for KV-cache blocks",
    "max_model_len_exceeds_kv_cache": "max-model-len longer than the KV cache holds",
    "max_model_len_exceeds_model": "max-model-len longer than the model's window",
    "weights_oom_tp_not_set": "Out of memory loading the weights (tensor parallelism not set or too small)",
    "cudagraph_capture_oom": "Out of memory capturing CUDA graphs",
    "sampler_warmup_oom": "Out of memory in the sampler warm-up",
    "gpu_memory_held_by_other_process": "GPU memory held by another process",
    "orphaned_gpu_process": "Leftover vLLM process still holding the GPU",
    "p2p_unsupported_consumer_gpu": "Peer-to-peer not supported (consumer GPUs)",
    "nccl_p2p_hang": "Start-up hangs after NCCL initialisation (P2P)",
    "acs_iommu_blocks_p2p": "PCIe ACS / IOMMU blocks GPU peer traffic",
    "custom_allreduce_failure": "vLLM custom all-reduce fails",
    "multinode_wrong_interface": "Multi-node: wrong network interface",
    "infiniband_failure": "InfiniBand / RoCE failure",
    "cuda_visible_devices_mismatch": "CUDA_VISIBLE_DEVICES does not match the parallel size",
    "ray_placement_group": "Ray placement group cannot be satisfied",
    "driver_cuda_mismatch": "NVIDIA driver too old for the CUDA build",
    "nccl_watchdog_timeout": "NCCL watchdog timeout",
    "nccl_env_misconfig": "Harmful NCCL variables in the environment",
    "gpu_hardware_fault": "GPU hardware fault (ECC, Xid, fallen off the bus)",
    "dtype_unsupported": "bfloat16 on a GPU older than compute capability 8.0",
    "port_in_use": "Port already in use",
    "unknown": "Unrecognised error",
}


def troubleshooting_markdown() -> str:
    """docs/troubleshooting.md: one section per category, generated from the catalog."""
    cat = load_catalog()
    labels = {p.name: p.label for p in cat.phases}
    out = [
        "# Troubleshooting",
        "",
        "Generated by `python scripts/gen_docs.py` from `qwendeploy/data/rules.yaml`; do not edit.",
        "",
        "`qwendeploy doctor --log FILE` (or `-` for stdin) matches a vLLM log against these rules and prints the",
        "likely causes, most likely first, with the evidence lines and the fix filled in with the numbers from",
        "the log. `serve` runs the same rules on a crashed server's log. Each section below is one category",
        "(`category` in `doctor --json`); the rule ids are the `rule_id` values.",
        "",
        "Start-up phases (an out-of-memory error is classified by the phase it happened in): "
        + ", ".join(f"`{p.name}` ({p.label})" for p in cat.phases)
        + ".",
        "",
        "## Categories",
        "",
    ]
    by_cat = cat.by_category()
    for c in CATEGORIES:
        out.append(f"- [`{c}`](#{c.replace('_', '-')}): {_TITLES[c]}")
    out.append("")
    for c in CATEGORIES:
        out += [f"## {c}", "", f"**{_TITLES[c]}**", ""]
        for r in by_cat[c]:
            phase = labels.get(r.phase or "", "any time")
            out += [f"### Rule `{r.id}` ({r.severity}; phase: {phase})", ""]
            out += [f"*What it means.* {_md(r.explanation)}", ""]
            out += [f"*What it looks for.* {_md(r.looks_for)}", ""]
            if r.when_phase is not None:
                phases = ", ".join("unknown" if p == "none" else labels[p] for p in r.when_phase)
                out += [f"*Only counts in phase:* {phases}.", ""]
            if r.requires:
                out += ["*Requires:* " + "; ".join(FACTS[f] for f in r.requires) + ".", ""]
            fix = r.fix_fallback if r.fix_fallback is not None else r.fix
            out += [f"*Fix.* {_md(fix)}", ""]
            if r.fix_fallback is not None:
                out += [f"*Fix as written with the log's numbers:* {_md(r.fix)}", ""]
            if r.checks:
                out += ["*Confirm with `qwendeploy doctor` checks:* " + ", ".join(f"`{x}`" for x in r.checks), ""]
            if r.signatures:
                out += ["Signatures (regex, weight):", ""]
                for s in r.signatures:
                    tag = ", supporting" if s.supporting else ""
                    pattern = s.pattern.replace("`", "'")
                    out.append(f"- `{pattern}` ({s.weight:g}{tag})")
                out.append("")
            if r.facts:
                out += ["Whole-log facts (weight):", ""]
                for f in r.facts:
                    tag = ", supporting" if f.supporting else ""
                    out.append(f"- `{f.fact}`: {FACTS[f.fact]} ({f.weight:g}{tag})")
                out.append("")
            if r.explains:
                out += ["Ranks above: " + ", ".join(f"`{x}`" for x in r.explains) + " (their root cause).", ""]
    return "\n".join(out).rstrip("\n") + "\n"
