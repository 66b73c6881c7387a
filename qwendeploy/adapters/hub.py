"""Resolve a MODEL argument to a ModelSpec: the built-in catalog, a local directory, or the Hugging Face Hub.

Only config.json and safetensors *headers* are ever read (8-byte little-endian length + JSON header); never
weights. huggingface_hub is imported inside the functions that need it, so ``plan`` with a catalog model or a
local directory does not import it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwendeploy.core.models import ModelSpec, catalog, find_model, spec_from_hf_config, suggest_models
from qwendeploy.errors import BadInput, UnknownModel

# A safetensors header is small (a few MB even for 1000s of tensors); refuse anything absurd instead of
# allocating it.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype names → bytes per element
DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "on", "yes", "true"}


# ---------------------------------------------------------------------------------------------------------
# safetensors headers
# ---------------------------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (tensor name → dtype, shape, data_offsets), without the weights."""
    from qwendeploy.adapters.safe_read import open_regular

    try:
        fd, size = open_regular(path, "Weights file")  # never a FIFO or a device: a read could block or never end
        with os.fdopen(fd, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise BadInput(f"{path} is not a safetensors file (shorter than 8 bytes).")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES or length > size - 8:
                raise BadInput(f"{path} is not a safetensors file (header length {length} bytes).")
            raw = f.read(length)
    except OSError as e:
        raise BadInput(f"Cannot read {path}: {e.strerror or e}.") from e
    if len(raw) != length:
        raise BadInput(f"{path} is truncated: its safetensors header is incomplete.")
    try:
        header = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"{path} has a safetensors header that is not valid JSON.") from e
    if not isinstance(header, dict):
        raise BadInput(f"{path} has a safetensors header that is not a JSON object.")
    return header


def bytes_by_dtype(headers: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Sum tensor bytes per safetensors dtype over one or more headers (``data_offsets`` end − start)."""
    totals: dict[str, int] = {}
    for header in headers:
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            try:
                start, end = info["data_offsets"]
                dtype = str(info["dtype"])
                size = int(end) - int(start)
            except (KeyError, TypeError, ValueError, OverflowError):
                raise BadInput(
                    f"A safetensors header describes the tensor {str(name)[:80]!r} without valid dtype and "
                    "data_offsets."
                ) from None
            if size < 0 or size > 1 << 50:
                raise BadInput(f"A safetensors header gives the tensor {str(name)[:80]!r} an impossible size.")
            totals[dtype] = totals.get(dtype, 0) + size
    return dict(sorted(totals.items()))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _safetensors_files(folder: Path) -> list[Path] | None:
    """The checkpoint's .safetensors files (from the index when there is one); None if any listed one is missing."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = _index_files(index)
        files = [folder / name for name in names]
        return files if all(f.is_file() for f in files) else None
    files = sorted(folder.glob("*.safetensors"))
    return files or None


def _index_files(index: Path) -> list[str]:
    """The shard file names a model.safetensors.index.json lists: its ``weight_map`` must map tensor names to
    plain file names in the same folder (no path, so an index cannot point outside its checkpoint)."""
    from qwendeploy.adapters.safe_read import read_json_file
    from qwendeploy.core.limits import MAX_INDEX_BYTES

    bad = BadInput(f"{index} is not a valid safetensors index (needs a 'weight_map' of tensor → shard file name).")
    try:
        doc = read_json_file(index, max_bytes=MAX_INDEX_BYTES, what=str(index))
    except OSError as e:
        raise BadInput(f"Cannot read {index}: {e.strerror or e}.") from e
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise bad
    names = sorted(set(weight_map.values()))
    for name in names:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise BadInput(f"{index} lists the shard {name!r}, which is not a file name in the checkpoint folder.")
    return names


def _with_weights(spec: ModelSpec, by_dtype: dict[str, int]) -> ModelSpec:
    if not by_dtype:
        return spec
    return replace(spec, weight_bytes=sum(by_dtype.values()), weight_bytes_by_dtype=by_dtype)


# ---------------------------------------------------------------------------------------------------------
# matching a config against the catalog
# ---------------------------------------------------------------------------------------------------------


def _shape_key(spec: ModelSpec) -> tuple[Any, ...]:
    q = spec.quantization
    return (
        spec.architecture,
        spec.num_hidden_layers,
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_attention_heads,
        spec.num_key_value_heads,
        spec.head_dim,
        spec.vocab_size,
        spec.tie_word_embeddings,
        spec.max_position_embeddings,
        spec.moe,
        (q.method, q.bits) if q else None,
    )


def _adopt_catalog_facts(spec: ModelSpec) -> ModelSpec:
    """Keep the published parameter count and YaRN factor when the config is shaped like a catalog model.

    Several catalog entries can share a shape (Qwen2.5-7B-Instruct and Qwen2.5-Coder-7B-Instruct); a fact is
    adopted only where all of them agree on it.
    """
    key = _shape_key(spec)
    matches = [c for c in catalog() if _shape_key(c) == key]
    if not matches:
        return spec
    updates: dict[str, Any] = {}
    if spec.published_params is None and len({c.published_params for c in matches}) == 1:
        updates["published_params"] = matches[0].published_params
    yarn_facts = {(c.yarn_factor, c.yarn_original_max_position_embeddings) for c in matches}
    if spec.yarn_factor is None and spec.rope_scaling is None and len(yarn_facts) == 1:
        updates["yarn_factor"] = matches[0].yarn_factor
        updates["yarn_original_max_position_embeddings"] = matches[0].yarn_original_max_position_embeddings
    return replace(spec, **updates) if updates else spec


def _read_config(path: Path, label: str) -> dict[str, Any]:
    """config.json, bounded (a regular file under ``MAX_CONFIG_BYTES``, depth, no NaN/Infinity, counts within
    ``CONFIG_INT_BOUNDS``; see ``safe_read`` and ``limits``)."""
    from qwendeploy.adapters.safe_read import read_json_file
    from qwendeploy.core.limits import MAX_CONFIG_BYTES, check_config_numbers

    try:
        data = read_json_file(path, max_bytes=MAX_CONFIG_BYTES, what=f"config.json of {label}")
    except OSError as e:
        raise UnknownModel(f"Cannot read {path}: {e.strerror or e}.") from e
    if not isinstance(data, dict):
        raise BadInput(f"config.json of {label} is not a JSON object.")
    check_config_numbers(data, label)
    return data


# ---------------------------------------------------------------------------------------------------------
# local directory
# ---------------------------------------------------------------------------------------------------------


def load_local_dir(folder: Path) -> ModelSpec:
    """A model from a directory holding config.json (and optionally safetensors files and their index)."""
    folder = folder.expanduser().resolve()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UnknownModel(
            f"{folder} is a directory but holds no config.json.",
            hint="Point MODEL at a Hugging Face model folder (config.json next to the *.safetensors files).",
        )
    config = _read_config(config_path, str(folder))
    spec = spec_from_hf_config(config, id=str(folder), source=f"local:{folder}")
    spec = _adopt_catalog_facts(spec)
    spec = _with_pooling_task(spec, folder / "modules.json")
    files = _safetensors_files(folder)
    if files:
        spec = _with_weights(spec, bytes_by_dtype(read_safetensors_header(f) for f in files))
    return spec


# ---------------------------------------------------------------------------------------------------------
# Hugging Face Hub
# ---------------------------------------------------------------------------------------------------------


def _with_pooling_task(spec: ModelSpec, modules_json: Path | None) -> ModelSpec:
    """An embedding model by its sentence-transformers ``modules.json`` (a Pooling module): vLLM's pooling runner
    detects it the same way, whatever ``architectures`` says (Qwen3-Embedding says Qwen3ForCausalLM)."""
    if spec.task != "generate" or modules_json is None or not modules_json.is_file():
        return spec
    try:
        text = modules_json.read_text(encoding="utf-8", errors="replace")[:65536]
    except OSError:
        return spec
    return replace(spec, task="embed") if "Pooling" in text else spec


def _hub_modules_json(repo_id: str, revision: str | None, cache: Path, *, online: bool) -> Path | None:
    """modules.json of a Hub repo from the cache (or the Hub when online); None when it has none."""
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        if not local_only and not (online and hub_reachable()):
            return None
        try:
            return Path(
                hf_hub_download(
                    repo_id, "modules.json", revision=revision, cache_dir=cache, local_files_only=local_only
                )
            )
        except Exception:
            continue
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The hub cache, resolved from ``env`` (default: the environment now; huggingface_hub fixes its default at
    import time). serve's preflight asks the same question for the server's environment."""
    env = os.environ if env is None else env
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _not_found(ref: str, why: str, hint: str | None = None) -> UnknownModel:
    close = suggest_models(ref)
    tip = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownModel(f"{why}{tip}", hint=hint)


def _hub_error_kind(exc: BaseException) -> str:
    """Classify a huggingface_hub error by class name (stable across 0.2x–1.x where the modules moved)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for kind in (
        "GatedRepoError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        # LocalEntryNotFoundError subclasses EntryNotFoundError: test it first. Online it means "the Hub could not
        # be reached and nothing is cached", not "the repo has no such file".
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "EntryNotFoundError",
    ):
        if kind in names:
            return kind
    return "other"


def load_hub(repo_id: str, *, revision: str | None = None) -> ModelSpec:
    """config.json and safetensors headers of a Hub repo: from the local cache first, then the Hub if online."""
    from huggingface_hub import hf_hub_download

    cache = hub_cache_dir()
    offline = _offline()
    config_file: str | None = None
    try:
        config_file = str(
            hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache, local_files_only=True)
        )
    except Exception as e:
        if _hub_error_kind(e) not in ("LocalEntryNotFoundError", "EntryNotFoundError", "OfflineModeIsEnabled"):
            raise _hub_failure(repo_id, revision, e) from e
    reachable: bool | None = None
    if config_file is None and not offline:
        reachable = hub_reachable()
        if not reachable:
            raise _not_found(
                repo_id,
                f"{repo_id} is not in the local Hugging Face cache ({cache}) and the Hub "
                f"({_hub_host()[0]}) cannot be reached (no answer within {PROBE_TIMEOUT_S:g} s).",
                hint="Check the network, set HF_HUB_OFFLINE=1 to use only the local cache, or pass a local model "
                "directory.",
            )
    if config_file is None:
        if offline:
            raise _not_found(
                repo_id,
                f"{repo_id} is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                "downloading its config.json.",
                hint="Unset HF_HUB_OFFLINE to fetch config.json (a few KB; never the weights), or pass a local "
                "model directory.",
            )
        try:
            config_file = str(hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache))
        except Exception as e:
            raise _hub_failure(repo_id, revision, e) from e

    config = _read_config(Path(config_file), repo_id)
    spec = spec_from_hf_config(config, id=repo_id, source=f"hub:{repo_id}")
    spec = _adopt_catalog_facts(spec)
    spec = _with_pooling_task(spec, _hub_modules_json(repo_id, revision, cache, online=not offline))
    if reachable is None and not offline:
        reachable = hub_reachable()
    by_dtype = {} if offline or not reachable else _remote_safetensors_bytes(repo_id, revision)
    if not by_dtype:
        files = _safetensors_files(Path(config_file).parent)
        if files:
            by_dtype = bytes_by_dtype(read_safetensors_header(f) for f in files)
    return _with_weights(spec, by_dtype)


PROBE_TIMEOUT_S = 0.75
"""How long the Hub may take to accept a TCP connection before it counts as unreachable."""


def _hub_host() -> tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"
    parsed = urllib.parse.urlsplit(endpoint)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    return parsed.hostname or "huggingface.co", port


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub's host accepts a TCP connection within ``timeout`` seconds (name lookup included).

    huggingface_hub retries an unreachable Hub for tens of seconds before it gives up; this probe lets a model
    that is not cached fail in under two seconds offline.
    """
    host, port = _hub_host()
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _remote_safetensors_bytes(repo_id: str, revision: str | None) -> dict[str, int]:
    """Bytes per dtype from the Hub's safetensors-metadata API (HTTP range reads of the headers only)."""
    from huggingface_hub import get_safetensors_metadata

    try:
        meta = get_safetensors_metadata(repo_id, revision=revision)
    except Exception:
        # No safetensors (a .bin checkpoint) or the API is unreachable: the estimate falls back to counting
        # parameters from the config, which is what it does for catalog models too.
        return {}
    totals: dict[str, int] = {}
    for file_meta in meta.files_metadata.values():
        for info in file_meta.tensors.values():
            start, end = info.data_offsets
            totals[info.dtype] = totals.get(info.dtype, 0) + int(end) - int(start)
    return dict(sorted(totals.items()))


def _hub_failure(repo_id: str, revision: str | None, exc: BaseException) -> UnknownModel:
    kind = _hub_error_kind(exc)
    if kind == "GatedRepoError":
        return UnknownModel(
            f"{repo_id} is gated on the Hugging Face Hub: accept its licence on the model page first.",
            hint="Then log in (`hf auth login`) or set HF_TOKEN.",
        )
    if kind == "RepositoryNotFoundError":
        return _not_found(
            repo_id,
            f"{repo_id} was not found on the Hugging Face Hub (or it is private).",
            hint="Check the spelling, or set HF_TOKEN for a private repo.",
        )
    if kind == "RevisionNotFoundError":
        return UnknownModel(f"{repo_id} has no revision {revision!r} on the Hugging Face Hub.")
    if kind == "EntryNotFoundError":
        return UnknownModel(f"{repo_id} has no config.json on the Hugging Face Hub; it is not a transformers model.")
    return _not_found(
        repo_id,
        f"Could not fetch config.json of {repo_id} from the Hugging Face Hub: {str(exc).rstrip('.')}.",
        hint="Check the network, or set HF_HUB_OFFLINE=1 to use only the local cache, or pass a local directory.",
    )


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------


def load_model(ref: str, *, revision: str | None = None) -> ModelSpec:
    """Resolve ``ref``: (1) the built-in catalog, (2) a local directory with config.json, (3) a Hub repo id.

    Raises:
        UnknownModel: nothing matches (close catalog names suggested), or the Hub cannot be reached and the
            model is not cached (the message says which, and mentions HF_HUB_OFFLINE).
        BadInput: the config.json found is missing a field the estimator needs.
    """
    ref = ref.strip()
    if not ref:
        raise UnknownModel("No model given.", hint="For example: qwendeploy plan Qwen/Qwen2.5-7B-Instruct")
    spec = find_model(ref)
    if spec is not None:
        return spec
    path = Path(ref).expanduser()
    if path.is_dir():
        return load_local_dir(path)
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if path.exists() and not path.is_dir():
        raise UnknownModel(f"{ref} is a file; MODEL must be a repo id, a catalog alias or a model directory.")
    if looks_like_path or not _REPO_ID_RE.match(ref):
        raise _not_found(
            ref,
            f"Unknown model {ref!r}: not in the built-in catalog, not a directory, not a Hugging Face repo id.",
            hint="Use a repo id (Qwen/Qwen2.5-7B-Instruct), an alias (qwen2.5-7b-instruct) or a local directory.",
        )
    typo = _near_catalog_typo(ref) if revision is None else None
    if typo is not None:
        # One character off a catalog id is almost always a typo: say so now instead of spending the Hub's
        # retries (tens of seconds offline) on a repo that does not exist.
        raise UnknownModel(
            f"Unknown model {ref!r}. Did you mean {typo}?",
            hint="If you really mean that Hub repo, pass --revision main to look it up on the Hub.",
        )
    return load_hub(ref, revision=revision)


def _near_catalog_typo(ref: str) -> str | None:
    """The catalog id one letter (added, dropped or changed) away from ``ref``, else None.

    One edit of a letter, not a similarity ratio and never a digit: ``Qwen/Qwen2-7B-Instruct`` and
    ``Qwen/Qwen1.5-7B`` are real repos one or two characters from catalog ids.
    """
    key = ref.lower()
    for model in catalog():
        if _one_edit_apart(key, model.id.lower()):
            return model.id
    return None


def _one_edit_apart(a: str, b: str) -> bool:
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((k for k in range(len(a)) if a[k] != b[k]), len(a))
    changed = b[i] + (a[i] if len(a) == len(b) else "")
    return changed.isalpha() and a[i + (len(a) == len(b)) :] == b[i + 1 :]
