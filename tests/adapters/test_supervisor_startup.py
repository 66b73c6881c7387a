"""serve sets vLLM's start-up figures beside the plan's estimate in one ``startup`` event (issue 14, part 4),
against the fake vLLM as a real process (it logs 374,480 KV tokens and 11.43x concurrency)."""

from __future__ import annotations

import pytest

from qwendeploy.core.profile import EstimateSection, GpuEstimate, ModelSection, Profile, ServerSection
from tests.adapters.test_supervisor import _run
from tests.fakes.serving import free_port

pytestmark = pytest.mark.slow


def _profile(tokens: int) -> Profile:
    est = EstimateSection(
        kv_cache_tokens=tokens, max_concurrency=11.43, per_gpu=[GpuEstimate(weights_bytes=int(14.25 * 2**30))]
    )
    return Profile(name="t", model=ModelSection(id="m"), server=ServerSection(port=free_port()), estimate=est)


@pytest.mark.parametrize(("tokens", "flagged"), [(374_000, False), (300_000, True)])
def test_startup_event_compares_with_the_estimate(tmp_path, tokens: int, flagged: bool) -> None:  # type: ignore[no-untyped-def]
    code, events, _ = _run(tmp_path, "healthy", profile=_profile(tokens))
    assert code == 0
    (ev,) = [e for e in events if e.kind == "startup"]
    kinds = [e.kind for e in events if e.kind != "line"]
    assert kinds.index("startup") < kinds.index("ready")
    rows = {r["name"]: r for r in ev.data["comparison"]}
    assert rows["KV cache"]["reported"] == 374_480 and rows["KV cache"]["flagged"] is flagged
    assert rows["weights per GPU"]["reported"] == 14.2488 and not rows["weights per GPU"]["flagged"]
    assert ev.data["flagged"] is flagged
    assert ("more than 2%" in ev.message) is flagged
