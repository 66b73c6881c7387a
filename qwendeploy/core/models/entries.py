"""``qwendeploy/data/models.yaml`` as pydantic models: what an entry may say, checked before a spec is built.

The shape (keys, types, ``from`` naming an earlier entry, unique ids and aliases) is checked here; an entry's
``config`` is checked by ``hf_config.spec_from_hf_config`` exactly as a downloaded config.json is. A bad entry's
error names the entry and the field (``models.7 (id 'Qwen/Qwen3-8B').published_params: ...``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qwendeploy.core.families import Task
from qwendeploy.core.models.catalog_format import ModelCatalogError, entry_aliases, parse_count


class ModelEntry(BaseModel):
    """One model as models.yaml writes it (the FAQ at the top of the file explains the keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(pattern=r"^[^\s/]+/[^\s/]+$")
    from_: str | None = Field(default=None, alias="from")
    """An earlier entry this one inherits ``config``, ``published_params`` and ``yarn_factor`` from."""
    published_params: int | None = Field(default=None, gt=0)
    verified: str | None = None
    config: dict[str, Any] | None = None
    aliases: tuple[str, ...] = ()
    yarn_factor: float | None = Field(default=None, gt=1.0)
    yarn_original_max_position_embeddings: int | None = Field(default=None, gt=0)
    task: Task | None = None

    @field_validator("published_params", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return None if v is None else parse_count(v)

    @model_validator(mode="after")
    def _config_or_parent(self) -> ModelEntry:
        if self.from_ is None and self.config is None:
            raise ValueError("config is required (or 'from' an earlier entry to inherit it)")
        return self


class ModelCatalogFile(BaseModel):
    """models.yaml as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    models: tuple[ModelEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> ModelCatalogFile:
        seen: set[str] = set()
        earlier: set[str] = set()
        owner: dict[str, str] = {}
        for e in self.models:
            where = f"entry {e.id!r}"
            if e.id.lower() in seen:
                raise ValueError(f"{where}: id used twice (ids are matched in any case)")
            if e.from_ is not None and e.from_ not in earlier:
                raise ValueError(f"{where}.from: {e.from_!r} is not an earlier entry")
            seen.add(e.id.lower())
            earlier.add(e.id)
            for alias in entry_aliases(e.id, e.aliases):
                if owner.setdefault(alias, e.id) != e.id:
                    raise ValueError(f"{where}.aliases: {alias!r} already names {owner[alias]!r}")
        return self


def parse_entries(data: Any) -> ModelCatalogFile:
    """Validate loaded models.yaml data.

    Raises:
        ModelCatalogError: not a valid catalog; the message names the entry (index and id) and the field.
    """
    try:
        return ModelCatalogFile.model_validate(data)
    except ValidationError as e:
        raise ModelCatalogError(f"models.yaml is not a valid model catalog: {_name_entries(e, data)}") from None


def _name_entries(e: ValidationError, data: Any) -> str:
    """pydantic's report with ``models.7`` written as ``models.7 (id 'Qwen/Qwen3-8B')``."""
    out: list[str] = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        if len(loc) > 1 and loc[0] == "models" and loc[1].isdigit() and isinstance(data, dict):
            entries = data.get("models")
            raw = entries[int(loc[1])] if isinstance(entries, list) and int(loc[1]) < len(entries) else None
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                loc[1] += f" (id {raw['id']!r})"
        out.append(f"{'.'.join(loc) or 'top level'}: {err['msg']}")
    return "; ".join(out)
