"""Turn a ``Plan`` into the ``Profile`` that ``serve`` runs (pure: values in, a Profile out)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast, get_args

from pydantic import BaseModel

from qwendeploy.core import family_rules
from qwendeploy.core.memory import MemoryEstimate
from qwendeploy.core.planner import Candidate, Plan
from qwendeploy.core.profile import (
    ClusterSection,
    EngineSection,
    EstimateSection,
    GpuEstimate,
    HardwareSection,
    ModelSection,
    PlacementSection,
    Profile,
    RestartSection,
    ServerSection,
)
from qwendeploy.core.server_address import DEFAULT_HOST, DEFAULT_PORT
from qwendeploy.core.vllm_args import one_endpoint_dp
from qwendeploy.errors import PlanInfeasible

_Dtype = Literal["auto", "bfloat16", "float16", "half", "float", "float32"]
_DTYPES = get_args(_Dtype)

_S = TypeVar("_S", bound=BaseModel)


def _make(cls: type[_S], checked: bool, **values: Any) -> _S:
    """A section validated by its schema, or (``checked=False``) put together from values taken as valid."""
    if checked:
        return cls(**values)
    return cls.model_construct(**values)


def profile_from_plan(
    p: Plan,
    *,
    name: str = "qwen",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    generated_by: str | None = None,
    revision: str | None = None,
    served_model_name: str | None = None,
    head_address: str | None = None,
    socket_ifname: str | None = None,
    checked: bool = True,
) -> Profile:
    """The profile for the chosen candidate of ``p``.

    Fixed choices the user made are written as given; choices left to vLLM (max_num_seqs,
    max_num_batched_tokens) stay unset so vLLM applies its own defaults, which the estimate assumed — except
    max_num_seqs when a fixed max_num_batched_tokens below vLLM's default cap lowered it (vLLM needs
    max_num_batched_tokens ≥ max_num_seqs).

    ``checked=False`` skips pydantic's validation (and the building of the profile's schema it needs, ~15 ms of a
    ``plan``): for a profile that only shows the plan's launch command, built from the planner's own values and the
    defaults above. The tests hold such a profile equal to the validated one, field for field.

    Raises:
        PlanInfeasible: the plan has no fitting candidate.
    """
    c = p.chosen
    if c is None or c.estimate is None:
        raise PlanInfeasible("Nothing fits, so there is no profile to write.")
    no_p2p = (c.cost.link if c.cost else "none") == "pcie-no-p2p"
    multi = len({g.node for g in c.gpus}) > 1
    cluster = _make(
        ClusterSection,
        checked,
        head_address=head_address,
        socket_ifname=socket_ifname,
        gpus_per_node=p.request.machine.gpus_per_node,
        network=p.request.network,
    )
    disable_custom_all_reduce = no_p2p or p.request.disable_custom_all_reduce
    return _make(
        Profile,
        checked,
        name=name,
        generated_by=generated_by,
        model=_model(p, c.estimate, revision, checked),
        placement=_placement(p, c, checked),
        engine=_engine(p, c, c.estimate, disable_custom_all_reduce=disable_custom_all_reduce, checked=checked),
        server=_make(ServerSection, checked, host=host, port=port, served_model_name=served_model_name),
        # Given, not left to the default factory, which validates (building a schema the unchecked path avoids).
        restart=_make(RestartSection, checked),
        cluster=cluster if multi else _make(ClusterSection, checked),
        # GeForce cards without P2P: NCCL must not try peer-to-peer (and vLLM's custom all-reduce, which needs it,
        # is off above).
        env={"NCCL_P2P_DISABLE": "1"} if no_p2p else {},
        estimate=_estimate(p, c.estimate, checked),
        hardware=_make(
            HardwareSection,
            checked,
            fingerprint=p.request.machine.fingerprint(),
            gpus=[g.name for g in c.gpus],
            interconnect=p.request.machine.interconnect,
            simulated=p.request.machine.simulated,
        ),
    )


def _model(p: Plan, est: MemoryEstimate, revision: str | None, checked: bool) -> ModelSection:
    """The model as vLLM loads it: the dtype asked (``auto`` unless a known one), float16 said outright where the
    cards have no bfloat16 (rather than left to each vLLM release's fallback), the context and overrides planned."""
    req = p.request
    dtype = cast(_Dtype, req.dtype if req.dtype in _DTYPES else "auto")
    if dtype == "auto" and est.dtype == "float16" and req.spec.torch_dtype == "bfloat16":
        dtype = "float16"
    return _make(
        ModelSection,
        checked,
        id=req.spec.id,
        revision=revision,
        dtype=dtype,
        quantization=req.quantization,
        max_model_len=p.max_model_len,
        hf_overrides=p.hf_overrides,
    )


def _placement(p: Plan, c: Candidate, checked: bool) -> PlacementSection:
    """Where the replicas run.

    One node: the GPUs by UUID (index on a simulated inventory). Several nodes (Ray): a replica spanning nodes runs
    on Ray's executor; replicas that each fit one node run as vLLM data parallelism placed by Ray. Ray owns GPU
    placement there, so no per-host GPU list.
    """
    tp, pp, dp = c.tp, c.pp, c.dp
    hw = p.request.machine
    nodes = len({g.node for g in c.gpus}) or 1
    multi = nodes > 1
    spans = multi and any(len({g.node for g in c.gpus[r * tp * pp : (r + 1) * tp * pp]}) > 1 for r in range(dp))
    return _make(
        PlacementSection,
        checked,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        data_parallel_size=dp,
        gpus=[] if multi else [g.uuid if (g.uuid and not hw.simulated) else str(g.index) for g in c.gpus],
        nodes=nodes,
        distributed_executor_backend="ray" if spans or (multi and dp == 1) else None,
        # One endpoint where the release has vLLM's own data-parallel serving (core.vllm_args explains).
        data_parallel_mode="vllm" if dp > 1 and (multi or one_endpoint_dp(p.accounting.vllm_version)) else "servers",
        data_parallel_backend="ray" if multi and dp > 1 else None,
    )


def _engine(
    p: Plan, c: Candidate, est: MemoryEstimate, *, disable_custom_all_reduce: bool, checked: bool
) -> EngineSection:
    """vLLM's engine settings: the memory budget planned, the user's fixed batching (vLLM's defaults otherwise,
    which the estimate assumed), the KV dtype chosen and the model family's runner arguments."""
    req = p.request
    util = c.gpu_memory_utilization
    if util is None:
        util = p.accounting.default_gpu_memory_utilization
    max_num_seqs = req.max_num_seqs
    if max_num_seqs is None and req.max_num_batched_tokens is not None:
        # A fixed --max-num-batched-tokens below vLLM's default sequence cap lowered the cap: write it.
        lowered = est.settings.max_num_seqs == req.max_num_batched_tokens
        max_num_seqs = est.settings.max_num_seqs if lowered else None
    return _make(
        EngineSection,
        checked,
        gpu_memory_utilization=round(util, 4),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=req.max_num_batched_tokens,
        kv_cache_dtype=c.kv_cache_dtype,
        enforce_eager=req.enforce_eager,
        disable_custom_all_reduce=disable_custom_all_reduce,
        extra_args=family_rules.runner_args(req.spec),
    )


def _estimate(p: Plan, est: MemoryEstimate, checked: bool) -> EstimateSection:
    """What the plan expects vLLM to report, per GPU, for doctor and serve to compare against."""
    per_gpu = [
        _make(
            GpuEstimate,
            checked,
            weights_bytes=m.weights_bytes,
            activation_bytes=m.activation_bytes,
            overhead_bytes=m.overhead_bytes,
            kv_cache_bytes=m.kv_cache_bytes,
            total_bytes=m.total_bytes,
            footprint_bytes=m.footprint_bytes,
            capacity_bytes=m.capacity_bytes,
        )
        for m in est.per_gpu
    ]
    return _make(
        EstimateSection,
        checked,
        kv_cache_tokens=est.kv_cache_tokens,
        max_concurrency=round(est.kv_cache_tokens / p.max_model_len, 2),
        per_gpu=per_gpu,
        vllm_version=p.accounting.vllm_version,
    )
