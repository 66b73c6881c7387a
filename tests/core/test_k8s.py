"""`qwendeploy export k8s`: the LeaderWorkerSet + Service generated from a multi-node profile validate against
the LWS v1 and Kubernetes core schemas (tests/fixtures/k8s/schemas.json) and carry vLLM's recipe shape."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from qwendeploy.cli import app
from qwendeploy.core.k8s import leader_worker_set
from qwendeploy.core.profile import ModelSection, PlacementSection, Profile, ServerSection, dump_yaml

jsonschema = pytest.importorskip("jsonschema")


def _schema(fixtures: Path, kind: str) -> dict[str, Any]:
    doc = json.loads((fixtures / "k8s" / "schemas.json").read_text())
    return {"$defs": doc["$defs"], **doc[kind]}


def _profile(**server: Any) -> Profile:
    from qwendeploy.core.profile import ClusterSection

    return Profile(
        name="Qwen72B",
        model=ModelSection(id="Qwen/Qwen2.5-72B-Instruct", max_model_len=32768),
        placement=PlacementSection(
            tensor_parallel_size=8, pipeline_parallel_size=2, nodes=2, distributed_executor_backend="ray"
        ),
        cluster=ClusterSection(socket_ifname="eth0", gpus_per_node=8, ray_port=6380),
        server=ServerSection(port=8000, **server),
        env={"NCCL_DEBUG": "WARN"},
    )


def _validate(fixtures: Path, docs: list[dict[str, Any]]) -> None:
    for d in docs:
        jsonschema.validate(d, _schema(fixtures, d["kind"]))


def test_manifest_validates_and_follows_the_lws_recipe(fixtures: Path) -> None:
    docs = leader_worker_set(_profile())
    _validate(fixtures, docs)
    lws, svc = docs
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["size"] == 2
    leader = t["leaderTemplate"]["spec"]["containers"][0]
    worker = t["workerTemplate"]["spec"]["containers"][0]
    lscript, wscript = leader["command"][-1], worker["command"][-1]
    assert "\nray start --head --port=6380 --num-gpus=8" in lscript and "\nexec vllm serve" in lscript
    assert "--distributed-executor-backend ray" in lscript and "--host 0.0.0.0 --port 8000" in lscript
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in lscript
    assert wscript.startswith("ray start --address=$(LWS_LEADER_ADDRESS):6380") and wscript.endswith("--block")
    for c in (leader, worker):
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0" and env["NCCL_DEBUG"] == "WARN"
        assert env["VLLM_HOST_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    vol = t["leaderTemplate"]["spec"]["volumes"][0]
    assert vol["emptyDir"]["medium"] == "Memory"
    assert svc["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": "qwen72b", "role": "leader"}
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_api_key_comes_from_a_secret_not_the_manifest(fixtures: Path) -> None:
    docs = leader_worker_set(_profile(api_key_env="QWEN_API_KEY"))
    _validate(fixtures, docs)
    leader = docs[0]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    script = leader["command"][-1]
    # vLLM gets the key as VLLM_API_KEY (read when --api-key is absent), or as a $(VAR) the kubelet expands
    assert "--api-key" not in script or "--api-key $(QWEN_API_KEY)" in script
    for name in ("QWEN_API_KEY", "VLLM_API_KEY"):
        key = next(e for e in leader["env"] if e["name"] == name)
        assert key["valueFrom"]["secretKeyRef"] == {"name": "qwen72b-api-key", "key": "api-key"}


def test_schema_rejects_a_broken_manifest(fixtures: Path) -> None:
    lws = leader_worker_set(_profile())[0]
    del lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(fixtures, [lws])


def test_cli_export_writes_yaml_and_refuses_one_node(tmp_path: Path, fixtures: Path) -> None:
    p = tmp_path / "mn.yaml"
    p.write_text(dump_yaml(_profile()))
    r = CliRunner().invoke(app, ["export", "k8s", str(p)])
    assert r.exit_code == 0, r.output
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert [d["kind"] for d in docs] == ["LeaderWorkerSet", "Service"]
    assert "# WARNING: The leader serves on 0.0.0.0" in r.stdout and "Warning: The leader" in r.stderr
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(dump_yaml(_profile(api_key_env="QWEN_API_KEY")))
    r = CliRunner().invoke(app, ["export", "k8s", str(keyed)])
    assert r.exit_code == 0 and "WARNING" not in r.stdout and not r.stderr
    _validate(fixtures, docs)
    one = tmp_path / "one.yaml"
    one.write_text(dump_yaml(Profile(model=ModelSection(id="m"))))
    r = CliRunner().invoke(app, ["export", "k8s", str(one)])
    assert r.exit_code == 2 and "multi-node" in r.output


def _run_leader(tmp_path: Path, gpus_seen: list[int]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the leader's script with stand-ins on PATH: ``ray`` and ``vllm`` record their calls, ``python3``
    reports the Ray cluster's GPUs (one value per poll, the last repeated), ``sleep`` returns at once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    answers = tmp_path / "gpus"
    answers.write_text("\n".join(map(str, gpus_seen)) + "\n")
    scripts = {
        "ray": f'echo "ray $*" >> {calls}',
        "vllm": f'echo "vllm $1" >> {calls}',
        "sleep": "exit 0",
        "python3": (
            f"echo poll >> {calls}; n=$(head -n1 {answers}); "
            f'if [ "$(wc -l < {answers})" -gt 1 ]; then sed -i 1d {answers}; fi; echo "$n"'
        ),
    }
    for name, body in scripts.items():
        f = bin_dir / name
        f.write_text("#!/bin/bash\n" + body + "\n")
        f.chmod(0o755)
    leader = leader_worker_set(_profile())[0]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    cmd = leader["spec"]["containers"][0]["command"]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_leader_starts_vllm_only_once_the_workers_gpus_joined(tmp_path: Path) -> None:
    """vLLM raises at once when Ray has fewer GPUs than TP×PP (16 here): the leader polls until the worker's
    8 GPUs have joined its 8, then execs vllm serve."""
    done, calls = _run_leader(tmp_path, [0, 8, 8, 16])
    assert done.returncode == 0, done.stderr
    assert calls[0].startswith("ray start --head") and calls[1:5] == ["poll"] * 4
    assert calls[5:] == ["vllm serve"]


def test_leader_gives_up_when_the_workers_never_join(tmp_path: Path) -> None:
    done, calls = _run_leader(tmp_path, [8])
    assert done.returncode == 1 and "did not reach 16 GPUs within 600 s" in done.stderr
    assert "vllm serve" not in calls and calls.count("poll") == 600 // 5 + 1
