"""Turn a ``Plan`` into the ``Profile`` that ``serve`` runs (pure: values in, a Profile out)."""

from __future__ import annotations

from typing import Literal, cast

from qwendeploy.core import family_rules
from qwendeploy.core.planner import Plan
from qwendeploy.core.profile import (
    ClusterSection,
    EngineSection,
    EstimateSection,
    GpuEstimate,
    HardwareSection,
    ModelSection,
    PlacementSection,
    Profile,
    ServerSection,
)
from qwendeploy.core.vllm_args import one_endpoint_dp
from qwendeploy.errors import PlanInfeasible

_Dtype = Literal["auto", "bfloat16", "float16", "half", "float", "float32"]


def profile_from_plan(
    p: Plan,
    *,
    name: str = "qwen",
    host: str = "127.0.0.1",
    port: int = 8000,
    generated_by: str | None = None,
    revision: str | None = None,
    served_model_name: str | None = None,
    head_address: str | None = None,
    socket_ifname: str | None = None,
) -> Profile:
    """The profile for the chosen candidate of ``p``.

    Fixed choices the user made are written as given; choices left to vLLM (max_num_seqs,
    max_num_batched_tokens) stay unset so vLLM applies its own defaults, which the estimate assumed — except
    max_num_seqs when a fixed max_num_batched_tokens below vLLM's default cap lowered it (vLLM needs
    max_num_batched_tokens ≥ max_num_seqs).

    Raises:
        PlanInfeasible: the plan has no fitting candidate.
    """
    c = p.chosen
    if c is None or c.estimate is None:
        raise PlanInfeasible("Nothing fits, so there is no profile to write.")
    req, est = p.request, c.estimate
    tp, pp, dp = c.tp, c.pp, c.dp
    link = c.cost.link if c.cost else "none"
    env: dict[str, str] = {}
    disable_car = False
    if link == "pcie-no-p2p":
        # GeForce cards without P2P: NCCL must not try peer-to-peer, and vLLM's custom all-reduce needs it.
        env["NCCL_P2P_DISABLE"] = "1"
        disable_car = True
    disable_car = disable_car or req.disable_custom_all_reduce
    nodes = len({g.node for g in c.gpus}) or 1
    # Multi-node (Ray): a replica spanning nodes runs on Ray's executor; replicas that each fit one node run
    # as vLLM data parallelism placed by Ray. Ray owns GPU placement there, so no per-host GPU list.
    spans = nodes > 1 and any(len({g.node for g in c.gpus[r * tp * pp : (r + 1) * tp * pp]}) > 1 for r in range(dp))
    multi = nodes > 1
    cluster = ClusterSection(
        head_address=head_address,
        socket_ifname=socket_ifname,
        gpus_per_node=req.machine.gpus_per_node,
        network=req.network,
    )
    util = c.gpu_memory_utilization
    if util is None:
        util = p.accounting.default_gpu_memory_utilization
    hw = req.machine
    per_gpu = [
        GpuEstimate(
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
    dtype = cast(
        _Dtype, req.dtype if req.dtype in ("auto", "bfloat16", "float16", "half", "float", "float32") else "auto"
    )
    if dtype == "auto" and est.dtype == "float16" and req.spec.torch_dtype == "bfloat16":
        dtype = "float16"  # cards without bf16: say it, rather than rely on each vLLM release's fallback
    return Profile(
        name=name,
        generated_by=generated_by,
        model=ModelSection(
            id=req.spec.id,
            revision=revision,
            dtype=dtype,
            quantization=req.quantization,
            max_model_len=p.max_model_len,
            hf_overrides=p.hf_overrides,
        ),
        placement=PlacementSection(
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            data_parallel_size=dp,
            gpus=[] if multi else [g.uuid if (g.uuid and not hw.simulated) else str(g.index) for g in c.gpus],
            nodes=nodes,
            distributed_executor_backend="ray" if spans or (multi and dp == 1) else None,
            # One endpoint where the release has vLLM's own data-parallel serving (core.vllm_args explains).
            data_parallel_mode="vllm"
            if dp > 1 and (multi or one_endpoint_dp(p.accounting.vllm_version))
            else "servers",
            data_parallel_backend="ray" if multi and dp > 1 else None,
        ),
        engine=EngineSection(
            gpu_memory_utilization=round(util, 4),
            # A fixed --max-num-batched-tokens below vLLM's default sequence cap lowered the cap: write it.
            max_num_seqs=req.max_num_seqs
            if req.max_num_seqs is not None or req.max_num_batched_tokens is None
            else (est.settings.max_num_seqs if est.settings.max_num_seqs == req.max_num_batched_tokens else None),
            max_num_batched_tokens=req.max_num_batched_tokens,
            kv_cache_dtype=c.kv_cache_dtype,
            enforce_eager=req.enforce_eager,
            disable_custom_all_reduce=disable_car,
            extra_args=family_rules.runner_args(req.spec),
        ),
        server=ServerSection(host=host, port=port, served_model_name=served_model_name),
        cluster=cluster if multi else ClusterSection(),
        env=env,
        estimate=EstimateSection(
            kv_cache_tokens=est.kv_cache_tokens,
            max_concurrency=round(est.kv_cache_tokens / p.max_model_len, 2),
            per_gpu=per_gpu,
            vllm_version=p.accounting.vllm_version,
        ),
        hardware=HardwareSection(
            fingerprint=hw.fingerprint(),
            gpus=[g.name for g in c.gpus],
            interconnect=hw.interconnect,
            simulated=hw.simulated,
        ),
    )
