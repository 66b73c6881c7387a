"""One constant per default: the server's bind host and port, and vLLM's gpu_memory_utilization, are the same value
wherever a default is written (profile schema, plan's options, the profile builder, the engine settings, the
current release's accounting), and a client reaches a wildcard bind over loopback."""

from __future__ import annotations

import inspect

import pytest

from qwendeploy.app.plan import PlanOptions
from qwendeploy.core.memory import CURRENT_VLLM, EngineSettings, accounting_for
from qwendeploy.core.memory.accounting import DEFAULT_GPU_MEMORY_UTILIZATION
from qwendeploy.core.profile import EngineSection, ServerSection
from qwendeploy.core.profile_builder import profile_from_plan
from qwendeploy.core.server_address import DEFAULT_HOST, DEFAULT_PORT, client_host, client_url, http_url


def test_every_server_default_is_the_one_constant() -> None:
    server = ServerSection()
    opts = PlanOptions(model="Qwen/Qwen2.5-7B-Instruct")
    builder = inspect.signature(profile_from_plan).parameters
    assert server.host == opts.host == builder["host"].default == DEFAULT_HOST
    assert server.port == opts.port == builder["port"].default == DEFAULT_PORT


def test_gpu_memory_utilization_defaults_follow_the_current_release() -> None:
    current = accounting_for(CURRENT_VLLM).default_gpu_memory_utilization
    assert current == DEFAULT_GPU_MEMORY_UTILIZATION
    assert EngineSection().gpu_memory_utilization == EngineSettings(max_model_len=1).gpu_memory_utilization == current
    assert accounting_for("0.19").default_gpu_memory_utilization < current


@pytest.mark.parametrize(
    ("bind", "dial"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "::1"),
        ("[::]", "::1"),
        ("10.0.0.5", "10.0.0.5"),
        ("node1", "node1"),
    ],
)
def test_a_client_dials_the_loopback_of_a_wildcard_binds_family(bind: str, dial: str) -> None:
    assert client_host(bind) == dial


@pytest.mark.parametrize(
    ("bind", "url"),
    [("0.0.0.0", "http://127.0.0.1:8000"), ("::", "http://[::1]:8000"), ("fd00::5", "http://[fd00::5]:8000")],
)
def test_a_client_url_brackets_an_ipv6_host(bind: str, url: str) -> None:
    """One rule for every place that prints or dials the server: serve's banner, plan's endpoints, bench, health."""
    assert client_url(bind, 8000) == url


def test_serve_dry_run_shows_an_ipv6_bind_as_a_valid_url() -> None:
    assert http_url("fd00::5", 8001) == "http://[fd00::5]:8001" and http_url("0.0.0.0", 8000) == "http://0.0.0.0:8000"
