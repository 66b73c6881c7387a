"""Placement search: every (TP, PP, DP) over an inventory, checked against vLLM's rules, sized, and ranked.

Pure: the caller resolves the model and probes (or simulates) the GPUs; ``plan`` decides.

One idea a module: ``values`` (request, candidate, plan), ``rules`` (vLLM's rules and the request's
checks), ``assignment`` (GPUs to TP groups and links), ``cost`` (the ranking cost model), ``evaluate`` (one
placement judged), ``search`` (enumerate, rank, choose), ``suggest`` (what would fit) and ``explain`` (the
prose). Their public names are importable from ``qwendeploy.core.planner`` as before.

How a candidate is judged (docs/planning.md has the long form):

1. **Rules** vLLM enforces, each with its reason: TP divides the attention heads; TP stays within a node; KV
   heads (TP ≤ kv: kv % TP == 0, else TP % kv == 0); the MLP width divides by TP; quantized kernels (4/8-bit
   group-g: each rank's row-parallel input a multiple of g; block FP8: each rank's MLP width a multiple of the
   block); PP ≤ layers; TP×PP×DP ≤ GPUs.
2. **Memory** (core.memory): fits the target context × concurrency / fits only a shorter context (the longest
   that fits, as ``--max-model-len auto`` finds it) / does not fit.
3. **Cost model** for ranking fitting candidates (``objective``): decode is memory-bandwidth bound. A decode
   step on one GPU reads its weight shard (an MoE: the experts the batch touches) and the KV of the batch:
   ``t_mem = (weights × read_fraction + batch × mean_context × kv_bytes_per_token) / (bandwidth × efficiency)``,
   plus the batch's matrix products ``t_mm = batch × 2 × active_params_on_gpu / (tensor_peak × efficiency)``;
   the step is never shorter than the engine's host work ``floor + per_request × batch``. TP adds two
   all-reduces per layer of ``batch × hidden`` activations: ``t_ar = latency + 2(tp−1)/tp × message /
   link_bandwidth``, where the link is NVLink, PCIe with peer-to-peer, or PCIe without P2P (through host memory:
   slowest). PP splits the step over stages,
   pipelines ``pp`` micro-batches (a bubble factor) and adds a hop per stage. DP multiplies throughput.
   *throughput* scores tokens/s of all replicas with the batch the KV cache can hold (requests assumed half
   full on average); *latency* scores one request's decode speed (tokens/s at batch 1).
"""

from __future__ import annotations

from qwendeploy.core.planner.assignment import LinkClass as LinkClass
from qwendeploy.core.planner.assignment import left_out as left_out
from qwendeploy.core.planner.assignment import link_class as link_class
from qwendeploy.core.planner.cost import decode_cost as decode_cost
from qwendeploy.core.planner.cost import weights_read_fraction as weights_read_fraction
from qwendeploy.core.planner.cost_model import DEFAULT_COST as DEFAULT_COST
from qwendeploy.core.planner.cost_model import Cost as Cost
from qwendeploy.core.planner.cost_model import CostModel as CostModel
from qwendeploy.core.planner.rules import ONLINE_QUANTIZATION as ONLINE_QUANTIZATION
from qwendeploy.core.planner.rules import Batching as Batching
from qwendeploy.core.planner.rules import default_batching as default_batching
from qwendeploy.core.planner.rules import tp_rule_violation as tp_rule_violation
from qwendeploy.core.planner.rules import valid_tp_sizes as valid_tp_sizes
from qwendeploy.core.planner.rules import yarn_override as yarn_override
from qwendeploy.core.planner.search import plan as plan
from qwendeploy.core.planner.search import raise_if_infeasible as raise_if_infeasible
from qwendeploy.core.planner.values import Candidate as Candidate
from qwendeploy.core.planner.values import Objective as Objective
from qwendeploy.core.planner.values import Plan as Plan
from qwendeploy.core.planner.values import PlanRequest as PlanRequest
from qwendeploy.core.planner.values import Status as Status
from qwendeploy.core.planner.values import longest_shorter as longest_shorter
