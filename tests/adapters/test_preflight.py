from __future__ import annotations

from pathlib import Path

import pytest

from qwendeploy.adapters.preflight import check_model, check_security, is_loopback
from qwendeploy.core.profile import ModelSection, Profile, ServerSection
from qwendeploy.core.vllm_args import build_launch_specs


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_public_host_needs_key_or_insecure() -> None:
    p = Profile(model=ModelSection(id="m"), server=ServerSection(host="0.0.0.0"))
    specs = build_launch_specs(p, vllm_bin="v", base_env={})
    assert [c.status for c in check_security(specs, insecure=False)] == ["fail"]
    assert [c.status for c in check_security(specs, insecure=True)] == ["warn"]
    keyed = Profile(model=ModelSection(id="m"), server=ServerSection(host="0.0.0.0", api_key_env="K"))
    assert [
        c.status for c in check_security(build_launch_specs(keyed, vllm_bin="v", base_env={"K": "x"}), insecure=False)
    ] == ["ok"]


def test_model_local_dir_and_offline_cache(tmp_path: Path) -> None:
    missing = Profile(model=ModelSection(id=str(tmp_path / "nope")))
    assert check_model(missing, {})[0].status == "fail"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert check_model(Profile(model=ModelSection(id=str(tmp_path / "ckpt"))), {})[0].status == "ok"
    offline = check_model(Profile(model=ModelSection(id="Qwen/X")), {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert offline[0].status == "warn" and "HF_HUB_OFFLINE" in offline[0].detail
