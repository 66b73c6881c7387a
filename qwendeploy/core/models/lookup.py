"""The built-in catalog (``qwendeploy/data/models.yaml``): its entries as ``ModelSpec`` values, found by id or alias.

Read on first use (``catalog()``), never at import: the YAML is parsed, its shape checked by ``entries``, each
entry's ``from`` parent merged in, and every config turned into a spec by ``spec_from_hf_config``.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from qwendeploy.core import catalog_cache, safe_yaml
from qwendeploy.core.models.catalog_format import ModelCatalogError, entry_aliases, name_part
from qwendeploy.core.models.hf_config import spec_from_hf_config
from qwendeploy.core.models.spec import ModelSpec
from qwendeploy.errors import BadInput


def parse_model_catalog(text: str) -> tuple[ModelSpec, ...]:
    """Every entry of catalog YAML text as a spec, in file order.

    Raises:
        ModelCatalogError: the text is not a valid catalog (the message names the entry and the field).
    """
    # The pydantic schema is built here, when the catalog is first read, not at import: code that only needs
    # ModelSpec (doctor, serve) does not pay for it.
    from qwendeploy.core.models.entries import parse_entries

    doc = parse_entries(safe_yaml.load(text))
    given_by_id: dict[str, dict[str, Any]] = {}
    specs: list[ModelSpec] = []
    for entry in doc.models:
        # Only the keys the entry writes (an explicit `yarn_factor: null` included) override its parent's.
        given = entry.model_dump(exclude_unset=True)
        if entry.from_ is not None:
            parent = given_by_id[entry.from_]  # an earlier entry: checked by ModelCatalogFile
            merged = {**parent, **given, "config": {**parent["config"], **(entry.config or {})}}
        else:
            merged = given
        given_by_id[entry.id] = merged
        try:
            spec = spec_from_hf_config(
                merged["config"], id=entry.id, source="catalog", published_params=merged.get("published_params")
            )
        except BadInput as e:
            raise ModelCatalogError(f"models.yaml entry {entry.id!r}: {e.message}") from None
        specs.append(
            replace(
                spec,
                yarn_factor=merged.get("yarn_factor", spec.yarn_factor),
                yarn_original_max_position_embeddings=merged.get("yarn_original_max_position_embeddings"),
                aliases=entry_aliases(entry.id, entry.aliases),
                base_model=(entry.from_ if "quantization_config" in merged["config"] else None),
                task=merged.get("task") or spec.task,
            )
        )
    return tuple(specs)


@dataclass(frozen=True)
class ModelCatalog:
    """The built catalog as :mod:`qwendeploy.core.catalog_cache` remembers it."""

    specs: tuple[ModelSpec, ...]


def _build(text: str) -> ModelCatalog:
    return ModelCatalog(parse_model_catalog(text))


@functools.cache
def catalog() -> tuple[ModelSpec, ...]:
    """Every model in the built-in catalog, in file order (loaded once)."""
    text = resources.files("qwendeploy").joinpath("data/models.yaml").read_text(encoding="utf-8")
    return catalog_cache.load("models", text, _build, ModelCatalog).specs


@functools.cache
def _index() -> dict[str, ModelSpec]:
    index: dict[str, ModelSpec] = {}
    for spec in catalog():
        index.setdefault(spec.id.lower(), spec)
        for alias in spec.aliases:
            index.setdefault(alias, spec)
    return index


def find_model(ref: str) -> ModelSpec | None:
    """A catalog model by Hugging Face repo id (any case) or alias (``qwen2.5-7b-instruct``); None if unknown."""
    key = ref.strip().lower()
    return _index().get(key)


def suggest_models(ref: str, n: int = 3) -> list[str]:
    """Up to ``n`` catalog repo ids that look like ``ref`` (for "did you mean" messages)."""
    key = ref.strip().lower()
    key_name = name_part(key)
    index = _index()
    names: dict[str, str] = {}
    for name, spec in index.items():
        names.setdefault(name_part(name), spec.id)
    found: list[str] = []
    # A name the reference starts (qwen3-vl-8b → qwen3-vl-8b-instruct) is the likeliest meaning: shortest first.
    if key_name:
        for name in sorted((m for m in names if m.startswith(key_name) and m != key_name), key=len):
            if names[name] not in found:
                found.append(names[name])
    for candidate in difflib.get_close_matches(key_name, list(names), n=n * 3, cutoff=0.6):
        if names[candidate] not in found:
            found.append(names[candidate])
    if len(found) < n and key_name:
        for name, model_id in names.items():
            if key_name in name and model_id not in found:
                found.append(model_id)
    return found[:n]
