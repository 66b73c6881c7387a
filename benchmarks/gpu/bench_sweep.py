#!/usr/bin/env python3
"""Device side: vLLM's own serving benchmark (``vllm bench serve``) over a concurrency sweep, in one process.

usage: bench_sweep.py SERVED_NAME TOKENIZER_DIR RESULT_DIR [PORT]

For each concurrency C in 1, 16, 64 this runs exactly what ``vllm bench serve --backend vllm --dataset-name random
--random-input-len 1000 --random-output-len 256 --ignore-eos --max-concurrency C --num-prompts N --save-result``
runs (N = 8 for C = 1, else 4·C; two warm-up requests first), by calling ``vllm.benchmarks.serve.main`` with the
parsed arguments: one Python start instead of three. Writes ``RESULT_DIR/bench_cC.json`` (vLLM's result JSON) and
``RESULT_DIR/bench_argv.txt`` (the equivalent command lines).
"""

from __future__ import annotations

import os
import sys
import time

INPUT_LEN = 1000
OUTPUT_LEN = 256
CONCURRENCY = (1, 16, 64)


def prompts_for(c: int) -> int:
    return 8 if c == 1 else 4 * c


def argv_for(name: str, tokenizer: str, result_dir: str, port: int, c: int) -> list[str]:
    return [
        "--backend", "vllm",
        "--base-url", f"http://127.0.0.1:{port}",
        "--model", name,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(INPUT_LEN),
        "--random-output-len", str(OUTPUT_LEN),
        "--ignore-eos",
        "--max-concurrency", str(c),
        "--num-prompts", str(prompts_for(c)),
        "--num-warmups", "2",
        "--seed", "0",
        "--disable-tqdm",
        "--save-result",
        "--result-dir", result_dir,
        "--result-filename", f"bench_c{c}.json",
    ]  # fmt: skip


def main() -> int:
    name, tokenizer, result_dir = sys.argv[1:4]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 8000
    os.makedirs(result_dir, exist_ok=True)
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    with open(os.path.join(result_dir, "bench_argv.txt"), "w", encoding="utf-8") as f:
        for c in CONCURRENCY:
            f.write("vllm bench serve " + " ".join(argv_for(name, tokenizer, result_dir, port, c)) + "\n")
    for c in CONCURRENCY:
        parser = FlexibleArgumentParser()
        serve.add_cli_args(parser)
        args = parser.parse_args(argv_for(name, tokenizer, result_dir, port, c))
        t = time.time()
        try:
            r = serve.main(args)
        except Exception as e:  # keep the other concurrencies
            print(f"bench c={c} FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        print(
            f"BENCH {name} c={c} n={prompts_for(c)} out_tok/s={r.get('output_throughput', 0):.1f} "
            f"tpot_ms={r.get('mean_tpot_ms', 0):.2f} ttft_ms={r.get('mean_ttft_ms', 0):.1f} "
            f"completed={r.get('completed')} ({time.time() - t:.1f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
