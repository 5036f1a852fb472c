"""`q35f serve` and `q35f bench serve`: the real groq SDK against a real server process.

One `q35f serve` subprocess (conftest.py's `server`: the embedded SmolLM2-135M-Instruct,
127.0.0.1, a free port, an API key, a queue of one) serves every test; requests ask for a handful
of tokens so the module stays quick on two cores. The fixture always stops the server.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading

import groq
import httpx
import pytest

from conftest import check_short_answer
from hypothesis import given
from hypothesis import strategies as st

from q35f import cli
from q35f.serve.bench import CSV_COLUMNS, append_csv, normalize_base_url
from q35f.serve.requests import StopFilter

PROMPT = [{"role": "user", "content": "Name three colors."}]
LONG_PROMPT = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture(scope="module")
def model_name(server) -> str:
    return server.client().models.list().data[0].id


@pytest.fixture(scope="module")
def greedy_answer(server, model_name):
    """The greedy 6-token answer to PROMPT, after one priming request (so every later request with
    this prompt sees the same KV-cache reuse and hence bit-identical logits)."""
    client = server.client()
    client.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=1,
                                   temperature=0)
    return client.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=6,
                                          temperature=0)


# --- the API as the groq SDK sees it ----------------------------------------------------------


def test_models_endpoint_lists_the_served_model(server, model_name):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [model_name]
    assert "SmolLM2" in model_name
    card = server.client().models.retrieve(model_name)
    assert card.id == model_name and card.owned_by == "q35f"
    # The OpenAI-style prefix serves the same thing.
    plain = httpx.get(f"{server.url}/v1/models",
                      headers={"authorization": f"Bearer {server.api_key}"}).json()
    assert plain["data"][0]["id"] == model_name
    assert plain["data"][0]["context_window"] > server.max_tokens


def test_non_streaming_completion_has_groq_usage(greedy_answer, model_name):
    answer = greedy_answer
    assert isinstance(answer, groq.types.chat.ChatCompletion)
    check_short_answer(answer, model_name)
    usage = answer.usage
    assert usage.queue_time >= 0 and usage.prompt_time > 0 and usage.completion_time >= 0
    assert usage.total_time == pytest.approx(usage.prompt_time + usage.completion_time)
    assert answer.x_groq.id.startswith("req_")


def test_streaming_completion_sends_chunks_then_usage(server, model_name, greedy_answer):
    stream = server.client().chat.completions.create(
        model=model_name, messages=PROMPT, max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    assert all(isinstance(c, groq.types.chat.ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert pieces and all(pieces)
    # Greedy decoding: the streamed text is the non-streamed answer, piece by piece.
    assert "".join(pieces) == greedy_answer.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == greedy_answer.choices[0].finish_reason
    usage = last.x_groq.usage
    assert usage.completion_tokens == greedy_answer.usage.completion_tokens
    assert usage.prompt_tokens == greedy_answer.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    for name in ("queue_time", "prompt_time", "completion_time", "total_time"):
        assert getattr(usage, name) is not None and getattr(usage, name) >= 0
    assert last.x_groq.id == chunks[0].x_groq.id


def test_stop_sequence_cuts_the_answer(server, model_name, greedy_answer):
    text = greedy_answer.choices[0].message.content
    words = text.split()
    assert len(words) >= 2, text
    stop = words[1]
    cut = server.client().chat.completions.create(
        model=model_name, messages=PROMPT, max_tokens=6, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_raw_sse_stream_ends_with_done(server, model_name, greedy_answer):
    body = {"model": model_name, "messages": PROMPT, "max_tokens": 2, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {server.api_key}"},
                      timeout=server.request_timeout) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines()
                  if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])  # include_usage: a last chunk with no choices
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 2


# --- bad requests: 4xx with an error body, and the server lives on ----------------------------

TOO_LONG = "hello " * 9000  # more tokens than the model's 8192-token context


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    ({"messages": PROMPT}, 400, "invalid_model"),
    ({"model": "no-such-model", "messages": PROMPT}, 404, "model_not_found"),
    ({"model": "MODEL"}, 400, "invalid_messages"),
    ({"model": "MODEL", "messages": []}, 400, "invalid_messages"),
    ({"model": "MODEL", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "invalid_messages"),
    ({"model": "MODEL", "messages": [{"role": "user", "content": 7}]}, 400, "invalid_messages"),
    ({"model": "MODEL", "messages": PROMPT, "max_tokens": 0}, 400, "invalid_parameter"),
    ({"model": "MODEL", "messages": PROMPT, "max_tokens": "LIMIT+1"}, 400,
     "invalid_parameter"),
    ({"model": "MODEL", "messages": PROMPT, "max_completion_tokens": -3}, 400,
     "invalid_parameter"),
    ({"model": "MODEL", "messages": PROMPT, "max_tokens": "ten"}, 400, "invalid_parameter"),
    ({"model": "MODEL", "messages": PROMPT, "temperature": 3}, 400, "invalid_parameter"),
    ({"model": "MODEL", "messages": PROMPT, "n": 2}, 400, "invalid_parameter"),
    ({"model": "MODEL", "messages": [{"role": "user", "content": TOO_LONG}]}, 400,
     "context_length_exceeded"),
], ids=["malformed-json", "not-an-object", "no-model", "unknown-model", "no-messages",
        "empty-messages", "bad-role", "bad-content", "max-tokens-0", "max-tokens-over-limit",
        "max-completion-tokens-negative", "max-tokens-not-int", "temperature-out-of-range",
        "n-2", "prompt-longer-than-context"])
def test_bad_request_gets_4xx_error_body(server, model_name, body, status, code):
    if isinstance(body, dict) and body.get("model") == "MODEL":
        body = {**body, "model": model_name}
    if isinstance(body, dict) and body.get("max_tokens") == "LIMIT+1":
        body = {**body, "max_tokens": server.max_tokens + 1}
    response = server.post(body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert server.health()["status"] == "ok"


def test_sdk_raises_the_matching_errors(server, model_name):
    client = server.client()
    with pytest.raises(groq.NotFoundError) as err:
        client.chat.completions.create(model="llama-9000", messages=PROMPT, max_tokens=1)
    assert err.value.body["error"]["code"] == "model_not_found"
    with pytest.raises(groq.BadRequestError) as err:
        client.chat.completions.create(model=model_name, messages=[], max_tokens=1)
    assert "messages" in err.value.body["error"]["message"]
    with pytest.raises(groq.BadRequestError):
        client.chat.completions.create(model=model_name, messages=PROMPT,
                                       max_tokens=server.max_tokens + 1, stream=True)


def test_unknown_route_and_method_get_json_errors(server):
    response = httpx.get(f"{server.url}/openai/v1/embeddings")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = httpx.get(f"{server.url}/openai/v1/chat/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_requests_without_the_key_get_401(server, model_name):
    for key in (None, "wrong-key"):
        with pytest.raises(groq.AuthenticationError) as err:
            server.client(api_key=key).chat.completions.create(model=model_name,
                                                               messages=PROMPT, max_tokens=1)
        assert err.value.status_code == 401
        assert err.value.body["error"]["code"] == "invalid_api_key"
        with pytest.raises(groq.AuthenticationError):
            server.client(api_key=key).models.list()
    response = server.post({"model": model_name, "messages": PROMPT}, api_key=None)
    assert response.status_code == 401 and response.json()["error"]["type"]


# --- the queue: one request runs, one waits, the next gets 429; a dropped client frees the model


def test_full_queue_gets_429_and_a_dropped_stream_frees_the_model(server, model_name):
    client = server.client()
    before = server.health()
    assert before["running"] == 0 and before["waiting"] == 0

    # A: a long streamed answer; read until the first token so it is running.
    running = client.chat.completions.create(model=model_name, messages=LONG_PROMPT,
                                             max_tokens=server.max_tokens, temperature=0,
                                             stream=True)
    for chunk in running:
        if chunk.choices and chunk.choices[0].delta.content:
            break

    # B: waits in the queue (max-queue 1) behind A.
    waiting_result = {}

    def waiting_request():
        try:
            waiting_result["answer"] = client.chat.completions.create(
                model=model_name, messages=PROMPT, max_tokens=2, temperature=0)
        except Exception as err:  # reported by the assertion below
            waiting_result["error"] = err

    waiter = threading.Thread(target=waiting_request)
    waiter.start()
    try:
        state = server.wait_for(lambda s: s["waiting"] == 1, "the second request to queue")
        assert state["running"] == 1

        # C: the queue is full.
        with pytest.raises(groq.RateLimitError) as err:
            client.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=1)
        assert err.value.status_code == 429
        assert err.value.body["error"]["code"] == "queue_full"
    finally:
        # A's client goes away mid-stream: the server stops A and runs B.
        running.close()
        waiter.join(timeout=server.request_timeout)
    assert not waiter.is_alive()
    assert "error" not in waiting_result, waiting_result.get("error")
    answer = waiting_result["answer"]
    assert answer.choices[0].message.content
    assert answer.usage.queue_time > 0  # it really waited behind A

    after = server.wait_for(lambda s: s["running"] == 0 and s["waiting"] == 0, "an idle server")
    assert after["cancelled"] == before["cancelled"] + 1  # A was stopped, not finished
    assert after["rejected_queue_full"] == before["rejected_queue_full"] + 1

    # The slot is free: a new request runs at once.
    later = client.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=1)
    assert later.usage.completion_tokens == 1
    assert server.health()["completed"] == after["completed"] + 1


def test_a_client_that_leaves_while_queued_is_dropped_from_the_queue(server, model_name):
    client = server.client()
    before = server.health()
    running = client.chat.completions.create(model=model_name, messages=LONG_PROMPT,
                                             max_tokens=server.max_tokens, temperature=0,
                                             stream=True)
    try:
        for chunk in running:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        queued = client.chat.completions.create(model=model_name, messages=PROMPT,
                                                max_tokens=2, stream=True)
        server.wait_for(lambda s: s["waiting"] == 1, "the second request to queue")
        queued.close()  # leaves before the model ever saw it
        state = server.wait_for(lambda s: s["waiting"] == 0, "the queue to empty")
        assert state["running"] == 1  # A is untouched
    finally:
        running.close()
    after = server.wait_for(lambda s: s["running"] == 0, "an idle server")
    assert after["cancelled"] == before["cancelled"] + 2


# --- the benchmark harness ---------------------------------------------------------------------


@pytest.mark.slow
def test_bench_serve_appends_measured_rows(server, model_name, tmp_path):
    out = tmp_path / "performance.csv"
    command = [sys.executable, "-m", "q35f", "bench", "serve", "--base-url", server.url,
               "--model", model_name, "--api-key", server.api_key, "-n", "2", "--concurrency", "1,2",
               "--max-tokens", "3", "--warmup", "0", "--prompt", PROMPT[0]["content"],
               "--csv", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ttft" in done.stdout
    rows = list(csv.DictReader(out.open()))
    assert [r["concurrency"] for r in rows] == ["1", "2"], (done.stdout, done.stderr)
    for row in rows:
        print(row, done.stdout, done.stderr)  # shown by pytest if an assertion below fails
        assert list(row) == CSV_COLUMNS
        assert row["model"] == model_name and row["endpoint"] == server.url
        assert row["method"] == "q35f-serve" and row["source"] == "measured"
        assert row["requests"] == "2" and row["errors"] == "0"
        assert 0 < float(row["ttft_ms"]) <= float(row["latency_ms"])
        assert float(row["ttft_p90_ms"]) >= float(row["ttft_ms"])
        assert float(row["server_prompt_ms"]) > 0
        assert row["tokens_counted_by"] == "server_usage"
        assert 1 <= float(row["completion_tokens"]) <= 3
        assert row["q35f_version"] and row["date"] and row["machine"]
    # A second run appends under the same header.
    done = subprocess.run(command[:-6] + ["--concurrency", "1", "--max-tokens", "2", "--warmup",
                                          "0", "--unique-prompts", "--csv", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3, (done.stdout, done.stderr)
    assert "unique prompts" in rows[-1]["note"] and "identical prompts" in rows[0]["note"]


def test_bench_serve_without_groq_key_measures_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    out = tmp_path / "x.csv"
    assert cli.main(["bench", "serve", "--csv", str(out)]) != 0
    captured = capsys.readouterr()
    assert "GROQ_API_KEY" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == "" and not out.exists()


def test_bench_serve_unreachable_endpoint_measures_nothing(capsys, tmp_path, free_port):
    out = tmp_path / "x.csv"
    url = f"http://127.0.0.1:{free_port}"  # nothing listens there
    assert cli.main(["bench", "serve", "--base-url", url, "--model", "m", "--csv",
                     str(out)]) != 0
    captured = capsys.readouterr()
    assert "cannot connect" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == "" and not out.exists()


# --- pieces that need no server ----------------------------------------------------------------


def test_base_url_is_the_server_root():
    assert normalize_base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert normalize_base_url("http://127.0.0.1:8000/openai/v1") == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="root"):
        normalize_base_url("http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="http"):
        normalize_base_url("127.0.0.1:8000")


def test_csv_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("method,memory_gb\nq35,1.0\n")
    with pytest.raises(ValueError, match="different columns"):
        append_csv(path, [{"method": "x"}])
    assert path.read_text() == "method,memory_gb\nq35,1.0\n"


def test_serve_missing_model_file_is_one_line(capsys, tmp_path):
    assert cli.main(["serve", str(tmp_path / "missing.gguf")]) == 2
    err = capsys.readouterr().err
    assert "missing.gguf" in err and len(err.strip().splitlines()) == 1


@given(text=st.text(alphabet="ab<>", max_size=40),
       stops=st.lists(st.text(alphabet="ab<>", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 40), max_size=8))
def test_stop_filter_cuts_at_the_first_stop_whatever_the_chunking(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    stop_filter = StopFilter(stops)
    out, stopped = [], False
    for piece in pieces:
        emitted, stopped = stop_filter.feed(piece)
        out.append(emitted)
        if stopped:
            break
    if not stopped:
        out.append(stop_filter.flush())
    # The stop that completes first wins; of several completing at once, the longest.
    ends = [(text.find(s) + len(s), -len(s)) for s in stops if s in text]
    if ends:
        end, minus_length = min(ends)
        expected = text[:end + minus_length]
    else:
        expected = text
    assert "".join(out) == expected
    assert stopped == bool(ends)
