"""``qwendeploy models`` / ``gpus``: every catalog entry listed, the planner's own verdict per card, NVML's view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.fake_nvml import FakeNvml
from typer.testing import CliRunner

from qwendeploy.cli import app, wiring
from qwendeploy.core.gpus import gpu_catalog, parse_inventory
from qwendeploy.core.listing import COMMON_CARDS, family_of
from qwendeploy.core.models import catalog, find_model
from qwendeploy.core.planner import PlanRequest, plan

MACHINES = Path(__file__).parent.parent / "fixtures" / "machines"
runner = CliRunner()


def _models() -> dict[str, dict]:  # type: ignore[type-arg]
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    return {m["id"]: m for m in json.loads(r.stdout)["models"]}


def test_models_json_lists_every_catalog_entry() -> None:
    got = _models()
    assert set(got) == {s.id for s in catalog()}
    q = got["Qwen/Qwen2.5-7B-Instruct"]
    assert q["family"] == "Qwen2.5"
    assert q["native_context"] == 32768 and q["longest_context"] == 131072
    assert "Qwen/Qwen2.5-7B-Instruct-AWQ" in q["quantized_variants"]
    assert got["Qwen/Qwen2.5-7B-Instruct-AWQ"]["base_model"] == "Qwen/Qwen2.5-7B-Instruct"
    moe = got["Qwen/Qwen3-30B-A3B"]
    assert moe["active_params"] < moe["params"] / 5


def test_fits_column_is_the_planners_verdict() -> None:
    got = _models()
    for model_id in ("Qwen/Qwen3-8B", "Qwen/Qwen2.5-32B-Instruct", "Qwen/Qwen3-235B-A22B"):
        spec = find_model(model_id)
        assert spec is not None
        want = [
            card
            for card in COMMON_CARDS
            if plan(PlanRequest(spec=spec, machine=parse_inventory(f"1x{card}"), tp=1, pp=1, dp=1), suggest=False).fits
        ]
        assert got[model_id]["fits_one_card_at_native_context"] == want
    assert got["Qwen/Qwen3-235B-A22B"]["fits_one_card_at_native_context"] == []
    assert "L4" in got["Qwen/Qwen2.5-0.5B-Instruct"]["fits_one_card_at_native_context"]


def test_models_table_shows_base_models_and_all_shows_checkpoints() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    assert "Qwen3-235B-A22B " in r.stdout and "Qwen2.5-7B-Instruct-AWQ" not in r.stdout
    r = runner.invoke(app, ["models", "--all"])
    assert "Qwen2.5-7B-Instruct-AWQ" in r.stdout


@pytest.mark.parametrize(
    ("model_id", "family"),
    [("Qwen/QwQ-32B", "QwQ"), ("Qwen/Qwen2.5-Coder-7B", "Qwen2.5-Coder"), ("Qwen/Qwen3-8B-FP8", "Qwen3")],
)
def test_family(model_id: str, family: str) -> None:
    spec = find_model(model_id)
    assert spec is not None and family_of(spec) == family


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("Qwen/Qwen3-Next-80B-A3B-Instruct", "Qwen3-Next"),
        ("Qwen/Qwen3-VL-8B-Instruct", "Qwen3-VL"),
        ("Qwen/Qwen3-Embedding-0.6B", "Qwen3-Embedding"),
    ],
)
def test_family_of_new_kinds_from_the_name(model_id: str, family: str) -> None:
    """Entries another branch adds to the catalog get a family from their repo name (or their own field)."""
    from dataclasses import replace

    base = find_model("Qwen/Qwen3-8B")
    assert base is not None
    assert family_of(replace(base, id=model_id)) == family


def test_gpus_json_without_nvml_lists_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> object:
        from qwendeploy.errors import ProbeError

        raise ProbeError("no NVML here")

    monkeypatch.setattr(wiring, "probe_machine", lambda selection="auto": no_driver())
    r = runner.invoke(app, ["gpus", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [g["id"] for g in d["catalog"]] == [g.id for g in gpu_catalog()]
    assert "H100" in r.stdout and "4090" in r.stdout
    assert d["local"] == {"gpus": [], "unavailable": "no NVML here"}
    r = runner.invoke(app, ["gpus"])
    assert r.exit_code == 0 and "no GPU seen by NVML (no NVML here)" in r.stdout


def test_gpus_shows_what_nvml_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml.load(MACHINES / "4xrtx4090d-pcie.yaml")
    monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
    monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
    r = runner.invoke(app, ["gpus", "--json"])
    assert r.exit_code == 0, r.output
    local = json.loads(r.stdout)["local"]
    assert [g["index"] for g in local["gpus"]] == [0, 1, 2, 3]
    assert {g["catalog_id"] for g in local["gpus"]} == {"rtx-4090d"}
    r = runner.invoke(app, ["gpus"])
    assert "This machine (NVML" in r.stdout and "rtx-4090d" in r.stdout


def test_help_shows_switches_without_a_value() -> None:
    r = runner.invoke(app, ["plan", "--help"], terminal_width=100)
    line = next(x for x in r.stdout.splitlines() if "--json" in x)
    assert "<bool>" not in line and "<bool>" not in r.stdout
    r = runner.invoke(app, ["plan", "Qwen/Qwen2.5-0.5B-Instruct", "--gpus", "1xL4", "--json", "true"])
    assert r.exit_code == 2  # a switch takes no value: 'true' is an extra argument
