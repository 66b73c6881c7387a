"""The diagnosis rule catalog as values: the names a rule may use (categories, machine checks, whole-log facts and
values, derivations) and the frozen ``Rule``/``Phase``/``Catalog`` the engine reads.

``schema`` checks rules.yaml against these names, ``loading`` builds the values, ``troubleshooting`` renders them.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

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
    "invalid_arguments",
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
"""Whole-log facts the engine computes (facts.py implements each)."""


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
    "argument_hint": ((), ("rejected", "argument_hint")),
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
