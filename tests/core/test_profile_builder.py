"""profile_from_plan(checked=False) — the profile plan builds only to show its launch command, put together without
pydantic's validation — is the validated profile, field for field and type for type, and validates."""

from __future__ import annotations

from typing import Any

import pytest

from qwendeploy.core.gpus import parse_inventory
from qwendeploy.core.models import catalog, find_model
from qwendeploy.core.planner import Plan, PlanRequest, plan
from qwendeploy.core.profile import Profile
from qwendeploy.core.profile_builder import profile_from_plan


def _plan(model: str, gpus: str, nodes: int = 1, **request: Any) -> Plan:
    spec = find_model(model)
    assert spec is not None
    return plan(PlanRequest(spec=spec, machine=parse_inventory(gpus, nodes), **request))


def _same(p: Plan, **options: Any) -> None:
    checked = profile_from_plan(p, **options)
    constructed = profile_from_plan(p, **options, checked=False)
    # repr shows every field of every section with its type's spelling (1 against 1.0, a list against a tuple)
    assert repr(constructed) == repr(checked)
    assert constructed == checked
    assert Profile.model_validate(constructed.model_dump()) == checked


CASES = {
    "issue-15": ("Qwen/Qwen2.5-72B-Instruct", "8xH100-80GB", 2, {"max_model_len": 131072}),
    "seed-no-p2p": ("Qwen/Qwen2.5-7B-Instruct", "4xRTX4090D", 1, {"max_model_len": 131072}),
    "replicas": ("Qwen/Qwen2.5-7B-Instruct", "4xA100-80GB", 1, {"dp": 2}),
    "replicas-on-nodes": ("Qwen/Qwen2.5-7B-Instruct", "1xH100-80GB", 3, {}),
    "fp8-kv-fixed": (
        "Qwen/Qwen2.5-14B-Instruct",
        "2xL40S",
        1,
        {"kv_cache_dtype": "fp8", "max_num_batched_tokens": 64, "gpu_memory_utilization": 0.85},
    ),
    "eager-no-custom-ar": (
        "Qwen/Qwen3-30B-A3B",
        "2xA100-80GB",
        1,
        {"enforce_eager": True, "disable_custom_all_reduce": True, "dtype": "float16"},
    ),
    "quantized": ("Qwen/Qwen2.5-72B-Instruct-AWQ", "4xL4", 1, {"quantization": "awq"}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_the_constructed_profile_is_the_validated_one(case: tuple[str, str, int, dict[str, Any]]) -> None:
    model, gpus, nodes, request = case
    p = _plan(model, gpus, nodes, **request)
    assert p.fits
    _same(p)
    options = {"name": "my-qwen", "host": "0.0.0.0", "port": 9000, "generated_by": "qwendeploy plan x"}
    _same(p, **options, revision="main", served_model_name="served", head_address="10.0.0.1", socket_ifname="eth0")


def test_every_catalog_model_builds_the_same_profile_both_ways() -> None:
    fitted = 0
    for spec in catalog():
        p = plan(PlanRequest(spec=spec, machine=parse_inventory("8xH100-80GB"), max_model_len=8192))
        if p.fits:
            _same(p)
            fitted += 1
    assert fitted >= 90  # every model but the largest (Qwen3-Coder-480B in 16 bits) fits 8 H100s at 8K tokens
