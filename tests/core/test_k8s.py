"""`qwendeploy export k8s`: the LeaderWorkerSet + Service generated from a multi-node profile validate against
the LWS v1 and Kubernetes core schemas (tests/fixtures/k8s/schemas.json) and carry vLLM's recipe shape."""

from __future__ import annotations

import json
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
    assert lscript.startswith("ray start --head --port=6380 --num-gpus=8") and "&& vllm serve" in lscript
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
    assert "--api-key $(QWEN_API_KEY)" in leader["command"][-1]
    key = next(e for e in leader["env"] if e["name"] == "QWEN_API_KEY")
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
    docs = [d for d in yaml.safe_load_all(r.output) if d]
    assert [d["kind"] for d in docs] == ["LeaderWorkerSet", "Service"]
    _validate(fixtures, docs)
    one = tmp_path / "one.yaml"
    one.write_text(dump_yaml(Profile(model=ModelSection(id="m"))))
    r = CliRunner().invoke(app, ["export", "k8s", str(one)])
    assert r.exit_code == 2 and "multi-node" in r.output
