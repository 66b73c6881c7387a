"""One rank of ``doctor --nccl-test`` (run as ``python -m qwendeploy.adapters.nccl_worker``).

The only qwendeploy module that imports torch, and only in this subprocess. Reads RANK, WORLD_SIZE,
MASTER_ADDR/MASTER_PORT (a loopback TCP store), QWENDEPLOY_NCCL_SIZES (bytes, comma-separated) and
QWENDEPLOY_NCCL_TIMEOUT_S; rank i drives visible GPU LOCAL_RANK. Rank 0 prints one JSON line
per size: {"bytes": N, "seconds": mean time of one all-reduce}.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time


def main() -> int:
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    sizes = [int(s) for s in os.environ.get("QWENDEPLOY_NCCL_SIZES", str(1 << 20)).split(",") if s]
    timeout = datetime.timedelta(seconds=float(os.environ.get("QWENDEPLOY_NCCL_TIMEOUT_S", "120")))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group("nccl", init_method="env://", rank=rank, world_size=world, timeout=timeout)
    try:
        for size in sizes:
            n = size // 2  # bf16 elements
            buf = torch.ones(n, dtype=torch.bfloat16, device="cuda")
            for _ in range(3):  # warm-up: connection set-up happens on the first call
                dist.all_reduce(buf)
            torch.cuda.synchronize()
            iters = 20 if size <= (64 << 20) else 5
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(buf)
            torch.cuda.synchronize()
            secs = (time.perf_counter() - start) / iters
            if rank == 0:
                print(json.dumps({"bytes": n * 2, "seconds": secs}), flush=True)
            del buf
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
