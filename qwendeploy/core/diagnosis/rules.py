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
from typing import Any

import yaml

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


def _tuple_of_str(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: must be a list of strings, got {value!r}")
    return tuple(value)


def _str(raw: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise CatalogError(f"{where}: missing {key!r}")
        return None
    if not isinstance(value, str):
        raise CatalogError(f"{where}.{key}: must be a string, got {value!r}")
    return value


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise CatalogError(f"{where}: weight must be a number in (0, 1], got {value!r}")
    return float(value)


def _signature(raw: Any, where: str) -> Signature:
    if not isinstance(raw, dict) or "pattern" not in raw:
        raise CatalogError(f"{where}: a signature is a mapping with 'pattern' and 'weight'")
    pattern = raw["pattern"]
    if not isinstance(pattern, str) or not pattern:
        raise CatalogError(f"{where}.pattern: must be a non-empty string")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise CatalogError(f"{where}.pattern: does not compile: {e}") from e
    if "(?P=" in pattern:
        raise CatalogError(f"{where}.pattern: back-references are not allowed (they defeat the prefilter)")
    if compiled.search(""):
        raise CatalogError(f"{where}.pattern: matches the empty string")
    unknown = set(raw) - {"pattern", "weight", "supporting"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    return Signature(pattern=pattern, weight=_weight(raw.get("weight"), where), supporting=bool(raw.get("supporting")))


def _fact(raw: Any, where: str) -> FactRef:
    if not isinstance(raw, dict) or raw.get("fact") not in FACTS:
        raise CatalogError(f"{where}: a fact is {{fact: NAME, weight: W}} with NAME one of {sorted(FACTS)}")
    weight = _weight(raw.get("weight"), where)
    return FactRef(fact=str(raw["fact"]), weight=weight, supporting=bool(raw.get("supporting")))


_RULE_KEYS = {
    "id",
    "category",
    "phase",
    "severity",
    "signatures",
    "facts",
    "requires",
    "when_phase",
    "explains",
    "derive",
    "summary",
    "summary_fallback",
    "summary_no_phase",
    "summary_no_phase_fallback",
    "explanation",
    "fix",
    "fix_fallback",
    "plan_args",
    "checks",
    "looks_for",
    "fallback",
}


# long: the hand-written rule validator the pydantic catalog model replaces in phase B.
def _rule(raw: Any, index: int, phase_names: Sequence[str]) -> Rule:
    if not isinstance(raw, dict):
        raise CatalogError(f"rules[{index}]: must be a mapping")
    rid = _str(raw, "id", f"rules[{index}]") or ""
    where = f"rule {rid!r}"
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", rid):
        raise CatalogError(f"{where}: id must be kebab-case")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    category = _str(raw, "category", where) or ""
    if category not in CATEGORIES:
        raise CatalogError(f"{where}: unknown category {category!r}")
    phase = raw.get("phase")
    if phase is not None and phase not in phase_names:
        raise CatalogError(f"{where}: unknown phase {phase!r}")
    severity = _str(raw, "severity", where) or ""
    if severity not in ("error", "warning"):
        raise CatalogError(f"{where}: severity must be error or warning")
    sigs_raw = raw.get("signatures") or []
    if not isinstance(sigs_raw, list):
        raise CatalogError(f"{where}.signatures: must be a list")
    signatures = tuple(_signature(s, f"{where}.signatures[{i}]") for i, s in enumerate(sigs_raw))
    facts_raw = raw.get("facts") or []
    if not isinstance(facts_raw, list):
        raise CatalogError(f"{where}.facts: must be a list")
    facts = tuple(_fact(f, f"{where}.facts[{i}]") for i, f in enumerate(facts_raw))
    requires = _tuple_of_str(raw.get("requires"), f"{where}.requires")
    for f in requires:
        if f not in FACTS:
            raise CatalogError(f"{where}.requires: unknown fact {f!r}")
    when_raw = raw.get("when_phase")
    when_phase = None if when_raw is None else _tuple_of_str(when_raw, f"{where}.when_phase")
    for p in when_phase or ():
        if p != "none" and p not in phase_names:
            raise CatalogError(f"{where}.when_phase: unknown phase {p!r}")
    explains = _tuple_of_str(raw.get("explains"), f"{where}.explains")
    for c in explains:
        if c not in CATEGORIES or c == category:
            raise CatalogError(f"{where}.explains: {c!r} is not another category")
    derive = _tuple_of_str(raw.get("derive"), f"{where}.derive")
    for d in derive:
        if d not in DERIVATIONS:
            raise CatalogError(f"{where}.derive: unknown derivation {d!r}")
    checks = _tuple_of_str(raw.get("checks"), f"{where}.checks")
    for c in checks:
        if c not in CHECKS:
            raise CatalogError(f"{where}.checks: unknown machine check {c!r}")
    fallback = bool(raw.get("fallback"))
    if not fallback and not any(not s.supporting for s in signatures) and not any(not f.supporting for f in facts):
        raise CatalogError(f"{where}: needs a signature or fact that is not only supporting")
    rule = Rule(
        id=rid,
        category=category,
        phase=phase,
        severity=severity,
        signatures=signatures,
        facts=facts,
        requires=requires,
        when_phase=when_phase,
        explains=explains,
        derive=derive,
        summary=_str(raw, "summary", where) or "",
        summary_fallback=_str(raw, "summary_fallback", where, required=False),
        explanation=_str(raw, "explanation", where) or "",
        fix=_str(raw, "fix", where) or "",
        fix_fallback=_str(raw, "fix_fallback", where, required=False),
        plan_args=_str(raw, "plan_args", where, required=False),
        checks=checks,
        looks_for=_str(raw, "looks_for", where) or "",
        fallback=fallback,
        summary_no_phase=_str(raw, "summary_no_phase", where, required=False),
        summary_no_phase_fallback=_str(raw, "summary_no_phase_fallback", where, required=False),
    )
    known = rule.fields
    for key in (
        "summary",
        "summary_fallback",
        "summary_no_phase",
        "summary_no_phase_fallback",
        "fix",
        "fix_fallback",
        "plan_args",
    ):
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
    return rule


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
        CatalogError: the text is not a valid catalog (message names the rule and field).
    """
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"rules.yaml is not YAML: {e}") from e
    if not isinstance(data, dict):
        raise CatalogError("rules.yaml: top level must be a mapping")
    version = data.get("version")
    if version != 1:
        raise CatalogError(f"rules.yaml: unsupported version {version!r}")
    phases_raw = data.get("phases")
    if not isinstance(phases_raw, list) or not phases_raw:
        raise CatalogError("rules.yaml: 'phases' must be a non-empty list")
    phases: list[Phase] = []
    for i, p in enumerate(phases_raw):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise CatalogError(f"phases[{i}]: needs a name")
        phases.append(
            Phase(
                name=p["name"],
                label=str(p.get("label") or p["name"]),
                markers=_tuple_of_str(p.get("markers"), f"phases[{i}].markers"),
                reset=_tuple_of_str(p.get("reset"), f"phases[{i}].reset"),
                restart=_tuple_of_str(p.get("restart"), f"phases[{i}].restart"),
            )
        )
        if not set(phases[-1].restart) <= set(phases[-1].markers):
            raise CatalogError(f"phases[{i}].restart: every restart marker must also be one of the markers")
    names = [p.name for p in phases]
    if len(set(names)) != len(names) or "none" in names:
        raise CatalogError("phases: names must be unique and not 'none'")
    rules_raw = data.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise CatalogError("rules.yaml: 'rules' must be a non-empty list")
    rules = tuple(_rule(r, i, names) for i, r in enumerate(rules_raw))
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CatalogError(f"rules.yaml: duplicate rule ids {dupes}")
    covered = {r.category for r in rules}
    missing = [c for c in CATEGORIES if c not in covered]
    if missing:
        raise CatalogError(f"rules.yaml: no rule for categories {missing}")
    if sum(1 for r in rules if r.fallback) != 1:
        raise CatalogError("rules.yaml: exactly one rule must be the fallback")
    restart = data.get("restart") or {}
    if not isinstance(restart, dict) or set(restart) - {"deterministic", "transient"}:
        raise CatalogError("rules.yaml: 'restart' holds only the lists 'deterministic' and 'transient'")
    policy = {k: frozenset(_tuple_of_str(restart.get(k), f"restart.{k}")) for k in ("deterministic", "transient")}
    unknown = sorted((policy["deterministic"] | policy["transient"]) - set(CATEGORIES))
    if unknown:
        raise CatalogError(f"rules.yaml: restart names unknown categories {unknown}")
    return Catalog(
        version=1,
        phases=tuple(phases),
        rules=rules,
        deterministic=policy["deterministic"],
        transient=policy["transient"],
    )


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
