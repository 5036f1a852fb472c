"""`q35f serve` through the official OpenAI SDK, a second real client next to groq's.

The OpenAI SDK appends /chat/completions, /models to its base_url, so it points at the server's
/v1 prefix. The server process is conftest.py's `server` (the embedded SmolLM2-135M-Instruct on
127.0.0.1 with an API key, a queue of one); requests ask for a handful of tokens.
"""

from __future__ import annotations

import threading

import openai
import pytest

from conftest import check_short_answer

PROMPT = [{"role": "user", "content": "Name three colors."}]
LONG_PROMPT = [{"role": "user", "content": "Write a long story about a dragon."}]


def client(server, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key or server.api_key,
                         max_retries=0, timeout=server.request_timeout)


@pytest.fixture(scope="module")
def model_name(server) -> str:
    return client(server).models.list().data[0].id


@pytest.fixture(scope="module")
def greedy_answer(server, model_name):
    """The greedy 6-token answer to PROMPT after one priming request, so that later requests
    with this prompt reuse the same cached prefix and decode bit-identical logits."""
    c = client(server)
    c.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=1, temperature=0)
    return c.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=6,
                                     temperature=0)


def test_models_list_and_retrieve(server, model_name):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [model_name] and "SmolLM2" in model_name
    card = client(server).models.retrieve(model_name)
    assert card.id == model_name and card.object == "model" and card.owned_by == "q35f"


def test_chat_completion(greedy_answer, model_name):
    answer = greedy_answer
    assert isinstance(answer, openai.types.chat.ChatCompletion)
    check_short_answer(answer, model_name)
    assert answer.choices[0].index == 0


def test_max_completion_tokens_is_honoured(server, model_name, greedy_answer):
    """OpenAI's newer name for max_tokens."""
    answer = client(server).chat.completions.create(
        model=model_name, messages=PROMPT, max_completion_tokens=2, temperature=0)
    assert answer.usage.completion_tokens <= 2
    assert greedy_answer.choices[0].message.content.startswith(answer.choices[0].message.content)


def test_streaming_gives_the_same_text_and_usage_last(server, model_name, greedy_answer):
    stream = client(server).chat.completions.create(
        model=model_name, messages=PROMPT, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunk = chunks[-1]  # include_usage: a last chunk without choices
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == greedy_answer.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == greedy_answer.usage.prompt_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == greedy_answer.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert reasons == [greedy_answer.choices[0].finish_reason]


def test_stop_sequence(server, model_name, greedy_answer):
    text = greedy_answer.choices[0].message.content
    words = text.split()
    assert len(words) >= 2, text
    cut = client(server).chat.completions.create(
        model=model_name, messages=PROMPT, max_tokens=6, temperature=0, stop=words[1])
    assert cut.choices[0].message.content == text[:text.index(words[1])]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_are_the_sdk_exceptions_with_the_server_codes(server, model_name):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-9000", messages=PROMPT, max_tokens=1)
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=model_name, messages=[], max_tokens=1)
    assert err.value.code == "invalid_messages" and "messages" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=model_name, messages=PROMPT,
                                  max_tokens=server.max_tokens + 1, stream=True)
    assert err.value.code == "invalid_parameter"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=1, n=2)
    assert err.value.code == "invalid_parameter" and err.value.type == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError) as err:
        client(server, api_key="wrong-key").chat.completions.create(
            model=model_name, messages=PROMPT, max_tokens=1)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    assert server.health()["status"] == "ok"


def test_a_full_queue_is_a_rate_limit_error(server, model_name):
    """One request runs, one waits (--max-queue 1): a third gets 429, which the SDK raises as
    RateLimitError; closing the running stream lets the waiting one finish."""
    c = client(server)
    server.wait_for(lambda s: s["running"] == 0 and s["waiting"] == 0, "an idle server")
    running = c.chat.completions.create(model=model_name, messages=LONG_PROMPT,
                                        max_tokens=server.max_tokens, temperature=0, stream=True)
    for chunk in running:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    result = {}

    def waiting_request():
        try:
            result["answer"] = c.chat.completions.create(model=model_name, messages=PROMPT,
                                                         max_tokens=1, temperature=0)
        except Exception as err:  # reported by the assertion below
            result["error"] = err

    waiter = threading.Thread(target=waiting_request)
    waiter.start()
    try:
        server.wait_for(lambda s: s["waiting"] == 1, "the second request to queue")
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=1)
        assert err.value.status_code == 429 and err.value.code == "queue_full"
    finally:
        running.close()
        waiter.join(timeout=server.request_timeout)
    assert "error" not in result, result.get("error")
    assert result["answer"].usage.completion_tokens == 1
