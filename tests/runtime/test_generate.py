"""Sampling, streaming detokenization, chat templates and the Generator contract serve relies on."""

import numpy as np
import pytest

from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.runtime.generate import Generator, StreamDecoder, TokenEvent, load_generator, sample
from q35f.runtime.model import LlamaConfig, Model
from conftest import tiny_config, tiny_weights


@pytest.fixture(scope="module")
def embedded():
    with open_checkpoint(default_model_path()) as ck:
        return ck.tokenizer, ck.chat_template, ck.config


@pytest.fixture()
def tiny_generator(embedded):
    """A random tiny model over the real 49152-token vocabulary (fast, deterministic)."""
    tokenizer, template, _ = embedded
    config = tiny_config(vocab_size=tokenizer.get_vocab_size(), eos_token_id=2)
    model = Model(LlamaConfig.from_hf(config), tiny_weights(config, seed=3), max_seq_len=64)
    return Generator(model, tokenizer, template, "tiny", eos_token_ids=[2])


def test_temperature_zero_is_argmax():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    rng = np.random.default_rng(1)
    assert all(sample(logits, 0.0, 1.0, rng) == int(np.argmax(logits)) for _ in range(5))


def test_samples_follow_softmax_of_logits_over_temperature():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(2)
    draws = np.bincount([sample(logits, 1.0, 1.0, rng) for _ in range(8000)], minlength=4)
    np.testing.assert_allclose(draws / 8000, [0.5, 0.3, 0.15, 0.05], atol=0.02)
    hot = np.bincount([sample(logits, 2.0, 1.0, rng) for _ in range(8000)], minlength=4) / 8000
    expected = np.sqrt([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(hot, expected / expected.sum(), atol=0.02)


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float32))
    rng = np.random.default_rng(3)
    draws = np.bincount([sample(logits, 1.0, 0.75, rng) for _ in range(4000)], minlength=4)
    assert draws[0] == 0 and draws[2] == 0  # 0.5 + 0.3 >= 0.75: the tail is cut
    assert draws[1] / (draws[1] + draws[3]) == pytest.approx(0.5 / 0.8, abs=0.03)
    assert {sample(logits, 1.0, 0.1, rng) for _ in range(50)} == {1}


def test_top_p_over_a_large_flat_vocabulary_looks_beyond_the_candidates():
    logits = np.zeros(5000, dtype=np.float32)  # 1024 candidates hold only 20% of the mass
    rng = np.random.default_rng(4)
    draws = {sample(logits, 1.0, 0.9, rng) for _ in range(300)}
    assert max(draws) >= 1024  # beyond the first candidates
    assert max(draws) < 4500  # equal logits: a stable sort keeps ids 0..4499 (90% of the mass)


def test_same_seed_same_tokens(tiny_generator):
    ids = tiny_generator.encode("Once upon a time")
    a = [e.token_id for e in tiny_generator.stream(ids, 12, temperature=1.0, top_p=0.9, seed=7)]
    b = [e.token_id for e in tiny_generator.stream(ids, 12, temperature=1.0, top_p=0.9, seed=7)]
    assert a == b and len(a) >= 1


def test_stream_decoder_pieces_join_to_the_full_text(embedded):
    tokenizer = embedded[0]
    text = "Naïve café — 東京 🙂 déjà vu ✓ end"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # incomplete UTF-8 is held back


def test_stream_stops_at_max_tokens_with_length(tiny_generator):
    events = list(tiny_generator.stream(tiny_generator.encode("Hello there"), 5, temperature=0))
    assert all(isinstance(e, TokenEvent) for e in events)
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    text = "".join(e.text for e in events)
    assert text == tiny_generator.decode([e.token_id for e in events])


def test_stream_stops_at_eos_with_stop(tiny_generator):
    prompt = tiny_generator.encode("Hello there")
    first = next(iter(tiny_generator.stream(prompt, 1, temperature=0))).token_id
    tiny_generator.eos_token_ids = {first}
    events = list(tiny_generator.stream(prompt, 10, temperature=0))
    assert len(events) == 1
    assert events[0] == TokenEvent(first, "", "stop")


def test_stream_stops_at_the_context_limit(tiny_generator):
    prompt = list(tiny_generator.encode("word " * 60))[:60]  # context is 64 tokens
    events = list(tiny_generator.stream(prompt, 100, temperature=0))
    assert len(events) == 4
    assert events[-1].finish_reason == "length"


def test_a_cached_prefix_gives_the_same_tokens_as_a_fresh_run(tiny_generator, embedded):
    first = tiny_generator.encode("The quick brown fox jumps")
    second = first + tiny_generator.encode(" over the lazy dog")
    list(tiny_generator.stream(first, 6, temperature=0))  # fills the cache with first + 5
    continued = [e.token_id for e in tiny_generator.stream(second, 6, temperature=0)]
    tiny_generator._cached = []
    fresh = [e.token_id for e in tiny_generator.stream(second, 6, temperature=0)]
    assert continued == fresh


@pytest.mark.parametrize("kwargs,message", [
    ({"prompt_ids": []}, "at least one token"),
    ({"prompt_ids": list(range(64))}, "context"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_p": 0.0}, "top_p"),
    ({"temperature": -1.0}, "temperature"),
])
def test_bad_stream_arguments_raise_value_error(tiny_generator, kwargs, message):
    args = {"prompt_ids": [1, 2, 3], "max_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny_generator.stream(**args)


def test_encode_chat_renders_the_models_template(tiny_generator):
    ids = tiny_generator.encode_chat([{"role": "user", "content": "Hi"}])
    text = tiny_generator.tokenizer.decode(ids, skip_special_tokens=False)
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tiny_generator.tokenizer.token_to_id("<|im_start|>") in ids  # a special token
    with pytest.raises(ValueError, match="messages"):
        tiny_generator.encode_chat([{"content": "no role"}])


@pytest.mark.slow
def test_embedded_model_answers_a_question():
    gen = load_generator(None, max_seq_len=256)
    assert gen.model_name == "SmolLM2-135M-Instruct.Q4_1"
    assert gen.context_length == 256
    assert gen.tokenizer.token_to_id("<|im_end|>") in gen.eos_token_ids
    ids = gen.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    events = list(gen.stream(ids, 24, temperature=0))
    assert "Paris" in "".join(e.text for e in events)
    assert events[-1].finish_reason in ("stop", "length")


def test_generate_command_streams_text(capsys):
    from q35f.cli import main

    code = main(["generate", "--prompt", "The capital of France is", "-n", "4",
                 "--temperature", "0"])
    out = capsys.readouterr()
    assert code == 0
    assert out.out.startswith("The capital of France is") and len(out.out) > 26
    assert "generated" in out.err


def test_generate_command_names_a_missing_model(capsys):
    from q35f.cli import main

    assert main(["generate", "/nonexistent/model.gguf", "--prompt", "x"]) == 2
    assert "/nonexistent/model.gguf" in capsys.readouterr().err
