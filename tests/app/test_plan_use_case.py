"""app.plan driven through its ports with plain stand-ins: a fake NVML behind the real NVML adapter, model configs
from the fixture folder, a fixed installed release and an in-memory profile store. No CLI, no Hub, no files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from qwendeploy.adapters import nvml
from qwendeploy.app.plan import PlanOptions, PlanPorts, command_line, run_plan, save_profile
from qwendeploy.core.hardware import Machine
from qwendeploy.core.models import ModelSpec, spec_from_hf_config
from qwendeploy.core.planner import PlanRequest, plan
from qwendeploy.core.profile import Profile
from qwendeploy.errors import BadInput, PlanInfeasible, ProfileExists, UnknownModel
from tests.fakes.fake_nvml import FakeNvml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOCAL = "Qwen3-Next-8-layers"
"""A model outside the catalog (tests/fixtures/hf_configs/Qwen3-Next-8-layers.json)."""


@dataclass
class NvmlMachine:
    """``GpuProbe`` over the real NVML adapter reading a fake NVML machine."""

    machine_file: str
    asked: list[str] = field(default_factory=list)

    def __call__(self, selection: str) -> Machine:
        self.asked.append(selection)
        return nvml.probe(FakeNvml.load(FIXTURES / "machines" / self.machine_file)).to_machine(selection)


@dataclass
class ConfigFolder:
    """``ModelSource`` over tests/fixtures/hf_configs: ``NAME`` is ``NAME.json`` parsed as a local model."""

    asked: list[tuple[str, str | None]] = field(default_factory=list)

    def __call__(self, ref: str, revision: str | None) -> ModelSpec:
        self.asked.append((ref, revision))
        path = FIXTURES / "hf_configs" / f"{ref}.json"
        if not path.is_file():
            raise UnknownModel(f"Unknown model {ref!r}.")
        return spec_from_hf_config(json.loads(path.read_text()), id=ref, source=f"local:{path.parent}")


@dataclass
class Installed:
    """``VllmVersionSource``: the release "installed" here (None: none)."""

    version: str | None
    calls: int = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.version


@dataclass
class MemoryStore:
    """``ProfileStore`` in memory: path → (profile, header)."""

    files: dict[Path, tuple[Profile, str]] = field(default_factory=dict)

    def check_target(self, path: Path, force: bool) -> None:
        if path in self.files and not force:
            raise ProfileExists(f"{path} already exists; not overwriting it.")

    def write(self, path: Path, profile: Profile, header: str, force: bool) -> Path:
        self.check_target(path, force)
        self.files[path] = (profile, header)
        return path


def ports(machine: str = "1xh100.yaml", installed: str | None = None) -> PlanPorts:
    return PlanPorts(
        gpus=NvmlMachine(machine), models=ConfigFolder(), vllm_version=Installed(installed), profiles=MemoryStore()
    )


def test_a_catalog_model_on_a_simulated_inventory_touches_no_port_but_the_release() -> None:
    p = ports(installed="0.26.0")
    result = run_plan(p, PlanOptions("Qwen/Qwen2.5-7B-Instruct", gpus="2xH100-80GB", context="32k"))
    assert result.fits and result.max_model_len == 32000
    assert result.request.spec.source == "catalog" and result.request.machine.simulated
    assert isinstance(p.gpus, NvmlMachine) and p.gpus.asked == []
    assert isinstance(p.models, ConfigFolder) and p.models.asked == []
    assert (result.request.vllm_version, result.request.vllm_version_source) == ("0.26.0", "installed")


def test_a_model_outside_the_catalog_comes_from_the_model_source_with_its_revision() -> None:
    p = ports()
    result = run_plan(p, PlanOptions(LOCAL, gpus="1xH100-80GB", revision="abc123", context="4096"))
    assert isinstance(p.models, ConfigFolder) and p.models.asked == [(LOCAL, "abc123")]
    assert result.request.spec.id == LOCAL and result.request.variants == ()
    with pytest.raises(UnknownModel):
        run_plan(p, PlanOptions("No-Such-Model", gpus="1xH100-80GB"))


def test_gpus_auto_probes_this_machine_and_repeats_it_per_node() -> None:
    p = ports("8xh100-nvlink.yaml")
    result = run_plan(p, PlanOptions("Qwen/Qwen2.5-72B-Instruct", gpus="auto", nodes=2, context="32768"))
    assert isinstance(p.gpus, NvmlMachine) and p.gpus.asked == ["auto"]
    machine = result.request.machine
    assert not machine.simulated and machine.nodes == 2 and len(machine.gpus) == 16
    assert {g.node for g in machine.gpus[8:]} == {1}


def test_an_asked_release_wins_over_the_installed_one_and_none_installed_means_the_newest() -> None:
    p = ports(installed="0.26.0")
    asked = run_plan(p, PlanOptions("Qwen/Qwen2.5-7B-Instruct", gpus="1xH100-80GB", vllm_version="0.15"))
    assert (asked.request.vllm_version, asked.request.vllm_version_source) == ("0.15", "asked")
    assert isinstance(p.vllm_version, Installed) and p.vllm_version.calls == 0
    from qwendeploy.core.releases import NEWEST_MODELLED

    bare = run_plan(ports(installed=None), PlanOptions("Qwen/Qwen2.5-7B-Instruct", gpus="1xH100-80GB"))
    assert (bare.request.vllm_version, bare.request.vllm_version_source) == (NEWEST_MODELLED, "")


def test_context_auto_plans_the_longest_context_that_fits_once() -> None:
    """Eight full-length requests of the native 32,768 tokens do not fit one 24 GB card: auto plans at the longest
    context the best shorter placement holds, which then fits, and says so."""
    p = ports()
    opts = PlanOptions("Qwen/Qwen2.5-7B-Instruct", gpus="1xRTX4090D", context="auto", concurrency=8)
    result = run_plan(p, opts)
    at_native = plan(replace(result.request, max_model_len=None))
    assert not at_native.fits
    longest = max(c.max_model_len_fit or 0 for c in at_native.candidates if c.status == "shorter")
    assert result.fits and result.max_model_len == longest < 32768
    assert result.notes[0].startswith(f"--context auto chose {longest:,} tokens: the longest that fits")
    # where the native window fits, auto keeps it
    roomy = run_plan(p, replace(opts, gpus="1xH100-80GB"))
    assert roomy.fits and roomy.max_model_len == 32768
    assert roomy.notes[0].startswith("--context auto chose 32,768 tokens: the model's native window")


def test_bad_options_fail_before_any_port_is_used() -> None:
    p = ports()
    for opts, words in (
        (PlanOptions(LOCAL, gpus="auto", port=0), "--port must be between 1 and 65535"),
        (PlanOptions(LOCAL, gpus="auto", context="lots"), "--max-model-len must be a number of tokens"),
        (PlanOptions(LOCAL, gpus="auto", name="bad name!"), "--name 'bad name!'"),
        (PlanOptions(LOCAL, gpus="auto", tp=10_000), "--tensor-parallel-size must be at most"),
    ):
        with pytest.raises(BadInput, match=words):
            run_plan(p, opts)
    assert isinstance(p.gpus, NvmlMachine) and p.gpus.asked == []
    assert isinstance(p.models, ConfigFolder) and p.models.asked == []


def test_an_existing_output_fails_before_planning_and_force_replaces_it() -> None:
    p = ports()
    out = Path("qwen.yaml")
    opts = PlanOptions(LOCAL, gpus="1xH100-80GB", context="4096", output=out, port=8100, name="q8")
    save_profile(p, opts, run_plan(p, opts))
    with pytest.raises(ProfileExists):
        run_plan(p, opts)
    assert isinstance(p.models, ConfigFolder) and p.models.asked == [(LOCAL, None)]  # the first run only
    save_profile(p, replace(opts, force=True), run_plan(p, replace(opts, force=True)))


def test_the_profile_written_repeats_the_command_and_the_options_that_go_into_it() -> None:
    p = ports()
    opts = PlanOptions(
        "Qwen/Qwen2.5-7B-Instruct",
        gpus="2xH100-80GB",
        context="128K",
        output=Path("out.yaml"),
        port=9000,
        host="0.0.0.0",
        dtype="bfloat16",
        enforce_eager=True,
    )
    result = run_plan(p, opts)
    path = save_profile(p, opts, result, summary="one line")
    assert isinstance(p.profiles, MemoryStore)
    profile, header = p.profiles.files[path]
    command = (
        "qwendeploy plan Qwen/Qwen2.5-7B-Instruct --gpus 2xH100-80GB --context 128K --dtype bfloat16 "
        "--enforce-eager --port 9000 --host 0.0.0.0 -o out.yaml"
    )
    assert command_line(opts) == command and header == f"Generated by: {command}\none line"
    assert profile.generated_by == command and profile.name == "qwen2.5-7b-instruct"
    assert (profile.server.host, profile.server.port, profile.model.max_model_len) == ("0.0.0.0", 9000, 131072)
    assert profile.engine.enforce_eager and profile.model.dtype == "bfloat16"


def test_a_plan_that_does_not_fit_is_returned_with_suggestions_and_writes_no_profile() -> None:
    p = ports()
    opts = PlanOptions("Qwen/Qwen2.5-72B-Instruct", gpus="1xRTX4090D", output=Path("x.yaml"))
    result = run_plan(p, opts)
    assert not result.fits and result.suggestions and result.why
    with pytest.raises(PlanInfeasible):
        save_profile(p, opts, result)
    assert isinstance(p.profiles, MemoryStore) and p.profiles.files == {}


def test_the_request_carries_the_options_the_planner_uses() -> None:
    opts = PlanOptions(
        "Qwen/Qwen2.5-72B-Instruct-AWQ",
        gpus="2xH100-80GB",
        network="ib-ndr",
        objective="latency",
        kv_cache_dtype="fp8",
        disable_custom_all_reduce=True,
    )
    req: PlanRequest = run_plan(ports(), opts).request
    assert (req.network, req.objective, req.kv_cache_dtype, req.disable_custom_all_reduce) == (
        "ib-ndr",
        "latency",
        "fp8",
        True,
    )
    assert [v.id for v in req.variants][:1] == ["Qwen/Qwen2.5-72B-Instruct"]  # the 16-bit base first


def test_the_command_line_defaults_are_the_options_defaults() -> None:
    """``command_line`` leaves out options at PlanOptions' defaults, so they must be the command's own."""
    import inspect
    from dataclasses import MISSING, fields
    from enum import Enum

    from qwendeploy.cli.plan import plan as command

    renamed = {"max_model_len": "context", "tensor_parallel_size": "tp", "pipeline_parallel_size": "pp"}
    renamed |= {"data_parallel_size": "dp"}
    cli = {
        renamed.get(name, name): p.default.value if isinstance(p.default, Enum) else p.default
        for name, p in inspect.signature(command).parameters.items()
        if name not in ("explain", "json_out")
    }
    ours = {f.name: f.default for f in fields(PlanOptions)}
    assert ours.pop("model") is MISSING and cli.pop("model") is inspect.Parameter.empty
    assert cli == ours
