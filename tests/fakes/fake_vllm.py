#!/usr/bin/env python3
"""A stand-in for `vllm serve` in tests: a real executable, real HTTP on loopback, a real worker child.

Called as ``fake_vllm.py serve MODEL [vLLM flags]``, or ``fake_vllm.py bench serve [flags]``: then, like
``vllm bench serve --save-result``, it writes a result JSON with vLLM's keys (figures made up from the flags:
output throughput 100 tok/s per concurrent request) and the argv it got under ``"argv"``.
``POST /v1/completions`` with ``"stream": true`` streams ``max_tokens`` tokens as server-sent events (vLLM's
chunk shape, a final ``usage`` chunk when ``stream_options.include_usage``, then ``data: [DONE]``).
Like vLLM 0.33 the API key is ``--api-key`` or, when that is
absent, ``$VLLM_API_KEY``. Unknown flags → argparse "unrecognized arguments", exit 2.
Like vLLM it binds its port at once but only listens when "ready" (so /health is connection refused during
start-up), prints vLLM-like start-up lines and forks a worker titled ``VLLM::EngineCore``.

Environment:
    FAKE_VLLM_MODE          healthy (default) | slow_start | crash_after:N | oom_at_startup | never_ready |
                            ignore_sigterm | unhealthy_after:N | tp_heads | crash_first:K | exit_after:N
                            (exit 0 N s after ready, as vLLM does once its engine core died) |
                            oom_after_crash:N (first start: ready, crash after N s; later starts: OOM at
                            start-up, as when the crashed server's memory is not yet released; needs
                            FAKE_VLLM_STATE_DIR)
    FAKE_VLLM_READY_AFTER   seconds from start to ready (default 0.2; slow_start: 3)
    FAKE_VLLM_STATE_DIR     if set: writes <server pid>.json there ({"server": pid, "worker": pid}) and keeps
                            the start counter for crash_first
    FAKE_VLLM_LOG_RATE      lines per second to log once ready (default 0)
    FAKE_VLLM_TTFT          seconds before the first streamed token of a completion (default 0.01)
    FAKE_VLLM_TOKEN_DELAY   seconds between streamed tokens (default 0.002)
    FAKE_VLLM_BENCH_FAIL    if 1: ``bench serve`` exits 1 without a result, as when the server is unreachable
    FAKE_VLLM_RAY           if 1 and --distributed-executor-backend/--data-parallel-backend is ray: like vLLM,
                            attach to the Ray cluster at $RAY_ADDRESS first and exit 1 when it has fewer GPUs
                            than TP × PP × DP (the check runs in a subprocess: ray is never imported here)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE = {"healthy": True}


def log(level: str, where: str, msg: str) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [{where}] {msg}", flush=True)


def set_title(title: str) -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, title.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vllm", allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", allow_abbrev=False)
    b.add_argument("what", choices=["serve"])
    for flag in (
        "--backend",
        "--base-url",
        "--endpoint",
        "--model",
        "--served-model-name",
        "--dataset-name",
        "--random-input-len",
        "--random-output-len",
        "--max-concurrency",
        "--num-prompts",
        "--request-rate",
        "--seed",
        "--percentile-metrics",
        "--metric-percentiles",
        "--result-dir",
        "--result-filename",
    ):
        b.add_argument(flag)
    for flag in ("--ignore-eos", "--save-result", "--disable-tqdm"):
        b.add_argument(flag, action="store_true")
    s = sub.add_parser("serve", allow_abbrev=False)
    s.add_argument("model")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", nargs="+", default=None)
    s.add_argument("--api-key", default=None)
    for flag in (
        "--revision",
        "--dtype",
        "--quantization",
        "--max-model-len",
        "--hf-overrides",
        "--tensor-parallel-size",
        "--pipeline-parallel-size",
        "--data-parallel-size",
        "--distributed-executor-backend",
        "--data-parallel-backend",
        "--gpu-memory-utilization",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--kv-cache-dtype",
        "--block-size",
        "--tool-call-parser",
    ):
        s.add_argument(flag)
    for flag in (
        "--trust-remote-code",
        "--enforce-eager",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--disable-custom-all-reduce",
        "--enable-auto-tool-choice",
    ):
        s.add_argument(flag, action="store_true")
    return p.parse_args(argv)


def worker_main(ignore_term: bool) -> None:
    set_title("VLLM::EngineCore")
    while True:
        time.sleep(3600)


def make_handler(args: argparse.Namespace, served: str):  # type: ignore[no-untyped-def]
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: object) -> None:
            log("INFO", "launcher.py:99", f'{self.client_address[0]} - "{self.command} {self.path}"')

        def _send(self, code: int, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, req: dict) -> None:  # type: ignore[type-arg]
            """Server-sent events as vLLM streams a completion: one chunk per token, usage, [DONE]."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            n = int(req.get("max_tokens") or 16)
            time.sleep(float(os.environ.get("FAKE_VLLM_TTFT", "0.01")))
            delay = float(os.environ.get("FAKE_VLLM_TOKEN_DELAY", "0.002"))
            model = req.get("model", served)
            for i in range(n):
                if i:
                    time.sleep(delay)
                chunk = {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None if i < n - 1 else "length"}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            if (req.get("stream_options") or {}).get("include_usage"):
                prompt = req.get("prompt")
                usage = {"prompt_tokens": len(prompt) if isinstance(prompt, list) else 1, "completion_tokens": n}
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _authorized(self) -> bool:
            if not args.api_key:
                return True
            return self.headers.get("Authorization", "") == f"Bearer {args.api_key}"

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200 if STATE["healthy"] else 503)
            elif self.path == "/v1/models":
                if not self._authorized():
                    self._send(401, {"error": "Unauthorized"})
                    return
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": served, "object": "model", "owned_by": "vllm", "root": args.model}],
                    },
                )
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if self.path != "/v1/completions":
                self._send(404, {"detail": "Not Found"})
                return
            if not self._authorized():
                self._send(401, {"error": "Unauthorized"})
                return
            n = int(self.headers.get("Content-Length", "0") or 0)
            try:
                req = json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                self._send(400, {"error": "bad json"})
                return
            if req.get("stream"):
                self._stream(req)
                return
            self._send(
                200,
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "model": req.get("model", served),
                    "choices": [{"index": 0, "text": " fake", "finish_reason": "length"}],
                },
            )

    return Handler


OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.02 GiB. GPU 0 has a total capacity of "
    "23.53 GiB of which 311.81 MiB is free. Including non-PyTorch memory, this process has 23.21 GiB memory in "
    "use. Of the allocated memory 22.84 GiB is allocated by PyTorch, and 12.36 MiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
    "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)


_RAY_GPUS = (
    "import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
    "print(json.dumps({'gpus': ray.cluster_resources().get('GPU', 0), 'nodes': len(ray.nodes())}))"
)


def ray_attach(args: argparse.Namespace) -> int | None:
    """vLLM's Ray start-up in miniature: None when fine, else the exit code."""
    import subprocess

    world = int(args.tensor_parallel_size or 1) * int(args.pipeline_parallel_size or 1)
    world *= int(args.data_parallel_size or 1)
    address = os.environ.get("RAY_ADDRESS", "")
    log("INFO", "ray_utils.py:1", f"Connecting to existing Ray cluster at address: {address}")
    r = subprocess.run([sys.executable, "-c", _RAY_GPUS, address], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        log("ERROR", "ray_utils.py:2", f"Could not connect to Ray: {r.stderr.strip().splitlines()[-1:]}")
        return 1
    found = json.loads(r.stdout.strip().splitlines()[-1])
    log("INFO", "ray_utils.py:3", f"Ray cluster: {found['nodes']} nodes, {found['gpus']:g} GPUs; world size {world}")
    if found["gpus"] < world:
        log("ERROR", "ray_utils.py:4", "ValueError: The number of required GPUs exceeds the total number of "
            "available GPUs in the placement group.")  # fmt: skip
        return 1
    return None


def bench_main(args: argparse.Namespace) -> int:
    """``vllm bench serve``: write a result JSON in vLLM's format (made-up figures that follow the flags)."""
    print(f"Starting initial single prompt test run... base_url={args.base_url}", flush=True)
    if os.environ.get("FAKE_VLLM_BENCH_FAIL") == "1":
        print(
            f"ValueError: Initial test run failed - Please make sure benchmark arguments are correctly "
            f"specified. Error: Cannot connect to host {args.base_url}",
            flush=True,
        )
        return 1
    c, n = int(args.max_concurrency), int(args.num_prompts)
    out_len, in_len = int(args.random_output_len), int(args.random_input_len)
    throughput = 100.0 * c
    duration = n * out_len / throughput
    result = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": args.backend,
        "model_id": args.model,
        "tokenizer_id": args.model,
        "num_prompts": n,
        "request_rate": "inf",
        "max_concurrency": c,
        "duration": duration,
        "completed": n,
        "total_input_tokens": n * in_len,
        "total_output_tokens": n * out_len,
        "request_throughput": n / duration,
        "output_throughput": throughput,
        "total_token_throughput": n * (in_len + out_len) / duration,
        "mean_ttft_ms": 20.0 + c,
        "median_ttft_ms": 19.0 + c,
        "std_ttft_ms": 1.0,
        "p99_ttft_ms": 30.0 + c,
        "mean_tpot_ms": 10.0,
        "median_tpot_ms": 10.0,
        "std_tpot_ms": 0.1,
        "p99_tpot_ms": 11.0,
        "mean_itl_ms": 10.0,
        "median_itl_ms": 10.0,
        "std_itl_ms": 0.1,
        "p99_itl_ms": 11.0,
        "argv": sys.argv[1:],
    }
    if args.save_result:
        out = Path(args.result_dir or ".") / (args.result_filename or "result.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result))
    print("============ Serving Benchmark Result ============", flush=True)
    print(f"Output token throughput (tok/s):         {throughput:.2f}", flush=True)
    return 0


def main() -> int:
    args = parse(sys.argv[1:])
    if args.cmd == "bench":
        return bench_main(args)
    args.api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    if os.environ.get("FAKE_VLLM_RAY") == "1" and "ray" in (
        args.distributed_executor_backend,
        args.data_parallel_backend,
    ):
        code = ray_attach(args)
        if code is not None:
            return code
    mode = os.environ.get("FAKE_VLLM_MODE", "healthy")
    kind, _, num = mode.partition(":")
    ready_after = float(os.environ.get("FAKE_VLLM_READY_AFTER", "3" if kind == "slow_start" else "0.2"))
    state_dir = os.environ.get("FAKE_VLLM_STATE_DIR")
    served = (args.served_model_name or [args.model])[0]
    ignore_term = kind == "ignore_sigterm"
    leave_worker = kind in ("crash_after", "crash_first", "oom_at_startup", "oom_after_crash")

    starts = 0
    if state_dir:
        counter = Path(state_dir) / "starts"
        starts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(starts + 1))
    if kind == "oom_after_crash":
        kind = "crash_after" if starts == 0 else "oom_at_startup"

    # Handlers go in before the fork, so a SIGTERM that arrives during start-up still ends the worker.
    worker = -1

    def on_term(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):  # a broken pipe (supervisor gone) or a re-entrant print
            log("INFO", "launcher.py:110", "Shutting down FastAPI HTTP server.")
        if not leave_worker and worker > 0:
            try:
                os.kill(worker, signal.SIGTERM)
                os.waitpid(worker, 0)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_term else on_term)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    worker = os.fork()
    if worker == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_term else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        worker_main(ignore_term)
        os._exit(0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    if state_dir:
        # Written whole then renamed: a test polling for the file never reads it half-written.
        tmp = Path(state_dir) / f".{os.getpid()}.json.tmp"
        tmp.write_text(json.dumps({"server": os.getpid(), "worker": worker}))
        tmp.replace(Path(state_dir) / f"{os.getpid()}.json")

    httpd = ThreadingHTTPServer(
        (args.host or "127.0.0.1", args.port), make_handler(args, served), bind_and_activate=False
    )
    httpd.allow_reuse_address = True
    try:
        httpd.server_bind()  # vLLM reserves the port first and listens only when the engine is up
    except OSError as e:
        log("ERROR", "api_server.py:1", f"[Errno {e.errno}] error while attempting to bind on address: {e.strerror}")
        os.kill(worker, signal.SIGKILL)
        return 1

    log("INFO", "api_server.py:1797", "vLLM API server version 0.33.0")
    nondefault = {"model_tag": args.model, "host": args.host, "port": args.port, "api_key": [args.api_key]}
    log("INFO", "utils.py:233", f"non-default args: {nondefault}")
    log("INFO", "core.py:93", "Initializing a V1 LLM engine (v0.33.0) with config: ...")
    step = ready_after / 4

    if kind == "tp_heads":
        log("ERROR", "core.py:700", "EngineCore failed to start.")
        print(
            "ValueError: Total number of attention heads (28) must be divisible by tensor parallel size (8).",
            flush=True,
        )
        os.kill(worker, signal.SIGKILL)
        return 1
    if kind == "crash_first" and starts < int(num or 1):
        log("INFO", "gpu_model_runner.py:2000", "Starting to load model ...")
        print("RuntimeError: fake transient failure during start-up", flush=True)
        os._exit(1)

    log("INFO", "gpu_model_runner.py:2000", "Starting to load model ...")
    time.sleep(step)
    if kind == "oom_at_startup":
        log("ERROR", "core.py:700", "EngineCore failed to start.")
        print("Traceback (most recent call last):", flush=True)
        print(
            '  File "/usr/local/lib/python3.12/dist-packages/vllm/model_executor/layers/linear.py", line 412',
            flush=True,
        )
        print(OOM, flush=True)
        print(
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}", flush=True
        )
        os._exit(1)
    log("INFO", "gpu_model_runner.py:2050", "Model loading took 14.2488 GiB and 3.21 seconds")
    log("INFO", "gpu_worker.py:290", "Memory profiling takes 2.31 seconds")
    time.sleep(step)
    log("INFO", "kv_cache_utils.py:1000", "GPU KV cache size: 374,480 tokens")
    log("INFO", "kv_cache_utils.py:1004", "Maximum concurrency for 32,768 tokens per request: 11.43x")
    time.sleep(step)
    log("INFO", "gpu_model_runner.py:3100", "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%")
    log("INFO", "gpu_model_runner.py:3200", "Graph capturing finished in 4 secs, took 0.52 GiB")
    time.sleep(step)
    if kind == "never_ready":
        while True:
            time.sleep(3600)

    httpd.server_activate()
    if state_dir:  # for benchmarks: when the fake became ready, by the wall clock
        (Path(state_dir) / f"ready-{os.getpid()}").write_text(repr(time.time()))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    log("INFO", "api_server.py:1900", f"Starting vLLM API server 0 on http://{args.host}:{args.port}")
    log("INFO", "launcher.py:37", "Available routes are: /health, /v1/models, /v1/completions")
    print(f"INFO:     Started server process [{os.getpid()}]", flush=True)
    print("INFO:     Waiting for application startup.", flush=True)
    print("INFO:     Application startup complete.", flush=True)

    rate = float(os.environ.get("FAKE_VLLM_LOG_RATE", "0"))
    t0 = time.monotonic()
    after = float(num) if num else 0.0
    i = 0
    while True:
        if kind in ("crash_after", "exit_after", "unhealthy_after") and time.monotonic() - t0 >= after:
            if kind == "crash_after":
                if state_dir:
                    (Path(state_dir) / f"crash-{os.getpid()}").write_text(repr(time.time()))
                log("ERROR", "core.py:800", "EngineCore encountered a fatal error.")
                print("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.", flush=True)
                os._exit(1)
            if kind == "exit_after":
                os.kill(worker, signal.SIGTERM)
                os.waitpid(worker, 0)
                # what vLLM 0.26's API server printed when its engine core was killed on a real H100
                # (tests/fixtures/gpu-runs/h100-vllm0.26/h100_q7_32k/vllm.log), before it exited 0
                log(
                    "WARNING",
                    "core_client.py:702",
                    "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup",
                )
                log("ERROR", "async_llm.py:704", "AsyncLLM output_handler failed.")
                print("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.", flush=True)
                return 0
            STATE["healthy"] = False
        if rate > 0:
            i += 1
            log("INFO", "loggers.py:123", f"Engine 000: Avg prompt throughput: {i} tokens/s, Running: 1 reqs")
            target = t0 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:
            time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())
