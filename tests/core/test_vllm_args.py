from __future__ import annotations

import json

import pytest

from qwendeploy.core.docker_args import build_docker_specs, render_docker
from qwendeploy.core.profile import EngineSection, ModelSection, PlacementSection, Profile, ServerSection
from qwendeploy.core.vllm_args import (
    FLAGS,
    build_launch_specs,
    redact_argv,
    render_spec,
    scrub,
)
from qwendeploy.errors import BadInput

YARN = {
    "rope_parameters": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
    },
    "max_position_embeddings": 131072,
}


def _p(**kw: object) -> Profile:
    base: dict[str, object] = {"name": "q", "model": ModelSection(id="Qwen/Qwen2.5-7B-Instruct")}
    base.update(kw)
    return Profile.model_validate(base)


def _flag(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_argv_is_bin_serve_model_with_canonical_flags() -> None:
    (s,) = build_launch_specs(_p(), vllm_bin="/opt/vllm", base_env={"PATH": "/bin"})
    assert s.argv[:3] == ("/opt/vllm", "serve", "Qwen/Qwen2.5-7B-Instruct")
    assert _flag(s.argv, "--tensor-parallel-size") == "1"
    assert _flag(s.argv, "--max-model-len") == "32768"
    assert _flag(s.argv, "--host") == "127.0.0.1"
    assert _flag(s.argv, "--port") == "8000"
    assert _flag(s.argv, "--served-model-name") == "Qwen/Qwen2.5-7B-Instruct"
    assert "--model" not in s.argv and "--api-key" not in s.argv
    assert all(not a.startswith("-") or a.startswith("--") for a in s.argv)
    assert s.env["CUDA_VISIBLE_DEVICES"] == "0" and s.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert s.env["PATH"] == "/bin"
    assert "NCCL_NVLS_ENABLE" not in s.env


def test_every_table_flag_is_emitted_for_non_default_values() -> None:
    p = _p(
        model=ModelSection(
            id="m", revision="abc", dtype="bfloat16", quantization="awq", hf_overrides={"a": 1}, trust_remote_code=True
        ),
        placement=PlacementSection(
            tensor_parallel_size=2,
            pipeline_parallel_size=2,
            distributed_executor_backend="mp",
            data_parallel_backend="mp",
        ),
        engine=EngineSection(
            max_num_seqs=64,
            max_num_batched_tokens=4096,
            kv_cache_dtype="fp8",
            block_size=32,
            enforce_eager=True,
            enable_prefix_caching=False,
            disable_custom_all_reduce=True,
        ),
    )
    (s,) = build_launch_specs(p, vllm_bin="vllm", base_env={})
    for rule in FLAGS:
        expected = "--no-enable-prefix-caching" if rule.flag == "--enable-prefix-caching" else rule.flag
        assert expected in s.argv, rule.flag
    assert _flag(s.argv, "--hf-overrides") == '{"a":1}'
    assert s.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_prefix_caching_tristate() -> None:
    on = build_launch_specs(_p(engine=EngineSection(enable_prefix_caching=True)), vllm_bin="v", base_env={})[0]
    unset = build_launch_specs(_p(), vllm_bin="v", base_env={})[0]
    assert "--enable-prefix-caching" in on.argv
    assert not any("prefix-caching" in a for a in unset.argv)


def test_api_key_comes_from_env_and_is_redacted_everywhere() -> None:
    p = _p(server=ServerSection(api_key_env="MY_KEY"))
    (s,) = build_launch_specs(p, vllm_bin="vllm", base_env={"MY_KEY": "sk-topsecret"})
    # never on argv (`ps` shows it to every local user): vLLM reads VLLM_API_KEY when --api-key is absent
    assert "--api-key" not in s.argv and "sk-topsecret" not in " ".join(s.argv)
    assert s.env["VLLM_API_KEY"] == "sk-topsecret" and s.api_key == "sk-topsecret"
    shown = render_spec(s)
    assert "sk-topsecret" not in json.dumps(shown)
    assert shown["env"]["VLLM_API_KEY"] == "***"
    assert 'VLLM_API_KEY="$MY_KEY" vllm serve' in shown["command"]
    assert redact_argv(["v", "--api-key", "k", "--api-key=k"]) == ["v", "--api-key", "***", "--api-key=***"]
    assert scrub("args: {'api_key': ['sk-topsecret']}", s.secret_values) == "args: {'api_key': ['***']}"


def test_missing_api_key_variable_is_bad_input() -> None:
    with pytest.raises(BadInput, match="MY_KEY"):
        build_launch_specs(_p(server=ServerSection(api_key_env="MY_KEY")), vllm_bin="vllm", base_env={})


def test_data_parallel_servers_get_disjoint_gpus_and_ports() -> None:
    p = _p(placement=PlacementSection(tensor_parallel_size=2, data_parallel_size=2, gpus=["3", "2", "1", "0"]))
    specs = build_launch_specs(p, vllm_bin="vllm", base_env={}, port=9000)
    assert [s.gpus for s in specs] == [("3", "2"), ("1", "0")]
    assert [s.port for s in specs] == [9000, 9001]
    assert [s.name for s in specs] == ["q-0", "q-1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["3,2", "1,0"]
    assert all("--data-parallel-size" not in s.argv for s in specs)


def test_data_parallel_vllm_mode_is_one_server() -> None:
    p = _p(placement=PlacementSection(tensor_parallel_size=2, data_parallel_size=2, data_parallel_mode="vllm"))
    (s,) = build_launch_specs(p, vllm_bin="vllm", base_env={})
    assert _flag(s.argv, "--data-parallel-size") == "2"
    assert s.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


@pytest.mark.parametrize("gpus", [["0"], ["0", "1", "2"], ["0", "0"]])
def test_gpu_list_must_match_world_size(gpus: list[str]) -> None:
    with pytest.raises(BadInput, match=r"placement\.gpus"):
        build_launch_specs(_p(placement=PlacementSection(tensor_parallel_size=2, gpus=gpus)), vllm_bin="v", base_env={})


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--rope-scaling", "{}"], "hf_overrides"),
        (["--swap-space=4"], "removed"),
        (["--api-key", "x"], "api_key_env"),
        (["--tensor-parallel-size", "2"], "profile field"),
    ],
)
def test_extra_args_are_checked(extra: list[str], needle: str) -> None:
    with pytest.raises(BadInput) as e:
        build_launch_specs(_p(engine=EngineSection(extra_args=extra)), vllm_bin="v", base_env={})
    assert needle in f"{e.value.message} {e.value.hint}"


def test_extra_args_pass_through_at_the_end() -> None:
    extra = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    (s,) = build_launch_specs(_p(engine=EngineSection(extra_args=extra)), vllm_bin="v", base_env={})
    assert list(s.argv[-3:]) == extra


def test_yarn_sets_long_len_switch_only_when_the_rope_covers_it() -> None:
    long = _p(model=ModelSection(id="m", max_model_len=131072, hf_overrides=YARN))
    too_long = _p(model=ModelSection(id="m", max_model_len=262144, hf_overrides=YARN))
    (s,) = build_launch_specs(long, vllm_bin="v", base_env={})
    assert s.env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] == "1"
    assert "--rope-scaling" not in s.argv and "--hf-overrides" in s.argv
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in build_launch_specs(too_long, vllm_bin="v", base_env={})[0].env
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in build_launch_specs(_p(), vllm_bin="v", base_env={})[0].env


def test_profile_env_wins_and_reaches_the_child() -> None:
    p = _p(env={"NCCL_P2P_DISABLE": "1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    (s,) = build_launch_specs(p, vllm_bin="v", base_env={"NCCL_P2P_DISABLE": "0"})
    assert s.env["NCCL_P2P_DISABLE"] == "1"
    assert s.env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert s.env_set["NCCL_P2P_DISABLE"] == "1"


def test_host_and_port_overrides() -> None:
    (s,) = build_launch_specs(_p(), vllm_bin="v", base_env={}, host="::1", port=1234)
    assert (_flag(s.argv, "--host"), _flag(s.argv, "--port")) == ("::1", "1234")


def test_docker_command() -> None:
    p = _p(
        placement=PlacementSection(tensor_parallel_size=2, gpus=["2", "3"]),
        server=ServerSection(api_key_env="MY_KEY"),
        env={"NCCL_DEBUG": "INFO"},
    )
    (d,) = build_docker_specs(p, base_env={"MY_KEY": "sk-topsecret"}, hf_cache="/h")
    a = d.argv
    assert a[:2] == ("docker", "run")
    assert _flag(a, "--gpus") == '"device=2,3"'
    assert "--ipc=host" in a
    assert _flag(a, "-p") == "127.0.0.1:8000:8000"
    assert _flag(a, "-v") == "/h:/root/.cache/huggingface"
    assert "NCCL_DEBUG=INFO" in a and "VLLM_API_KEY" in a
    assert "VLLM_API_KEY=sk-topsecret" not in a
    assert not any(x.startswith("CUDA_VISIBLE_DEVICES") for x in a)
    image_at = a.index("vllm/vllm-openai:latest")
    assert a[image_at + 1] == "Qwen/Qwen2.5-7B-Instruct"  # the image's entrypoint is `vllm serve`
    assert _flag(a, "--host") == "0.0.0.0"
    assert "sk-topsecret" not in " ".join(a) and "--api-key" not in a
    assert d.env["VLLM_API_KEY"] == "sk-topsecret"
    shown = json.dumps(render_docker(d))
    assert "sk-topsecret" not in shown and 'VLLM_API_KEY=\\"$MY_KEY\\"' in shown


def test_secret_looking_profile_env_is_hidden_in_native_and_docker_commands() -> None:
    p = _p(env={"HF_TOKEN": "hf_profilesecret", "NCCL_DEBUG": "INFO"})
    (s,) = build_launch_specs(p, vllm_bin="vllm", base_env={})
    assert s.env["HF_TOKEN"] == "hf_profilesecret"
    assert "hf_profilesecret" in s.secret_values  # log streams are scrubbed of it
    assert "hf_profilesecret" not in json.dumps(render_spec(s))
    (d,) = build_docker_specs(p, base_env={}, hf_cache="/h")
    a = d.argv
    # copied in by name from the docker client's environment: not on docker's argv
    assert _flag(a, "-e") in ("HF_TOKEN", "NCCL_DEBUG=INFO") and "HF_TOKEN" in a
    assert "hf_profilesecret" not in " ".join(a)
    assert d.env["HF_TOKEN"] == "hf_profilesecret" and d.launch.secret_values == ("hf_profilesecret",)
    shown = json.dumps(render_docker(d))
    assert "hf_profilesecret" not in shown and "NCCL_DEBUG=INFO" in shown
