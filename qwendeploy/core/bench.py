"""``qwendeploy bench``: what the plan's cost model predicts for a load, and measured runs set beside it. Pure.

The prediction is docs/planning.md §5 evaluated at the benchmark's own load instead of the planner's ranking load:
``concurrency`` requests spread over the replicas, each ``input_len`` tokens of prompt and ``output_len`` generated,
so a decode step reads the weight shard (active experts only, for MoE) and the KV of ``batch`` requests at a mean
context of ``input_len + output_len / 2``. Constants come from ``PlanRequest.cost`` (``core.planner.CostModel``), so
a calibration of the planner's constants shows here too. Prefill is not modelled: the estimate is the decode rate,
set beside the run's decode rate (``Run.decode_tokens_per_s``: requests at once / median TPOT); it bounds the
output throughput of a run with ``--ignore-eos`` from above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qwendeploy.core.planner import Candidate, PlanRequest, decode_cost


@dataclass(frozen=True)
class Estimate:
    """The cost model at one load."""

    concurrency: int
    batch_per_replica: int
    output_tokens_per_s: float
    """All replicas together."""
    tpot_ms: float
    """Time per output token of one request (one decode step)."""


def decode_estimate(
    req: PlanRequest, c: Candidate, *, concurrency: int, input_len: int, output_len: int
) -> Estimate | None:
    """§5's decode rate for ``concurrency`` requests on candidate ``c`` (None without a memory estimate): the
    planner's own ``decode_cost`` evaluated at this load, so a calibration or a change of the formula shows here."""
    est = c.estimate
    if est is None or not est.per_gpu or not c.gpus:
        return None
    batch = max(1, min(est.settings.max_num_seqs, math.ceil(concurrency / c.dp)))
    cost = decode_cost(
        req,
        req.machine,
        est,
        c.gpus[: c.tp * c.pp],
        c.dp,
        est.settings.max_model_len,
        batch=batch,
        mean_context=input_len + output_len / 2,
    )
    # Requests beyond the replicas' batches wait; they add no throughput.
    active_requests = min(concurrency, batch * c.dp)
    return Estimate(
        concurrency=concurrency,
        batch_per_replica=batch,
        output_tokens_per_s=cost.tokens_per_s * active_requests / (batch * c.dp),
        tpot_ms=cost.step_ms,
    )


@dataclass(frozen=True)
class Run:
    """One measured load level (vLLM's ``bench serve`` result keys, or the built-in client's)."""

    concurrency: int
    completed: int
    failed: int
    duration_s: float
    output_tokens: int
    input_tokens: int
    output_tokens_per_s: float
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    client: str
    raw: dict[str, Any] = field(default_factory=dict)
    """The client's own result (vLLM's JSON as saved), for the record."""

    @property
    def decode_tokens_per_s(self) -> float:
        """The decode rate the run measured: its requests at once × 1000 / median TPOT — what §5 predicts. The
        output rate is lower by the prefills that stall the batch."""
        at_once = min(self.concurrency, self.completed)
        return at_once * 1000.0 / self.median_tpot_ms if self.median_tpot_ms > 0 else 0.0

    @classmethod
    def from_vllm(cls, concurrency: int, d: dict[str, Any]) -> Run:
        """From the JSON ``vllm bench serve --save-result`` writes."""

        def f(key: str) -> float:
            v = d.get(key)
            return float(v) if isinstance(v, (int, float)) else 0.0

        completed = int(f("completed"))
        return cls(
            concurrency=concurrency,
            completed=completed,
            failed=int(f("failed")) if "failed" in d else max(0, int(f("num_prompts")) - completed),
            duration_s=f("duration"),
            output_tokens=int(f("total_output_tokens")),
            input_tokens=int(f("total_input_tokens")),
            output_tokens_per_s=f("output_throughput"),
            mean_ttft_ms=f("mean_ttft_ms"),
            median_ttft_ms=f("median_ttft_ms"),
            p99_ttft_ms=f("p99_ttft_ms"),
            mean_tpot_ms=f("mean_tpot_ms"),
            median_tpot_ms=f("median_tpot_ms"),
            client="vllm bench serve",
            raw=d,
        )


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request as the built-in client saw it (seconds from its start)."""

    ok: bool
    ttft_s: float
    latency_s: float
    output_tokens: int
    input_tokens: int
    error: str = ""


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize(concurrency: int, timings: list[RequestTiming], duration_s: float) -> Run:
    """The built-in client's requests as vLLM's benchmark reports them: TTFT, TPOT (decode time per output token
    after the first), output tokens per second of wall time."""
    ok = [t for t in timings if t.ok]
    ttft = sorted(t.ttft_s * 1e3 for t in ok)
    tpot = sorted((t.latency_s - t.ttft_s) * 1e3 / (t.output_tokens - 1) for t in ok if t.output_tokens > 1)
    out_tokens = sum(t.output_tokens for t in ok)
    return Run(
        concurrency=concurrency,
        completed=len(ok),
        failed=len(timings) - len(ok),
        duration_s=duration_s,
        output_tokens=out_tokens,
        input_tokens=sum(t.input_tokens for t in ok),
        output_tokens_per_s=out_tokens / duration_s if duration_s > 0 else 0.0,
        mean_ttft_ms=sum(ttft) / len(ttft) if ttft else 0.0,
        median_ttft_ms=_pct(ttft, 0.5),
        p99_ttft_ms=_pct(ttft, 0.99),
        mean_tpot_ms=sum(tpot) / len(tpot) if tpot else 0.0,
        median_tpot_ms=_pct(tpot, 0.5),
        client="qwendeploy (built-in)",
        raw={"errors": sorted({t.error for t in timings if t.error})[:5]},
    )


def error_pct(measured: float, predicted: float | None) -> float | None:
    """How far the prediction is from the measurement, in % of the measurement (positive: predicted higher)."""
    if predicted is None or measured <= 0:
        return None
    return (predicted - measured) / measured * 100
