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
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from q35f.serve.engine import Engine, Job, QueueFull
from q35f.serve.requests import MAX_BODY_BYTES, RequestError, parse_chat_request

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 16
API_KEY_ENV = "Q35F_API_KEY"
API_PREFIXES = ("/openai/v1", "/v1")
KEEPALIVE_S = 1.0  # an SSE comment this often while a streamed request waits: finds dead clients
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _error(err: RequestError):
    from starlette.responses import JSONResponse

    headers = {"retry-after": "1"} if err.status == 429 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _model_error(message: str) -> dict:
    return {"error": {"message": f"the model failed: {message}", "type": "internal_server_error",
                      "code": "model_error", "param": None}}


class ChatAPI:
    """The HTTP handlers of one served model: auth, models, health, chat completions (plain and
    streamed). Each handler is a method; `routes()` maps the URLs to them."""

    def __init__(self, generator, engine: Engine, api_key: str | None, max_tokens_limit: int):
        from q35f import __version__

        self.generator = generator
        self.engine = engine
        self.api_key = api_key
        self.max_tokens_limit = max_tokens_limit
        self.created = int(time.time())
        self.fingerprint = f"q35f-{__version__}"

    def routes(self) -> list:
        from starlette.routing import Route

        routes = [Route("/health", self.health, methods=["GET"])]
        for prefix in API_PREFIXES:
            routes += [
                Route(f"{prefix}/chat/completions", self.chat_completions, methods=["POST"]),
                Route(f"{prefix}/models", self.list_models, methods=["GET"]),
                Route(f"{prefix}/models/{{model:path}}", self.get_model, methods=["GET"]),
            ]
        return routes

    def check_auth(self, request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.api_key.encode()):
            raise RequestError(401, "Invalid API Key", "invalid_api_key")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.generator.model_name, "object": "model", "created": self.created,
                "owned_by": "q35f", "active": True,
                "context_window": self.generator.context_length,
                "max_completion_tokens": self.max_tokens_limit}

    async def list_models(self, request):
        from starlette.responses import JSONResponse

        try:
            self.check_auth(request)
        except RequestError as err:
            return _error(err)
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def get_model(self, request):
        from starlette.responses import JSONResponse

        try:
            self.check_auth(request)
            if request.path_params["model"] != self.generator.model_name:
                raise RequestError(404, f"The model `{request.path_params['model']}` does not "
                                   "exist", "model_not_found", param="model")
        except RequestError as err:
            return _error(err)
        return JSONResponse(self.model_card())

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.generator.model_name,
                             **self.engine.state()})

    async def chat_completions(self, request):
        from starlette.responses import StreamingResponse

        try:
            self.check_auth(request)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:  # refuse before reading
                raise RequestError(413, f"request body is larger than {MAX_BODY_BYTES} bytes",
                                   "request_too_large")
            chat = parse_chat_request(await request.body(), self.generator,
                                      self.max_tokens_limit)
            job = Job(chat, asyncio.get_running_loop())
            try:
                self.engine.submit(job)
            except QueueFull:
                raise RequestError(429, f"the server is busy: {self.engine.max_queue} requests "
                                   "are already waiting for the model; retry later",
                                   "queue_full", type="rate_limit_error") from None
        except RequestError as err:
            return _error(err)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        request_id = f"req_{uuid.uuid4().hex}"
        if chat.stream:
            return StreamingResponse(self._stream(job, completion_id, request_id),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache",
                                              "x-request-id": request_id})
        return await self._complete(request, job, completion_id, request_id)

    @staticmethod
    async def _next_event(job: Job):
        """The next item from the worker, or None after KEEPALIVE_S without one."""
        try:
            return await asyncio.wait_for(job.events.get(), timeout=KEEPALIVE_S)
        except asyncio.TimeoutError:
            return None

    async def _complete(self, request, job: Job, completion_id: str, request_id: str):
        from starlette.responses import JSONResponse

        parts: list[str] = []
        try:
            while True:
                item = await self._next_event(job)
                if item is None:
                    if await request.is_disconnected():
                        self.engine.cancel(job)
                        return JSONResponse({}, status_code=499)
                    continue
                if item[0] == "text":
                    parts.append(item[1])
                elif item[0] == "error":
                    return JSONResponse(_model_error(item[1]), status_code=500)
                else:
                    _, finish, usage = item
                    break
        finally:
            self.engine.cancel(job)  # no-op unless the handler is being cancelled mid-way
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()),
            "model": self.generator.model_name, "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage, "x_groq": {"id": request_id},
        }, headers={"x-request-id": request_id})

    async def _stream(self, job: Job, completion_id: str, request_id: str):
        created_at = int(time.time())

        def event(body: dict) -> str:
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            return event({"id": completion_id, "object": "chat.completion.chunk",
                          "created": created_at, "model": self.generator.model_name,
                          "system_fingerprint": self.fingerprint,
                          "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                       "finish_reason": finish}], **extra})

        try:
            yield chunk({"role": "assistant", "content": ""}, x_groq={"id": request_id})
            while True:
                item = await self._next_event(job)
                if item is None:
                    yield ": keep-alive\n\n"  # lets a dead client be noticed while queued
                    continue
                if item[0] == "text":
                    yield chunk({"content": item[1]})
                elif item[0] == "error":
                    yield event(_model_error(item[1]))
                    return
                else:
                    _, finish, usage = item
                    yield chunk({}, finish, x_groq={"id": request_id, "usage": usage})
                    if job.request.include_usage:  # OpenAI's stream_options.include_usage
                        yield event({"id": completion_id, "object": "chat.completion.chunk",
                                     "created": created_at, "model": self.generator.model_name,
                                     "choices": [], "usage": usage})
                    yield "data: [DONE]\n\n"
                    return
        finally:
            # Runs when the stream ends and when Starlette cancels it because the client left.
            self.engine.cancel(job)


async def _http_error(request, exc):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(RequestError(exc.status_code, f"{request.method} {request.url.path}: "
                               f"{exc.detail}", code))


async def _server_error(request, exc: Exception):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": f"internal error: {type(exc).__name__}: {exc}",
                                   "type": "internal_server_error", "code": "internal_error",
                                   "param": None}}, status_code=500)


def create_app(generator, *, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               max_tokens: int | None = None):
    """A Starlette app serving `generator` (see q35f.runtime.generate.Generator)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException

    max_tokens_limit = int(max_tokens or generator.context_length)
    if max_tokens_limit < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {max_tokens_limit}")
    engine = Engine(generator, max_queue)
    api = ChatAPI(generator, engine, api_key, max_tokens_limit)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = Starlette(routes=api.routes(), lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
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
