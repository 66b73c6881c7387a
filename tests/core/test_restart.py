"""core.restart: the verdict on a failed attempt (restart after a backoff, or give up), without processes."""

from __future__ import annotations

import pytest

from qwendeploy.core.restart import Policy, after_failure

OOM = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.02 GiB."]
CRASH = ["RuntimeError: something broke while serving"]


def test_a_start_up_failure_that_will_repeat_gives_up_at_once() -> None:
    v = after_failure(Policy(), restarts=0, ever_ready=False, code=1, tail=OOM, found=[])
    assert v.give_up and v.deterministic and "will repeat" in v.message


def test_the_same_failure_after_the_server_was_ready_is_restarted() -> None:
    v = after_failure(Policy(backoff_initial_s=2.0), restarts=0, ever_ready=True, code=1, tail=OOM, found=[])
    assert not v.give_up and v.delay == 2.0 and v.message == "restart 1/5 in 2s"


@pytest.mark.parametrize(("restarts", "delay"), [(0, 2.0), (1, 4.0), (2, 8.0), (4, 10.0)])
def test_backoff_doubles_up_to_its_ceiling(restarts: int, delay: float) -> None:
    policy = Policy(backoff_initial_s=2.0, backoff_max_s=10.0, max_restarts=5)
    v = after_failure(policy, restarts=restarts, ever_ready=True, code=None, tail=CRASH, found=[])
    assert not v.give_up and v.delay == delay


def test_policy_never_and_max_restarts_give_up() -> None:
    never = after_failure(Policy(restart="never"), restarts=0, ever_ready=True, code=1, tail=CRASH, found=[])
    assert never.give_up and not never.deterministic and never.message == "restart policy is never"
    spent = after_failure(Policy(max_restarts=2), restarts=2, ever_ready=True, code=1, tail=CRASH, found=[])
    assert spent.give_up and "gave up after 2 restart(s)" in spent.message
