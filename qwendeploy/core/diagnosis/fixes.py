"""Fix numbers and text: derivations that turn captured numbers into the numbers a fix names, template filling
with a plain fallback when a number is missing, and the ``qwendeploy plan`` command that rewrites a profile.

Pure: values in, strings out. catalog.py (DERIVATIONS) lists what each derivation needs and provides.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence

from qwendeploy.core.argv import drop_flags
from qwendeploy.core.diagnosis.catalog import template_fields
from qwendeploy.core.profile import Profile
from qwendeploy.core.vllm_args import REMOVED_FLAGS


def _num(values: Mapping[str, str], key: str) -> float | None:
    raw = values.get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _pow2_at_most(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


# long: a flat table of small derivations, one branch each (DERIVATIONS in catalog.py names them); phase B turns it
# into a dict of functions.
def derive(name: str, v: dict[str, str], tp_not_set: bool) -> None:
    """Run derivation ``name`` on the values ``v`` (in place); ``tp_not_set``: the whole-log fact of that name."""
    if name == "shm_size_mib":
        size = _num(v, "shm_size")
        if size is not None:
            v["shm_size_mib"] = f"{size / 2**20:.1f}"
    elif name == "tp_divisors":
        heads, tp = _num(v, "heads"), _num(v, "tp")
        if heads is None or tp is None or heads < 1:
            return
        h, t = int(heads), int(tp)
        divisors = [d for d in range(1, h + 1) if h % d == 0]
        # Powers of two also divide the KV heads of every Qwen model, so vLLM can build the model with them.
        pow2 = [d for d in divisors if d & (d - 1) == 0]
        below = max((d for d in pow2 if d <= t), default=1)
        above = min((d for d in pow2 if d > t), default=None)
        v["tp_valid"] = ", ".join(str(d) for d in divisors)
        v["tp_best"] = str(below)
        v["tp_suggest"] = f"{below} or {above}" if above is not None and above < 2 * t else str(below)
        v["tp_use_rest"] = (
            f" To still use all {t} GPUs, run {t // below} replicas of TP {below} (--data-parallel-size {t // below})."
            if t // below > 1 and t % below == 0
            else ""
        )
    elif name == "yarn_len":
        d = _num(v, "derived_len")
        if d is not None:
            v["yarn_len"] = str(int(d) * 4)
    elif name == "port_next":
        p = _num(v, "port")
        if p is not None:
            v["port_next"] = str(int(p) + 1)
    elif name in ("util_up", "util_down"):
        u = _num(v, "util")
        if u is not None and 0 < u <= 1:
            v["util_up"] = f"{min(0.95, u + 0.2):.2f}" if u < 0.95 else "0.95"
            v["util_down"] = f"{max(0.5, u - 0.05):.2f}"
    elif name == "util_fit":
        free, total = _num(v, "free_gib"), _num(v, "total_gib")
        if free is not None and total:
            v["util_fit"] = f"{math.floor(free / total * 100) / 100:.2f}"
    elif name == "fit_len":
        fit = _num(v, "est_len") or _num(v, "kv_tokens")
        if fit is not None:
            v["fit_len"] = str(int(fit))
            v["fit_len_fp8"] = str(int(fit) * 2)
    elif name == "tp_for_visible":
        count = _num(v, "visible_count")
        if count is not None and count > 1:
            v["tp_for_visible"] = str(_pow2_at_most(int(count)))
        v["tp_not_set_note"] = (
            f" with --tensor-parallel-size unset although {v.get('visible_count')} GPUs are visible"
            if tp_not_set
            else ""
        )
    elif name == "oom_detail":
        tried_s, free_s, total_s = v.get("tried"), v.get("free"), v.get("total")
        v["oom_detail"] = (
            f" (tried to allocate {tried_s}; {free_s} of {total_s} free)" if tried_s and free_s and total_s else ""
        )
    elif name == "num_seqs_half":
        n = _num(v, "num_seqs")
        if n is not None:
            v["num_seqs_half"] = str(max(1, _pow2_at_most(int(n) // 2) if n >= 2 else 1))
    elif name == "timeout_s":
        ms = _num(v, "timeout_ms")
        if ms is not None:
            v["timeout_s"] = f"{ms / 1000:g}"
    elif name == "ray_note":
        tp_s, gpus_s = v.get("tp_requested"), v.get("ray_gpus")
        pg_gpus, pg_s = _num(v, "ray_pg_gpus"), v.get("pg_timeout_s")
        if pg_gpus is not None and pg_s:
            v["ray_gpus_note"] = f": {pg_gpus:g} GPUs were not free within {pg_s} s"
        else:
            v["ray_gpus_note"] = f": TP {tp_s} needs {tp_s} GPUs, Ray has {gpus_s}" if tp_s and gpus_s else ""
    elif name == "visible_note":
        value = v.get("visible_min_value")
        v["visible_value_note"] = f" (CUDA_VISIBLE_DEVICES={value})" if value else ""
    elif name == "argument_hint":
        v["rejected"], v["argument_hint"] = _argument_hint(v)
    elif name == "driver_found_cuda":
        found = _num(v, "driver_found")
        v["driver_detail"] = (
            f" (this driver supports CUDA {int(found) // 1000}.{int(found) % 1000 // 10})" if found else ""
        )
        need = v.get("cuda_needed")
        drivers = {"11.8": "R520", "12.0": "R525", "12.1": "R530", "12.2": "R535", "12.4": "R550", "12.6": "R560"}
        drivers |= {"12.8": "R570", "12.9": "R575", "13.0": "R580"}
        v["cuda_needed_note"] = (
            f" (CUDA {need} needs {drivers[need]} or newer)" if need in drivers else (f" (CUDA {need})" if need else "")
        )


def fill(template: str | None, fallback: str | None, values: Mapping[str, str]) -> str:
    for t in (template, fallback):
        if t is None:
            continue
        if template_fields(t) <= set(values):
            try:
                return t.format_map(values)
            except (KeyError, ValueError, IndexError):
                continue
    base = template or fallback or ""
    return base.format_map(_Missing(values))


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


# ---------------------------------------------------------------------------------------------- plan command

_ALIASES: Mapping[str, tuple[str, ...]] = {
    "--max-model-len": ("--max-model-len", "--context"),
    "--tensor-parallel-size": ("--tensor-parallel-size", "-tp", "--tp"),
}


def plan_command(profile: Profile, args: Sequence[str]) -> str:
    """The ``qwendeploy plan`` command that rewrites ``profile`` with ``args`` changed (flags replaced)."""
    base: list[str] = []
    if profile.generated_by:
        try:
            base = shlex.split(profile.generated_by)
        except ValueError:
            base = []
    if len(base) < 3 or base[:2] != ["qwendeploy", "plan"]:
        base = ["qwendeploy", "plan", profile.model.id]
        if profile.placement.gpus:
            base += ["--gpus", ",".join(profile.placement.gpus)]
    new_flags = {a for a in args if a.startswith("-")}
    drop: set[str] = set()
    for flag in new_flags:
        drop.update(_ALIASES.get(flag, (flag,)))
    out = drop_flags(base, drop) + list(args)
    if any(t in ("-o", "--output") or t.startswith("--output=") for t in out) and "--force" not in out:
        out.append("--force")
    return shlex.join(out)


_REQUEST_PARAMETERS = frozenset({"--temperature", "--top-p", "--top-k", "--max-tokens", "--presence-penalty"})
"""Sampling parameters people pass to the server: in vLLM they belong to each request."""


def _argument_hint(v: Mapping[str, str]) -> tuple[str, str]:
    """What vLLM's argument parser rejected (``rejected``, quoted for the summary) and what to do about it
    (``argument_hint``, one sentence for the fix), from an "unrecognized arguments" or "invalid choice" line."""
    bad, flag, value = v.get("bad_args", "").strip(), v.get("bad_flag", "").strip(), v.get("bad_value", "").strip()
    if flag:
        return f" ({flag}: invalid value {value})", f"Give {flag} one of the values the error lists."
    if not bad:
        return "", "Compare the command with `vllm serve --help` of the release that runs (`vllm --version`)."
    rejected = f' ("{bad[:120]}" unrecognized)'
    first = bad.split()[0]
    if first in ("serve", "vllm"):
        return rejected, (
            "`serve …` reached a program that already is `vllm serve`: the vllm/vllm-openai image's entrypoint is "
            "`vllm serve`, so give the image only the model and the flags (drop `vllm serve` after the image name)."
        )
    if not first.startswith("-"):
        return rejected, (
            f"{first} was given where the program expects flags: an image whose entrypoint is the API server takes "
            f"the model as --model {first}; `vllm serve` takes it as its first argument."
        )
    name = first.split("=", 1)[0]
    name = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
    if name in REMOVED_FLAGS:
        instead = REMOVED_FLAGS[name].serve
        return rejected, f"{name} was removed from vLLM: {f'use {instead}' if instead else 'drop it'}."
    if name in _REQUEST_PARAMETERS:
        return rejected, (
            f"{name} is a request parameter, not a server flag: send it with each request, or set the server's "
            f"defaults with --override-generation-config (JSON)."
        )
    return rejected, (
        f"{name} is not a flag of the vLLM that runs: it is newer than this release or was removed. Check it "
        f"against `vllm serve --help` of that release (`vllm --version`), or use an image tag that has it."
    )
