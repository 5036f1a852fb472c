"""Chat completion requests: validation of the JSON body (OpenAI/Groq field names and ranges) into
a ChatRequest, the errors the server answers with, and the stop-string filter. Pure: no server
or model needed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_STOP_SEQUENCES = 4
ROLES = ("system", "user", "assistant", "tool")


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
