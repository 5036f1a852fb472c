"""Shared by the tests: hypothesis strategies for the kernels, tiny Llama models (as a q35f
Model, as tensors under Hugging Face names, as a checkpoint directory), and one real `q35f serve`
process for the API client tests (serve/test_serve.py: groq SDK, serve/test_openai_client.py:
openai SDK)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from q35f.io.llama import expected_shapes
from q35f.runtime.model import LayerWeights, LlamaConfig, Model, Weights

settings.register_profile(
    "q35f",
    deadline=None,
    max_examples=60,
    # no_array_copies checks once after all examples of a test, which is what we want.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.load_profile("q35f")

BITS = ["q35", "int8", "int4", "int3"]

# Values that stress float16 parameters: subnormal, tiny, huge, and exactly representable ones.
EDGE_VALUES = [0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 65000.0, 1.0, -1.0, 0.5]


@st.composite
def weight_matrices(draw, max_rows=40, max_cols=300):
    """(w, group_size): random shapes incl. ragged K, N = 1, constant groups and edge values."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    group_size = draw(st.sampled_from([16, 32, 48, 64, 128, 256]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "scaled", "constant", "edges", "outliers"]))
    if kind == "normal":
        w = rng.standard_normal((rows, cols))
    elif kind == "scaled":
        w = rng.standard_normal((rows, cols)) * 10.0 ** draw(st.integers(-7, 4))
    elif kind == "constant":
        w = np.full((rows, cols), draw(st.floats(-1000, 1000, width=32)))
    elif kind == "edges":
        w = rng.choice(EDGE_VALUES, size=(rows, cols))
    else:
        w = rng.standard_normal((rows, cols)) * 0.02
        mask = rng.random((rows, cols)) < 0.01
        w[mask] = rng.choice([-30.0, 30.0], size=mask.sum())
    return w.astype(np.float32), group_size


@pytest.fixture(autouse=True, scope="session")
def float32_prompt_gemm():
    """Tests compare prompt results with float32 tolerances, so prompts multiply in float32
    (dequantize + sgemm) unless a test asks for another prompt GEMM: on a CPU with bf16
    hardware the default would be the bf16 GEMM, tested with its own bound
    (tests/kernels/test_prompt_gemm_bf16.py). Session-wide, so module fixtures see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("Q35F_PROMPT_GEMM", "float32")
        yield


@pytest.fixture
def no_array_copies(capfd):
    """Fail if f2py copied an array (the extension is built with F2PY_REPORT_ON_ARRAY_COPY)."""
    yield
    err = capfd.readouterr().err
    assert "copied an array" not in err and "created an array" not in err, err


# --- tiny Llama models ----------------------------------------------------------------------------


def tiny_config(**overrides) -> dict:
    config = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
              "tie_word_embeddings": True, "eos_token_id": 3}
    config.update(overrides)
    return config


def tiny_weights(config: dict, seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    h, f = config["hidden_size"], config["intermediate_size"]
    d = h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    layers = [
        LayerWeights(
            attn_norm=1 + w(h), wq=w(q, h, scale=0.3), wk=w(kv, h, scale=0.3), wv=w(kv, h),
            wo=w(h, q), mlp_norm=1 + w(h), w_gate=w(f, h), w_up=w(f, h), w_down=w(h, f))
        for _ in range(config["num_hidden_layers"])
    ]
    lm_head = None if config["tie_word_embeddings"] else w(config["vocab_size"], h)
    return Weights(embed=w(config["vocab_size"], h, scale=1.0), layers=layers, norm=1 + w(h),
                   lm_head=lm_head)


def tiny_model(seed=0, max_seq_len=None, **overrides) -> Model:
    config = tiny_config(**overrides)
    return Model(LlamaConfig.from_hf(config), tiny_weights(config, seed), max_seq_len=max_seq_len)



TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def tiny_tokenizer():
    """A byte-level BPE over the 256 byte symbols: every byte is one token."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tiny_tensors(config, seed=0) -> dict:
    """Standard-normal float32 tensors under the Hugging Face names of a Llama `config`."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in expected_shapes(config).items()
    }


def write_hf(directory, weights, config=TINY_CONFIG, dtype=np.float32, shards=1):
    """A Hugging Face checkpoint directory; `shards` > 1 writes an index like transformers."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    stored = {name: w.astype(dtype) for name, w in weights.items()}
    if shards == 1:
        save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    names = list(stored)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: stored[n] for n in names[s::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


# --- a real `q35f serve` subprocess ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    return _free_port()


class Server:
    """`q35f serve` with the embedded SmolLM2-135M-Instruct on 127.0.0.1, an API key, a queue of
    one and a completion limit of max_tokens; requests time out after request_timeout s."""

    api_key = "test-key-q35f"
    max_tokens = 64
    startup_timeout = 180
    request_timeout = 180

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str | None = api_key):
        """The groq SDK's client (it appends /openai/v1/... to the server root)."""
        import groq

        return groq.Groq(base_url=self.url, api_key=api_key or "no-key", max_retries=0,
                         timeout=self.request_timeout)

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=10).json()

    def post(self, body, path="/openai/v1/chat/completions", api_key=api_key):
        import httpx

        headers = {"content-type": "application/json"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers=headers,
                          timeout=self.request_timeout)

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.health()
            if predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last state {state}")


@pytest.fixture(scope="session")
def server():
    """One server for the whole session (loading the model is the slow part); always stopped."""
    import httpx

    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="q35f-serve-")) / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "q35f", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--api-key", Server.api_key, "--max-queue", "1", "--max-tokens",
             str(Server.max_tokens), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + Server.startup_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"q35f serve exited with {proc.returncode}:\n"
                                     f"{log.read_text()}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"q35f serve not ready after {Server.startup_timeout} s:\n"
                                     f"{log.read_text()}")
            time.sleep(0.2)
        yield srv
        assert proc.poll() is None, f"the server died during the tests:\n{log.read_text()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class DictCheckpoint:
    """The part of q35f.io.checkpoint.Checkpoint that readers of tensors use, over a dict."""

    def __init__(self, weights, config):
        self.weights, self.config = weights, config

    def names(self):
        return list(self.weights)

    def get(self, name):
        return self.weights[name]

    def get_rows(self, name, start, stop):
        return self.weights[name][start:stop]


def assert_stream_is_the_quantized_model(stream, blocks, weights, batches, config=TINY_CONFIG):
    """A LayerStream's final hidden states are what a Model built from its quantized blocks
    (and the float rest of `weights`) computes on the calibration batches."""
    from q35f.runtime.model import rms_norm

    quantized = dict(weights)
    for block in blocks:
        quantized.update(block)
    cfg = LlamaConfig.from_hf(config)
    model = Model(cfg, Weights.from_checkpoint(DictCheckpoint(quantized, config), cfg), 24)
    for s in range(batches.shape[0]):
        expect = model.hidden_states(batches[s], 0)
        got = rms_norm(stream.x[s], weights["model.norm.weight"], cfg.rms_norm_eps)
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())


def check_short_answer(answer, model_name: str) -> None:
    """What either SDK (groq, openai) must see for a chat completion of at most 6 tokens
    answering a 4-word question: the OpenAI/Groq response shape and consistent usage."""
    assert answer.object == "chat.completion" and answer.model == model_name
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert 1 <= usage.completion_tokens <= 6
    assert usage.completion_tokens == 6 or choice.finish_reason == "stop"
    assert usage.prompt_tokens > 5  # the chat template wraps the 4-word question
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
