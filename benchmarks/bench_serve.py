"""Supervisor latency and overhead against the fake vLLM (real processes, real HTTP). Prints, never asserts.

    python benchmarks/bench_serve.py [--runs 10]

Targets (issue 5): fake server ready → qwendeploy reports ready ≤ 0.25 s; crash noticed ≤ 1 s; whole-group
shutdown ≤ grace + 1 s; supervisor CPU < 5 % of a core while the server logs 1,000 lines/s.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwendeploy.adapters.supervisor import Event, Launch, Supervisor  # noqa: E402
from qwendeploy.core.profile import ModelSection, Profile, ServerSection  # noqa: E402
from qwendeploy.core.restart import Policy  # noqa: E402
from qwendeploy.core.vllm_args import build_launch_specs  # noqa: E402
from tests.fakes.serving import FAKE_VLLM, free_port  # noqa: E402


def _supervisor(
    state: Path, mode: str, policy: Policy, on_event: object, extra_env: dict[str, str] | None = None
) -> Supervisor:
    prof = Profile(name="b", model=ModelSection(id="m"), server=ServerSection(port=free_port()))
    env = dict(os.environ, FAKE_VLLM_MODE=mode, FAKE_VLLM_STATE_DIR=str(state), **(extra_env or {}))
    specs = build_launch_specs(prof, vllm_bin=str(FAKE_VLLM), base_env=env)
    return Supervisor([Launch.native(s) for s in specs], policy, log_dir=state / "logs", on_event=on_event)  # type: ignore[arg-type]


def _stamp(state: Path, prefix: str) -> float:
    (f,) = list(state.glob(prefix + "-*"))
    return float(f.read_text())


def ready_latency(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            state = Path(d)
            seen: dict[str, float] = {}

            box: list[Supervisor] = []

            def on_event(e: Event, seen: dict[str, float] = seen, box: list[Supervisor] = box) -> None:
                if e.kind == "ready":
                    seen["ready"] = time.time()
                    box[0].request_stop()

            box.append(_supervisor(state, "healthy", Policy(grace_s=5), on_event))
            box[0].run(handle_signals=False)
            out.append(seen["ready"] - _stamp(state, "ready"))
    return out


def crash_latency(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            state = Path(d)
            seen: dict[str, float] = {}

            def on_event(e: Event, seen: dict[str, float] = seen) -> None:
                if e.kind == "exited":
                    seen["exited"] = time.time()

            sup = _supervisor(state, "crash_after:0.2", Policy(grace_s=5, restart="never"), on_event)
            sup.run(handle_signals=False)
            out.append(seen["exited"] - _stamp(state, "crash"))
    return out


def shutdown_time(runs: int, mode: str, grace: float) -> list[float]:
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            state = Path(d)
            seen: dict[str, float] = {}

            box: list[Supervisor] = []

            def on_event(e: Event, seen: dict[str, float] = seen, box: list[Supervisor] = box) -> None:
                if e.kind == "ready":
                    seen["asked"] = time.monotonic()
                    box[0].request_stop()
                elif e.kind == "stopped":
                    seen["stopped"] = time.monotonic()

            box.append(_supervisor(state, mode, Policy(grace_s=grace), on_event))
            box[0].run(handle_signals=False)
            out.append(seen["stopped"] - seen["asked"])
    return out


def cpu_while_logging(seconds: float, rate: int, render: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        lines = [0]
        on_event: object
        if render:
            from rich.console import Console

            from qwendeploy.cli.serve import _Renderer

            renderer = _Renderer(Console(file=io.StringIO(), force_terminal=False), json_out=False)

            def on_event(e: Event) -> None:
                lines[0] += e.kind == "line"
                renderer(e)
        else:

            def on_event(e: Event) -> None:
                lines[0] += e.kind == "line"

        ready = threading.Event()
        sup = _supervisor(
            state,
            "healthy",
            Policy(grace_s=5),
            lambda e: (on_event(e), e.kind == "ready" and ready.set()),
            {"FAKE_VLLM_LOG_RATE": str(rate)},
        )  # type: ignore[operator]
        result: dict[str, float] = {}

        def measure() -> None:
            ready.wait(30)
            r0, w0, n0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), lines[0]
            time.sleep(seconds)
            r1, w1, n1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), lines[0]
            result["cpu"] = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (w1 - w0)
            result["lines"] = n1 - n0
            sup.request_stop()

        t = threading.Thread(target=measure)
        t.start()
        sup.run(handle_signals=False)
        t.join()
        return result["cpu"], int(result["lines"])


def _fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms (n={len(xs)})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    print(f"ready reported after the fake listens: {_fmt(ready_latency(args.runs))}   (target ≤ 250 ms)")
    print(f"crash noticed after the fake exits:    {_fmt(crash_latency(args.runs))}   (target ≤ 1000 ms)")
    print(f"shutdown, server exits on SIGTERM:     {_fmt(shutdown_time(args.runs, 'healthy', 1.0))}")
    print(
        f"shutdown, SIGTERM ignored, grace 1 s:  {_fmt(shutdown_time(max(3, args.runs // 3), 'ignore_sigterm', 1.0))}"
        "   (target ≤ grace + 1 s = 2000 ms)"
    )
    for render in (False, True):
        cpu, n = cpu_while_logging(args.seconds, 1000, render)
        what = "with the CLI renderer" if render else "supervisor only      "
        print(f"CPU at 1,000 lines/s, {what}: {cpu * 100:.1f}% of a core ({n / args.seconds:.0f} lines/s seen)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
