"""Time and peak memory of ``qwendeploy doctor --log`` on a large log (issue 11: ≤ 30 s and ≤ 256 MB for 500 MB).

``python benchmarks/bench_doctor_log.py [MEGABYTES] [--startups]`` (default 500) writes a log of that size in a
temporary directory, runs the CLI on it in a child process and prints the wall time, the child's peak RSS and the
first diagnosis. Not a test: timings depend on the machine.

The log is what a long-running server leaves: a real vLLM 0.26 start-up (tests/fixtures/gpu-runs/h200-vllm0.26),
its real request and health-check lines repeated, then a restart that fails (the real KV-cache failure of q7_fail).
``--startups`` instead repeats whole start-ups (a crash-looping server: ~45% of its lines carry a gate word, the
worst case for the scan).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "tests" / "fixtures" / "gpu-runs" / "h200-vllm0.26"


def write_log(path: Path, megabytes: int, startups: bool = False) -> int:
    served = (RUNS / "q7_u90" / "vllm.log").read_text(encoding="utf-8", errors="replace")
    failure = (RUNS / "q7_fail" / "vllm.log").read_text(encoding="utf-8", errors="replace")
    requests = "".join(
        line + "\n"
        for log in sorted(RUNS.glob("*/vllm.log"))
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
        if '"POST /v1/' in line or '"GET /health' in line
    )
    body = served if startups else requests * 50
    target = megabytes * 10**6
    with path.open("w", encoding="utf-8") as f:
        f.write(served)
        written = len(served.encode())
        while written < target - len(failure):
            f.write(body)
            written += len(body.encode())
        f.write(failure)
        written += len(failure.encode())
    return written


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    megabytes = int(args[0]) if args else 500
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "big.log"
        size = write_log(log, megabytes, startups="--startups" in sys.argv)
        start = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "qwendeploy", "doctor", "--log", str(log), "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    top = json.loads(out.stdout)["diagnoses"][:1] if out.stdout.strip() else []
    print(f"log: {size / 1e6:.0f} MB; wall {wall:.1f} s; peak RSS {peak_mib:.0f} MiB; exit {out.returncode}")
    print("first diagnosis:", top[0]["category"] if top else None)
    return 0 if wall <= 30 and peak_mib <= 256 else 1


if __name__ == "__main__":
    raise SystemExit(main())
