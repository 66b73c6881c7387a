"""``qwendeploy/data/gpus.yaml`` as pydantic models: what an entry may say, checked when the catalog is read.

Imported by :func:`qwendeploy.core.gpus.parse_gpu_catalog` only, not with ``core.gpus``: code that finds a card in
a catalog already read (or remembered between runs, :mod:`qwendeploy.core.catalog_cache`) does not build this
schema (~10 ms of every ``plan``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwendeploy.core.units import MiB


class GpuEntry(BaseModel):
    """One card as ``gpus.yaml`` writes it (the FAQ at the top of the file explains the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
    name: str
    nvml_name: str
    aliases: tuple[str, ...] = ()
    memory_type: str
    nvml_total_mib: int = Field(gt=0)
    total_bytes: int = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    tensor_tflops: float | None = Field(default=None, gt=0)
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    bf16: bool
    fp8: bool
    interconnect: Literal["nvlink", "pcie"]
    nvlink_gbps: float | None = None
    nvlink_links: int = Field(default=0, ge=0)
    pcie_gen: int = Field(ge=1)
    p2p: bool
    total_basis: str = ""
    confidence: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _total_below_nvml(self) -> GpuEntry:
        if self.total_bytes > self.nvml_total_mib * MiB:
            raise ValueError("total_bytes (CUDA's total) cannot exceed nvml_total_mib (NVML's)")
        return self


class GpuCatalogFile(BaseModel):
    """``qwendeploy/data/gpus.yaml``: the cards, and names that could mean several of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    ambiguous: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    gpus: tuple[GpuEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids(self) -> GpuCatalogFile:
        ids = [g.id for g in self.gpus]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate ids {dupes}")
        unknown = sorted({i for v in self.ambiguous.values() for i in v} - set(ids))
        if unknown:
            raise ValueError(f"ambiguous names unknown ids {unknown}")
        return self
