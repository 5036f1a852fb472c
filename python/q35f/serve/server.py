"""`q35f serve`: one q35f model behind the OpenAI-compatible chat API that Groq speaks.

The groq SDK (or any OpenAI-style client) talks to it unchanged:

    POST /openai/v1/chat/completions   (also /v1/chat/completions)
    GET  /openai/v1/models             (also /v1/models, /openai/v1/models/{id})
    GET  /health                       (no auth; queue state and counters, for readiness checks)

Request and response bodies follow the groq SDK's types (groq/types/chat/chat_completion*.py).
With `stream: true` the answer is server-sent events, one chunk per piece of decoded text as the
model produces it; the last chunk carries `finish_reason` and `x_groq.usage` with the token counts
and Groq's timings (`queue_time`, `prompt_time`, `completion_time`, `total_time`, in seconds), then
`data: [DONE]`.

Concurrency model: the model runs in one worker thread, one request at a time (the kernels
release the GIL, but a single model has a single KV cache). Requests wait in a FIFO of at most
`--max-queue` entries; when it is full the server answers 429. A request whose client goes away is
cancelled: removed from the queue, or stopped after the token being computed, freeing the model.

Every bad request gets a 4xx with an OpenAI/Groq-shaped body `{"error": {"message", "type",
"code", "param"}}`; a failure inside the model fails that request only.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 16
API_KEY_ENV = "Q35F_API_KEY"
API_PREFIXES = ("/openai/v1", "/v1")
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_STOP_SEQUENCES = 4
KEEPALIVE_S = 1.0  # an SSE comment this often while a streamed request waits: finds dead clients
ROLES = ("system", "user", "assistant", "tool")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------------
# Errors and request validation (pure: no server needed)


class RequestError(Exception):
    """A request the server refuses; becomes `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, code: str,
                 type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code,
                          "param": self.param}}


@dataclass
class ChatRequest:
    """A validated chat completion request, ready for the model."""

    model: str
    messages: list[dict[str, str]]
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def _bad(message: str, param: str | None = None, code: str = "invalid_parameter") -> RequestError:
    return RequestError(400, message, code, param=param)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number, got {json.dumps(value)}", name)
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low:g} and {high:g}, got {value}", name)
    return float(value)


def _message_text(content: Any, index: int) -> str:
    """Message content as text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise _bad(f"messages[{index}].content: only text parts are supported",
                           f"messages[{index}].content", "invalid_messages")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{index}].content must be a string or a list of text parts",
               f"messages[{index}].content", "invalid_messages")


def parse_messages(raw: Any) -> list[dict[str, str]]:
    if raw is None:
        raise _bad("'messages' is required", "messages", "invalid_messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty list of {role, content} objects",
                   "messages", "invalid_messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}] must be an object", f"messages[{index}]",
                       "invalid_messages")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{index}].role must be one of {', '.join(ROLES)}, got "
                       f"{json.dumps(role)}", f"messages[{index}].role", "invalid_messages")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        messages.append({"role": role, "content": _message_text(content, index)})
    return messages


def parse_chat_request(raw_body: bytes, generator, max_tokens_limit: int) -> ChatRequest:
    """Validate a chat completion body against the served model; raise RequestError if bad."""
    if len(raw_body) > MAX_BODY_BYTES:
        raise RequestError(413, f"request body is larger than {MAX_BODY_BYTES} bytes",
                           "request_too_large")
    try:
        body = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _bad(f"the request body is not valid JSON: {err}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_json")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required (a string)", "model", "invalid_model")
    if model != generator.model_name:
        raise RequestError(404, f"The model `{model}` does not exist; this server serves "
                           f"`{generator.model_name}`", "model_not_found", param="model")

    messages = parse_messages(body.get("messages"))

    # Features q35f does not implement are refused, never silently ignored.
    if body.get("n") not in (None, 1):
        raise _bad("'n' must be 1: one choice per request", "n")
    if body.get("tools"):
        raise _bad("tools are not supported by q35f serve", "tools")
    if body.get("logprobs"):
        raise _bad("logprobs are not supported by q35f serve", "logprobs")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise _bad("only response_format {\"type\": \"text\"} is supported", "response_format")

    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = max_tokens_limit
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _bad(f"'{name}' must be an integer, got {json.dumps(max_tokens)}", name)
    elif not 1 <= max_tokens <= max_tokens_limit:
        raise _bad(f"'{name}' must be between 1 and {max_tokens_limit}, got {max_tokens}", name)

    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:  # keep only the most likely token: the same as greedy decoding
        temperature, top_p = 0.0, 1.0

    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("'seed' must be an integer", "seed")

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP_SEQUENCES
            and all(isinstance(s, str) and s for s in stop)):
        raise _bad(f"'stop' must be a non-empty string or a list of at most "
                   f"{MAX_STOP_SEQUENCES} non-empty strings", "stop")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(options.get("include_usage", False))

    try:
        prompt_ids = list(generator.encode_chat(messages))
    except Exception as err:  # a template that rejects this conversation
        raise _bad(f"could not apply the chat template: {err}", "messages",
                   "invalid_messages") from None
    context = generator.context_length
    if len(prompt_ids) >= context:
        raise _bad(f"the prompt is {len(prompt_ids)} tokens; the model's context is {context} "
                   f"tokens and at least one must be left for the answer", "messages",
                   "context_length_exceeded")
    # A long prompt leaves less room: generation stops with "length" at the end of the context.
    max_tokens = min(max_tokens, context - len(prompt_ids))

    return ChatRequest(model=model, messages=messages, prompt_ids=prompt_ids,
                       max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                       stop=stop, stream=stream, include_usage=include_usage)


class StopFilter:
    """Cuts the output before the first stop string to complete; holds back text that may begin
    one. Works character by character, so the result does not depend on how text is chunked."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text that is safe to send now, and whether a stop string was reached."""
        if not self.stops:
            return text, False
        buffer = self.pending
        for char in text:
            buffer += char
            ending = [len(s) for s in self.stops if buffer.endswith(s)]
            if ending:  # of the stops completed here, the longest starts first
                self.pending = ""
                return buffer[:len(buffer) - max(ending)], True
        # Earlier text cannot be part of a stop: only the longest suffix that begins one is kept.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buffer)), hold, -1):
                if buffer.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buffer[len(buffer) - hold:] if hold else ""
        return buffer[:len(buffer) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


# ---------------------------------------------------------------------------------------------
# The engine: one worker thread owns the model; requests wait in a bounded FIFO


class QueueFull(Exception):
    pass


class Job:
    """One request's trip through the engine; the worker reports to it through an asyncio queue.

    Items put on `events`: ("text", str) for each piece of visible text, then exactly one of
    ("done", finish_reason, usage_dict) or ("error", message).
    """

    def __init__(self, request: ChatRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = "new"  # new -> waiting -> running -> done (changed under Engine._lock)
        self.enqueued_at = time.perf_counter()

    def emit(self, *item) -> None:
        """Called from the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


class Engine:
    def __init__(self, generator, max_queue: int):
        if max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {max_queue}")
        self.generator = generator
        self.max_queue = max_queue
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self.counters = {"accepted": 0, "completed": 0, "cancelled": 0, "rejected_queue_full": 0,
                         "failed": 0}
        self._thread = threading.Thread(target=self._work, name="q35f-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in self._waiting:
                job.cancelled.set()
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"running": int(self._running is not None), "waiting": len(self._waiting),
                    "max_queue": self.max_queue, **self.counters}

    def submit(self, job: Job) -> None:
        """Queue a job; raise QueueFull when `max_queue` jobs already wait behind a running one."""
        with self._lock:
            in_system = len(self._waiting) + (self._running is not None)
            if self._closed or in_system >= 1 + self.max_queue:
                self.counters["rejected_queue_full"] += 1
                raise QueueFull
            job.state = "waiting"
            job.enqueued_at = time.perf_counter()
            self._waiting.append(job)
            self.counters["accepted"] += 1
            self._lock.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, stop it if it runs; no-op when done."""
        with self._lock:
            if job.state in ("new", "done") or job.cancelled.is_set():
                return
            job.cancelled.set()
            self.counters["cancelled"] += 1
            if job.state == "waiting":
                self._waiting.remove(job)
                job.state = "done"

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                self._running = job
            try:
                result = self._generate(job)
                error = None
            except Exception as err:  # the model failed: fail this request, keep serving
                result, error = None, f"{type(err).__name__}: {err}"
                logging.getLogger("q35f.serve.server").error("request failed in the model",
                                                      exc_info=True)
            with self._lock:
                self._running = None
                job.state = "done"
                if error is not None:
                    self.counters["failed"] += 1
                elif not job.cancelled.is_set():
                    self.counters["completed"] += 1
            if error is not None:
                job.emit("error", error)
            else:
                job.emit("done", *result)

    def _generate(self, job: Job) -> tuple[str, dict[str, Any]]:
        request = job.request
        started = time.perf_counter()
        first = None
        completion_tokens = 0
        finish = None
        stop = StopFilter(request.stop)
        stream = self.generator.stream(request.prompt_ids, request.max_tokens,
                                       temperature=request.temperature, top_p=request.top_p,
                                       seed=request.seed)
        try:
            for event in stream:
                if first is None:
                    first = time.perf_counter()
                completion_tokens += 1
                text, stopped = stop.feed(event.text or "")
                if text:
                    job.emit("text", text)
                if stopped:
                    finish = "stop"
                    break
                if event.finish_reason:
                    finish = event.finish_reason
                    break
                if job.cancelled.is_set():
                    finish = "stop"
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        tail = stop.flush()  # text held back for a stop string that never came
        if tail:
            job.emit("text", tail)
        end = time.perf_counter()
        first = end if first is None else first
        prompt_time, completion_time = first - started, end - first
        usage = {
            "prompt_tokens": len(request.prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(request.prompt_ids) + completion_tokens,
            "queue_time": started - job.enqueued_at,
            "prompt_time": prompt_time,
            "completion_time": completion_time,
            "total_time": prompt_time + completion_time,
        }
        return finish or "length", usage


# ---------------------------------------------------------------------------------------------
# The ASGI app


def create_app(generator, *, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               max_tokens: int | None = None):
    """A Starlette app serving `generator` (see q35f.runtime.generate.Generator)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from q35f import __version__

    max_tokens_limit = int(max_tokens or generator.context_length)
    if max_tokens_limit < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {max_tokens_limit}")
    engine = Engine(generator, max_queue)
    created = int(time.time())
    fingerprint = f"q35f-{__version__}"

    def error(err: RequestError) -> JSONResponse:
        headers = {"retry-after": "1"} if err.status == 429 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 api_key.encode()):
            raise RequestError(401, "Invalid API Key", "invalid_api_key")

    def model_card() -> dict[str, Any]:
        return {"id": generator.model_name, "object": "model", "created": created,
                "owned_by": "q35f", "active": True, "context_window": generator.context_length,
                "max_completion_tokens": max_tokens_limit}

    async def list_models(request: Request):
        try:
            check_auth(request)
        except RequestError as err:
            return error(err)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request):
        try:
            check_auth(request)
            if request.path_params["model"] != generator.model_name:
                raise RequestError(404, f"The model `{request.path_params['model']}` does not "
                                   "exist", "model_not_found", param="model")
        except RequestError as err:
            return error(err)
        return JSONResponse(model_card())

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": generator.model_name, **engine.state()})

    async def chat_completions(request: Request):
        try:
            check_auth(request)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:  # refuse before reading
                raise RequestError(413, f"request body is larger than {MAX_BODY_BYTES} bytes",
                                   "request_too_large")
            chat = parse_chat_request(await request.body(), generator, max_tokens_limit)
            job = Job(chat, asyncio.get_running_loop())
            try:
                engine.submit(job)
            except QueueFull:
                raise RequestError(429, f"the server is busy: {engine.max_queue} requests are "
                                   "already waiting for the model; retry later",
                                   "queue_full", type="rate_limit_error") from None
        except RequestError as err:
            return error(err)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        request_id = f"req_{uuid.uuid4().hex}"
        if chat.stream:
            return StreamingResponse(_stream(job, completion_id, request_id),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache",
                                              "x-request-id": request_id})
        return await _complete(request, job, completion_id, request_id)

    async def _next_event(job: Job):
        """The next item from the worker, or None after KEEPALIVE_S without one."""
        try:
            return await asyncio.wait_for(job.events.get(), timeout=KEEPALIVE_S)
        except asyncio.TimeoutError:
            return None

    async def _complete(request: Request, job: Job, completion_id: str, request_id: str):
        parts: list[str] = []
        try:
            while True:
                item = await _next_event(job)
                if item is None:
                    if await request.is_disconnected():
                        engine.cancel(job)
                        return JSONResponse({}, status_code=499)
                    continue
                if item[0] == "text":
                    parts.append(item[1])
                elif item[0] == "error":
                    return JSONResponse(
                        {"error": {"message": f"the model failed: {item[1]}",
                                   "type": "internal_server_error", "code": "model_error",
                                   "param": None}}, status_code=500)
                else:
                    _, finish, usage = item
                    break
        finally:
            engine.cancel(job)  # no-op unless the handler is being cancelled mid-way
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()),
            "model": generator.model_name, "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage, "x_groq": {"id": request_id},
        }, headers={"x-request-id": request_id})

    async def _stream(job: Job, completion_id: str, request_id: str):
        created_at = int(time.time())

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": completion_id, "object": "chat.completion.chunk",
                    "created": created_at, "model": generator.model_name,
                    "system_fingerprint": fingerprint,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""}, x_groq={"id": request_id})
            while True:
                item = await _next_event(job)
                if item is None:
                    yield ": keep-alive\n\n"  # lets a dead client be noticed while queued
                    continue
                if item[0] == "text":
                    yield chunk({"content": item[1]})
                elif item[0] == "error":
                    body = {"error": {"message": f"the model failed: {item[1]}",
                                      "type": "internal_server_error", "code": "model_error",
                                      "param": None}}
                    yield f"data: {json.dumps(body)}\n\n"
                    return
                else:
                    _, finish, usage = item
                    yield chunk({}, finish, x_groq={"id": request_id, "usage": usage})
                    if job.request.include_usage:  # OpenAI's stream_options.include_usage
                        body = {"id": completion_id, "object": "chat.completion.chunk",
                                "created": created_at, "model": generator.model_name,
                                "choices": [], "usage": usage}
                        yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
        finally:
            # Runs when the stream ends and when Starlette cancels it because the client left.
            engine.cancel(job)

    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(RequestError(exc.status_code, f"{request.method} {request.url.path}: "
                                  f"{exc.detail}", code))

    async def server_error(request: Request, exc: Exception):
        return JSONResponse({"error": {"message": f"internal error: {type(exc).__name__}: {exc}",
                                       "type": "internal_server_error", "code": "internal_error",
                                       "param": None}}, status_code=500)

    routes = [Route("/health", health, methods=["GET"])]
    for prefix in API_PREFIXES:
        routes += [
            Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
            Route(f"{prefix}/models", list_models, methods=["GET"]),
            Route(f"{prefix}/models/{{model:path}}", get_model, methods=["GET"]),
        ]

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.engine = engine
    return app


# ---------------------------------------------------------------------------------------------
# Command line


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model behind the OpenAI/Groq chat completions API",
        description="Serve MODEL behind the OpenAI-compatible chat API that Groq speaks "
        "(POST /openai/v1/chat/completions, GET /openai/v1/models; /v1/... too), with "
        "streaming and Groq's x_groq.usage timings. Use it from the groq SDK with "
        "groq.Groq(base_url='http://HOST:PORT', api_key=KEY). One request runs at a time; "
        "others wait in a bounded queue (429 when full).",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="a GGUF file or a q35f-quantized directory (default: the embedded "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; "
                        "unset means no auth)")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="requests that may wait while one runs; more get 429 "
                        "(default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="largest max_tokens a request may ask for, and the value used when "
                        "it gives none (default: the model's context length)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn log level (default: %(default)s)")
    parser.set_defaults(func=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as err:
        raise ValueError(f"q35f serve needs the 'serve' extra: pip install 'q35f[serve]' "
                         f"({err})") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.api_key is not None and not args.api_key:
        raise ValueError("--api-key must not be empty")

    from q35f.runtime.generate import load_generator

    if args.model is None:
        from q35f.io.checkpoint import default_model_path

        path = Path(default_model_path())
    else:
        path = Path(args.model)
    if not path.exists():
        raise FileNotFoundError(f"MODEL {path} does not exist")
    generator = load_generator(path)
    if args.max_tokens is not None and args.max_tokens > generator.context_length:
        raise ValueError(f"--max-tokens {args.max_tokens} is larger than the model's context "
                         f"({generator.context_length})")
    return run_server(generator, host=args.host, port=args.port, api_key=args.api_key,
                      max_queue=args.max_queue, max_tokens=args.max_tokens,
                      log_level=args.log_level)


def run_server(generator, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               max_tokens: int | None = None, log_level: str = "info") -> int:
    import uvicorn

    app = create_app(generator, api_key=api_key, max_queue=max_queue, max_tokens=max_tokens)
    if host not in LOOPBACK_HOSTS and api_key is None:
        print(f"q35f serve: warning: listening on {host} without --api-key; anyone who can reach "
              "this port can use the model", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"q35f serve: {generator.model_name} (context {generator.context_length}) at "
          f"http://{shown}:{port}/openai/v1 — groq.Groq(base_url='http://{shown}:{port}')",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    return 0
