"""Every bound qwendeploy puts on what it reads, in one place (docs/limits.md lists them with the reasons).

Input is checked at the edge: a file is a regular file below a size cap, parsed with a bounded depth and a
bounded number of values (YAML aliases are counted once per use, so an alias bomb is refused before anything
expands it), numbers are finite and inside the bounds below, and strings hold no NUL. Anything outside is one
``BadInput`` naming the field (exit 2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from qwendeploy.errors import BadInput

MAX_PROFILE_BYTES = 1 << 20
"""A profile is a few KB; 1 MiB leaves room for comments and long extra_args."""
MAX_CONFIG_BYTES = 16 << 20
"""config.json (a few KB; multimodal configs with long token lists reach a few hundred KB)."""
MAX_INDEX_BYTES = 64 << 20
"""model.safetensors.index.json: one entry per tensor (tens of thousands of lines for the largest models)."""
MAX_DEPTH = 32
"""Nesting of mappings and lists in a profile or a config.json (real ones nest 3 or 4 deep)."""
MAX_NODES = 200_000
"""Values (scalars, lists, mappings) in one parsed document, an alias counted at every use."""

MAX_MODEL_LEN = 1 << 24
"""Longest context a profile may ask for: 16,777,216 tokens (the largest Qwen window is 1,010,000)."""
MAX_NODES_CLUSTER = 64
"""Machines a placement may span (``placement.nodes``, ``plan --nodes``): 512 GPUs of 8-GPU nodes. The planner's
search grows with it (256 nodes take ~3 s)."""
MAX_TOTAL_GPUS = 512
"""GPUs a plan may span in all (nodes × GPUs per node): 64 nodes of 8, or 8 nodes of 64. The search over
4,096 GPUs took ~50 s."""
MAX_CONCURRENCY = 1 << 20
"""``plan --concurrency``: full-length requests per replica."""
MAX_PARALLEL = 4096
"""Tensor, pipeline or data parallel size, and GPUs per node."""
MAX_SECONDS = 7 * 24 * 3600.0
"""Any duration in a profile (ready timeout, health interval, backoff, stable-after): one week."""
MAX_GRACE_S = 3600.0
"""shutdown_grace_s: SIGTERM to SIGKILL (an hour; vLLM stops in seconds)."""
MAX_RESTARTS = 10_000
MAX_COUNT = 1 << 31
"""Any other count (max_num_seqs, max_num_batched_tokens, block_size, health_failures)."""
MAX_STRING = 4096
"""Characters in one profile string (a model path, an extra argument, an env value)."""
MAX_LIST = 1024
"""Entries in a profile list (extra_args, gpus) or mapping (env, hf_overrides)."""
MAX_NAME = 64
"""Characters in a profile name (it names log and lock files)."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A profile name: a file stem (letters, digits, ``.``, ``_``, ``-``; no leading dot or dash, no ``/``)."""
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""POSIX environment variable name."""
HOST_RE = re.compile(r"[A-Za-z0-9_.:%\[\]-]+")
"""A bind address: an IPv4/IPv6 address or a host name (no spaces, quotes or shell characters)."""
IFNAME_RE = re.compile(r"[\^=]?[A-Za-z0-9_.:@-]{1,15}(,[A-Za-z0-9_.:@-]{1,15}){0,15}")
"""NCCL_SOCKET_IFNAME syntax: interface names (15 characters each, Linux's limit), comma-separated, optionally
prefixed with ``^`` (exclude) or ``=`` (exact match)."""
GPU_ID_RE = re.compile(r"\d{1,4}|(GPU|MIG)-[A-Za-z0-9/_-]{1,120}")
"""placement.gpus entries: an index, or an NVML UUID (``GPU-…``, ``MIG-…``)."""

CONFIG_INT_BOUNDS: Mapping[str, int] = {
    "num_hidden_layers": 4096,
    "hidden_size": 1 << 20,
    "intermediate_size": 1 << 22,
    "moe_intermediate_size": 1 << 22,
    "shared_expert_intermediate_size": 1 << 22,
    "num_attention_heads": 1 << 14,
    "num_key_value_heads": 1 << 14,
    "head_dim": 1 << 14,
    "vocab_size": 1 << 26,
    "max_position_embeddings": 1 << 26,
    "num_experts": 1 << 16,
    "num_local_experts": 1 << 16,
    "num_experts_per_tok": 1 << 16,
    "max_window_layers": 4096,
    "sliding_window": 1 << 26,
}
"""Upper bounds of config.json counts (each far above any published model); larger is refused."""


def check_number(value: Any, where: str) -> None:
    """Refuse NaN and ±infinity (``where`` names the field)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{where}: {value!r} is not a finite number.")


def check_tree(data: Any, what: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Walk parsed YAML/JSON once, counting an alias at every use: bounded depth and size, finite numbers,
    no NUL in any string or key. Stops at the first problem (so it never walks more than ``max_nodes``).

    Raises:
        BadInput: naming the path of the offending value.
    """
    budget = [max_nodes]

    def walk(node: Any, path: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise BadInput(
                f"{what} holds more than {max_nodes:,} values (YAML aliases count at every use); refusing to "
                "expand it.",
                hint="A profile or config.json holds a few hundred values; this one is malformed or hostile.",
            )
        if depth > max_depth:
            raise BadInput(f"{what}: {path or '(top level)'} nests more than {max_depth} levels deep.")
        if isinstance(node, str):
            if "\x00" in node:
                raise BadInput(f"{what}: {path or '(top level)'} holds a NUL character.")
        elif isinstance(node, float):
            check_number(node, f"{what}: {path or '(top level)'}")
        elif isinstance(node, dict):
            for k, v in node.items():
                key = str(k)
                if "\x00" in key:
                    raise BadInput(f"{what}: a key under {path or '(top level)'} holds a NUL character.")
                walk(v, f"{path}.{_short(key)}" if path else _short(key), depth + 1)
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", depth + 1)

    walk(data, "", 0)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a value for an error message, cut to ``limit`` characters (never the whole document)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = limit
    r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 4
    r.maxlevel = 2
    return _short(r.repr(value), limit)


def check_config_numbers(config: Mapping[str, Any], label: str) -> None:
    """Counts in a config.json (and its ``text_config``) are integers inside ``CONFIG_INT_BOUNDS``.

    Raises:
        BadInput: naming the field and the bound.
    """
    sections: list[tuple[str, Any]] = [("", config)]
    text = config.get("text_config")
    if isinstance(text, Mapping):
        sections.append(("text_config.", text))
    for prefix, section in sections:
        for key, bound in CONFIG_INT_BOUNDS.items():
            v = section.get(key)
            if v is None or isinstance(v, bool) or not isinstance(v, int | float):
                continue  # missing or the wrong type: the config reader names it
            if not math.isfinite(v) or abs(v) > bound:
                raise BadInput(
                    f"config.json of {label}: {prefix}{key} is {shown(v)}, beyond the bound {bound:,} qwendeploy "
                    "accepts (see docs/limits.md)."
                )
