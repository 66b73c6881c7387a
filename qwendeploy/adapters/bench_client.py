"""Driving a running OpenAI-compatible server: vLLM's own ``vllm bench serve`` where it is installed, else a small
asyncio client of ours that measures the same things (TTFT, TPOT, output tokens/s) over streamed completions.

The built-in client sends ``POST /v1/completions`` with ``"stream": true`` and a prompt of ``input_len`` random token
ids (the completions API takes token ids, so no tokenizer is needed and the prompt length is exact), asks for
``output_len`` tokens with ``ignore_eos`` (a vLLM extension) and counts the streamed tokens from the final
``usage`` chunk (``stream_options.include_usage``), else one per streamed chunk.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qwendeploy.core.bench import RequestTiming, Run, summarize
from qwendeploy.errors import QwendeployError


class BenchFailed(QwendeployError):
    """The benchmark could not run (server unreachable, the client failed)."""

    exit_code = 1


@dataclass(frozen=True)
class Load:
    """One level of the sweep."""

    concurrency: int
    num_prompts: int
    input_len: int
    output_len: int


# ---------------------------------------------------------------------------------------------- vLLM's client


def vllm_bench_argv(
    vllm_bin: str, base_url: str, model: str, served: str, load: Load, result_dir: Path, filename: str, seed: int = 0
) -> list[str]:
    """``vllm bench serve`` for one level (flag names as in vLLM's ``vllm/benchmarks/serve.py``)."""
    argv = [
        vllm_bin,
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        base_url,
        "--endpoint",
        "/v1/completions",
        "--model",
        model,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(load.input_len),
        "--random-output-len",
        str(load.output_len),
        "--ignore-eos",
        "--max-concurrency",
        str(load.concurrency),
        "--num-prompts",
        str(load.num_prompts),
        "--request-rate",
        "inf",
        "--seed",
        str(seed),
        "--percentile-metrics",
        "ttft,tpot,itl",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        filename,
        "--disable-tqdm",
    ]
    if served != model:
        argv += ["--served-model-name", served]
    return argv


def run_vllm_bench(
    argv: list[str],
    env: Mapping[str, str],
    result_path: Path,
    concurrency: int,
    on_line: Callable[[str], None] | None = None,
) -> Run:
    """Run one ``vllm bench serve`` level and read the JSON it saved.

    Raises:
        BenchFailed: it exited non-zero or saved no result (the message quotes its last lines).
    """
    tail: list[str] = []
    with subprocess.Popen(
        argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = [*tail[-19:], line]
            if on_line is not None:
                on_line(line)
        code = proc.wait()
    if code != 0 or not result_path.is_file():
        last = "\n".join(tail[-8:])
        raise BenchFailed(
            f"`vllm bench serve` at concurrency {concurrency} exited {code}"
            + ("" if result_path.is_file() else " without saving a result")
            + (f"; its last lines:\n{last}" if last else "."),
            hint="Run the command printed with --dry-run yourself, or --client builtin to use qwendeploy's client.",
        )
    try:
        data = json.loads(result_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BenchFailed(f"{result_path}: not the JSON `vllm bench serve` writes ({e}).") from None
    return Run.from_vllm(concurrency, data)


# ---------------------------------------------------------------------------------------------- built-in client


async def _read_headers(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = await reader.readline()
    parts = status.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response: {status[:80]!r}")
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _body_lines(reader: asyncio.StreamReader, chunked: bool) -> Any:
    """The response body line by line, de-chunked."""
    if not chunked:
        while line := await reader.readline():
            yield line
        return
    pending = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            break
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        data = await reader.readexactly(size)
        await reader.readline()  # the CRLF after each chunk
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line + b"\n"
    if pending:
        yield pending


async def one_request(
    base_url: str, model: str, load: Load, api_key: str | None, rng: random.Random, timeout_s: float
) -> RequestTiming:
    """One streamed completion; never raises (a failure is a timing with ``ok=False``)."""
    u = urlsplit(base_url)
    host, port = u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)
    path = (u.path.rstrip("/") or "") + "/v1/completions"
    body = json.dumps(
        {
            "model": model,
            "prompt": [rng.randrange(1000, 30000) for _ in range(load.input_len)],
            "max_tokens": load.output_len,
            "min_tokens": load.output_len,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Accept: text/event-stream",
        "Connection: close",
    ]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    start = time.perf_counter()
    try:
        return await asyncio.wait_for(_stream(host, port, u.scheme == "https", head, body, load, start), timeout_s)
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        return RequestTiming(False, 0.0, time.perf_counter() - start, 0, 0, f"{type(e).__name__}: {e}")


async def _stream(
    host: str, port: int, tls: bool, head: list[str], body: bytes, load: Load, start: float
) -> RequestTiming:
    ttft = 0.0
    chunks = 0
    usage_tokens: int | None = None
    reader, writer = await asyncio.open_connection(host, port, ssl=True if tls else None)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status, headers = await _read_headers(reader)
        if status != 200:
            text = (await reader.read(300)).decode("utf-8", "replace")
            return RequestTiming(False, 0.0, time.perf_counter() - start, 0, 0, f"HTTP {status}: {text}")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        async for raw in _body_lines(reader, chunked):
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            msg = json.loads(data)
            if msg.get("usage") and msg["usage"].get("completion_tokens") is not None:
                usage_tokens = int(msg["usage"]["completion_tokens"])
            choices = msg.get("choices") or []
            if choices and choices[0].get("text"):
                if chunks == 0:
                    ttft = time.perf_counter() - start
                chunks += 1
    finally:
        writer.close()
    latency = time.perf_counter() - start
    if chunks == 0:
        return RequestTiming(False, 0.0, latency, 0, 0, "no token streamed")
    tokens = usage_tokens if usage_tokens is not None else chunks
    return RequestTiming(True, ttft, latency, tokens, load.input_len)


async def _level(
    base_url: str,
    model: str,
    load: Load,
    api_key: str | None,
    seed: int,
    timeout_s: float,
    on_done: Callable[[RequestTiming], None] | None,
) -> Run:
    rng = random.Random(seed)
    sem = asyncio.Semaphore(load.concurrency)
    timings: list[RequestTiming] = []

    async def go() -> None:
        async with sem:
            t = await one_request(base_url, model, load, api_key, rng, timeout_s)
        timings.append(t)
        if on_done is not None:
            on_done(t)

    start = time.perf_counter()
    await asyncio.gather(*(go() for _ in range(load.num_prompts)))
    return summarize(load.concurrency, timings, time.perf_counter() - start)


def run_builtin(
    base_url: str,
    model: str,
    load: Load,
    *,
    api_key: str | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
    on_done: Callable[[RequestTiming], None] | None = None,
) -> Run:
    """One level of the sweep with qwendeploy's client."""
    return asyncio.run(_level(base_url, model, load, api_key, seed, timeout_s, on_done))


# ---------------------------------------------------------------------------------------------- the server


def served_models(base_url: str, api_key: str | None, timeout_s: float = 5.0) -> list[str]:
    """``GET /v1/models``: the served model names.

    Raises:
        BenchFailed: the server does not answer (the message names the URL).
    """
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base_url.rstrip("/") + "/v1/models")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            doc = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        hint = "Set --api-key-env to the variable holding the server's key." if e.code == 401 else None
        raise BenchFailed(f"{base_url}/v1/models answered HTTP {e.code}.", hint=hint) from None
    except (OSError, ValueError) as e:
        raise BenchFailed(
            f"No OpenAI-compatible server answers at {base_url} ({e}).",
            hint="Start it first (qwendeploy serve PROFILE), or give its URL.",
        ) from None
    return [str(m.get("id")) for m in doc.get("data", []) if isinstance(m, dict)]


def api_key_from(env_name: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key in the named variable (None when no name); BenchFailed when the name is given but unset."""
    if not env_name:
        return None
    value = (environ if environ is not None else os.environ).get(env_name)
    if not value:
        raise BenchFailed(f"{env_name} is not set; it should hold the server's API key.", exit_code=2)
    return value
