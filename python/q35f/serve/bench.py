"""`q35f bench serve`: measure a Groq-compatible chat endpoint with the official groq SDK.

The same command measures a local `q35f serve` and Groq's hosted models:

    q35f bench serve --base-url http://127.0.0.1:8000 --model smollm2-135m-instruct
    GROQ_API_KEY=... q35f bench serve            # Groq cloud, llama-3.3-70b-versatile

Per request, all from the client's clock (time.perf_counter), streaming:
- ttft_ms: from sending the request to the first chunk with non-empty content;
- throughput_toks: decode rate, (completion_tokens - 1) / (last content chunk - first content
  chunk): the tokens after the first over the time they took (the first is part of the TTFT);
- latency_ms: from sending the request to the end of the stream;
- the server's own timings when it reports `x_groq.usage` (Groq and q35f serve do).
completion_tokens is the server's `usage.completion_tokens`; an endpoint that reports no usage
gets the count of content chunks instead, and the CSV says so in `tokens_counted_by`.

For each concurrency level, N requests run through a pool of that many threads; the summary is
the median and the 90th percentile of each measure, plus the aggregate rate (all completion tokens
over the level's wall time). Failed requests are counted, never given numbers.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

GROQ_DEFAULT_MODEL = "llama-3.3-70b-versatile"
GROQ_HOST = "api.groq.com"
GROQ_DEFAULT_URL = f"https://{GROQ_HOST}"
DEFAULT_PROMPT = ("Explain in a few paragraphs how a CPU cache works and why it makes programs "
                  "faster.")

CSV_COLUMNS = [
    "method", "model", "endpoint", "concurrency", "requests", "errors", "max_tokens",
    "prompt_tokens", "completion_tokens",
    "ttft_ms", "ttft_p90_ms", "throughput_toks", "throughput_p90_toks",
    "latency_ms", "latency_p90_ms", "aggregate_toks",
    "server_queue_ms", "server_prompt_ms", "server_completion_ms", "server_total_ms",
    "tokens_counted_by", "memory_gb", "power_w",
    "machine", "date", "q35f_version", "source", "note",
]


@dataclass
class RequestResult:
    ok: bool
    error: str = ""
    ttft_ms: float | None = None
    throughput_toks: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_counted_by: str = ""
    server: dict[str, float] | None = None  # queue/prompt/completion/total time, seconds


def normalize_base_url(url: str) -> str:
    """The server root the groq SDK wants: it appends /openai/v1/... itself."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--base-url must start with http:// or https://, got {url!r}")
    if url.endswith("/openai/v1"):
        url = url[: -len("/openai/v1")]
    elif url.endswith("/v1"):
        raise ValueError(f"--base-url {url}: give the server root (e.g. http://127.0.0.1:8000); "
                         "the groq SDK appends /openai/v1/chat/completions itself")
    return url


def measure_request(client, model: str, messages: list[dict], max_tokens: int,
                    temperature: float) -> RequestResult:
    """One streamed completion, timed from the client."""
    import groq
    import httpx

    start = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    try:
        stream = client.chat.completions.create(model=model, messages=messages,
                                                max_tokens=max_tokens, temperature=temperature,
                                                stream=True)
        for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = now
                last = now
                chunks += 1
            if chunk.x_groq is not None and chunk.x_groq.usage is not None:
                usage = chunk.x_groq.usage
            elif getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
    except (groq.APIError, httpx.HTTPError) as err:  # httpx: a stream broken mid-way
        return RequestResult(ok=False, error=_describe(err))
    end = time.perf_counter()
    if first is None:
        return RequestResult(ok=False, error="the stream carried no content")
    result = RequestResult(ok=True, ttft_ms=1e3 * (first - start), latency_ms=1e3 * (end - start))
    if usage is not None:
        result.prompt_tokens = usage.prompt_tokens
        result.completion_tokens = usage.completion_tokens
        result.tokens_counted_by = "server_usage"
        timings = {name: getattr(usage, name, None) for name in
                   ("queue_time", "prompt_time", "completion_time", "total_time")}
        if any(v is not None for v in timings.values()):
            result.server = timings
    else:
        result.completion_tokens = chunks
        result.tokens_counted_by = "content_chunks"
    if result.completion_tokens and result.completion_tokens > 1 and last > first:
        result.throughput_toks = (result.completion_tokens - 1) / (last - first)
    return result


def _describe(err: Exception) -> str:
    import groq

    if isinstance(err, groq.APIStatusError):
        message = err.message
        body = err.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict) and inner.get("message"):
                message = inner["message"]
        return f"HTTP {err.status_code}: {message}"
    if isinstance(err, groq.APIConnectionError):
        cause = err.__cause__ or err
        return f"cannot connect: {cause}"
    return f"{type(err).__name__}: {err}"


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def summarize(results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]

    def values(name):
        return [getattr(r, name) for r in ok if getattr(r, name) is not None]

    def server(name):
        return [1e3 * r.server[name] for r in ok if r.server and r.server.get(name) is not None]

    tokens = values("completion_tokens")
    counted = sorted({r.tokens_counted_by for r in ok})
    return {
        "requests": len(ok), "errors": len(results) - len(ok),
        "prompt_tokens": percentile(values("prompt_tokens"), 50),
        "completion_tokens": percentile(tokens, 50),
        "ttft_ms": percentile(values("ttft_ms"), 50),
        "ttft_p90_ms": percentile(values("ttft_ms"), 90),
        "throughput_toks": percentile(values("throughput_toks"), 50),
        "throughput_p90_toks": percentile(values("throughput_toks"), 90),
        "latency_ms": percentile(values("latency_ms"), 50),
        "latency_p90_ms": percentile(values("latency_ms"), 90),
        "aggregate_toks": sum(tokens) / wall_s if tokens and wall_s > 0 else None,
        "server_queue_ms": percentile(server("queue_time"), 50),
        "server_prompt_ms": percentile(server("prompt_time"), 50),
        "server_completion_ms": percentile(server("completion_time"), 50),
        "server_total_ms": percentile(server("total_time"), 50),
        "tokens_counted_by": "+".join(counted),
    }


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows; a new file gets the header, an existing one must have the same header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = path.exists() and path.stat().st_size > 0
    if exists:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_COLUMNS:
            raise ValueError(f"--csv {path} has different columns ({','.join(header)}); "
                             "give a new file")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if not exists:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--concurrency must be a comma-separated list of integers, got "
                         f"{text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise ValueError(f"--concurrency levels must be >= 1, got {text!r}")
    return levels


def register_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="benchmark a Groq-compatible chat endpoint (q35f serve or Groq cloud)",
        description="Stream N chat completions per concurrency level through the official groq "
        "SDK and report client-side time to first token, decode tokens/s and end-to-end latency "
        "(median and p90), plus the server's x_groq.usage timings. Without --base-url it measures "
        f"Groq's cloud ({GROQ_DEFAULT_URL}, needs GROQ_API_KEY, default model "
        f"{GROQ_DEFAULT_MODEL}).",
    )
    parser.add_argument("--base-url", default=None,
                        help="server root, e.g. http://127.0.0.1:8000 (the SDK appends "
                        "/openai/v1/...); default: $GROQ_BASE_URL, else Groq's cloud")
    parser.add_argument("--model", default=None,
                        help=f"model name (default: {GROQ_DEFAULT_MODEL} on Groq's cloud, else "
                        "the first model the endpoint lists)")
    parser.add_argument("--api-key", default=None,
                        help="bearer token (default: $GROQ_API_KEY for Groq's cloud, "
                        "$Q35F_API_KEY for --base-url)")
    parser.add_argument("-n", "--requests", type=int, default=20,
                        help="measured requests per concurrency level (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,4",
                        help="comma-separated numbers of requests in flight at once "
                        "(default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="max_tokens per request (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature (default: %(default)s)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help="the user message (default: a fixed question about CPU caches)")
    parser.add_argument("--unique-prompts", action="store_true",
                        help="start each request's message with its own number, so no server can "
                        "reuse a cached prompt (TTFT then includes the whole prefill)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured requests first (the first also checks the endpoint; "
                        "default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per request (default: %(default)s)")
    parser.add_argument("--method", default=None,
                        help="label for the CSV's method column (default: 'groq-cloud' or "
                        "'q35f-serve')")
    parser.add_argument("--csv", type=Path, default=None, help="append summary rows to this CSV")
    parser.set_defaults(func=_bench_serve_command)


def _bench_serve_command(args: argparse.Namespace) -> int:
    try:
        import groq
    except ImportError:
        raise ValueError("q35f bench serve needs the groq SDK: pip install 'q35f[serve]'") \
            from None
    from q35f import __version__

    levels = parse_concurrency(args.concurrency)
    if args.requests < 1:
        raise ValueError(f"-n must be >= 1, got {args.requests}")
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")

    base_url = args.base_url or os.environ.get("GROQ_BASE_URL")
    cloud = base_url is None or urlparse(base_url.strip()).hostname == GROQ_HOST
    if cloud:
        api_key = args.api_key or os.environ.get("GROQ_API_KEY")
        if not api_key:
            print("q35f bench serve: GROQ_API_KEY is not set: measuring Groq's cloud needs an "
                  "API key (or give --base-url for another endpoint); nothing was measured",
                  file=sys.stderr)
            return 1
        endpoint = normalize_base_url(base_url) if base_url else GROQ_DEFAULT_URL
    else:
        endpoint = normalize_base_url(base_url)
        # Never $GROQ_API_KEY here: a Groq key is not sent to some other server unasked.
        api_key = args.api_key or os.environ.get("Q35F_API_KEY") or "none"
    import httpx

    # No retries: a retried request would hide its first failure inside a longer latency.
    client = groq.Groq(api_key=api_key, base_url=endpoint, max_retries=0,
                       timeout=httpx.Timeout(args.timeout, connect=min(args.timeout, 15.0)))

    def fail(message: str) -> int:
        print(f"q35f bench serve: {endpoint}: {message}; nothing was measured", file=sys.stderr)
        return 1

    model = args.model
    if model is None:
        if cloud:
            model = GROQ_DEFAULT_MODEL
        else:
            try:
                listed = client.models.list().data
            except groq.APIError as err:
                return fail(f"cannot list models ({_describe(err)})")
            if not listed:
                return fail("the endpoint lists no models; give --model")
            model = listed[0].id

    def messages_for(index: int) -> list[dict]:
        # --unique-prompts: a different first line per request defeats server-side prompt
        # caching, so TTFT includes a full prefill.
        prefix = f"[request {index}]\n" if args.unique_prompts else ""
        return [{"role": "user", "content": prefix + args.prompt}]

    messages = messages_for(-1)
    for _ in range(args.warmup):
        result = measure_request(client, model, messages, args.max_tokens, args.temperature)
        if not result.ok:
            return fail(f"the warm-up request failed ({result.error})")

    method = args.method or ("groq-cloud" if cloud else "q35f-serve")
    print(f"endpoint {endpoint}  model {model}  max_tokens {args.max_tokens}  "
          f"requests {args.requests} per level", file=sys.stderr)
    header = (f"{'conc':>4} {'ok':>4} {'err':>4} | {'ttft ms p50':>11} {'p90':>8} | "
              f"{'tok/s p50':>9} {'p90':>7} | {'latency ms p50':>14} {'p90':>8} | "
              f"{'agg tok/s':>9} | {'srv prompt ms':>13} {'srv compl ms':>12}")
    print(header)
    rows = []
    any_ok = False
    for level in levels:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=level) as pool:
            results = list(pool.map(
                lambda i: measure_request(client, model, messages_for(level * 100000 + i),
                                          args.max_tokens, args.temperature),
                range(args.requests)))
        wall = time.perf_counter() - started
        summary = summarize(results, wall)
        any_ok = any_ok or summary["requests"] > 0
        print(f"{level:>4} {summary['requests']:>4} {summary['errors']:>4} | "
              f"{_fmt(summary['ttft_ms']):>11} {_fmt(summary['ttft_p90_ms']):>8} | "
              f"{_fmt(summary['throughput_toks']):>9} {_fmt(summary['throughput_p90_toks']):>7} | "
              f"{_fmt(summary['latency_ms']):>14} {_fmt(summary['latency_p90_ms']):>8} | "
              f"{_fmt(summary['aggregate_toks']):>9} | "
              f"{_fmt(summary['server_prompt_ms']):>13} "
              f"{_fmt(summary['server_completion_ms']):>12}",
              flush=True)
        errors = sorted({r.error for r in results if not r.ok})
        for message in errors[:3]:
            print(f"  error: {message}", file=sys.stderr)
        if summary["requests"] == 0:
            continue
        rows.append({
            "method": method, "model": model, "endpoint": endpoint, "concurrency": level,
            "max_tokens": args.max_tokens, **summary,
            "machine": machine_description(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "q35f_version": __version__, "source": "measured",
            "note": "client-side timings with the groq SDK (streaming); server_* from x_groq.usage"
                    + ("; unique prompts" if args.unique_prompts else "; identical prompts")
                    + (f"; {summary['errors']} failed requests" if summary["errors"] else ""),
        })
    if not any_ok:
        return fail("every request failed")
    if args.csv is not None:
        append_csv(args.csv, rows)
        print(f"appended {len(rows)} rows to {args.csv}", file=sys.stderr)
    return 0
