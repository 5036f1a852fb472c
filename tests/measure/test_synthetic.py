"""bench/synthetic.py: the random-weight GGUF models q35f and llama.cpp are timed on.

A tiny shape is written once (with the embedded SmolLM2 tokenizer) and read back through
q35f's GGUF reader; the named shapes are checked against q35f's own shape rules without
writing them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.io.gguf import gguf_to_hf_name
from q35f.io.llama import expected_shapes
from q35f.runtime.model import LlamaConfig, Model, Weights

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "synthetic.py"
_spec = importlib.util.spec_from_file_location("bench_synthetic", SCRIPT)
synthetic = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = synthetic  # dataclasses look their module up there
_spec.loader.exec_module(synthetic)

TINY = synthetic.Shape(hidden=64, layers=2, ffn=160, heads=4, kv_heads=2, head_dim=16,
                       tied=False, rope_theta=50000.0, rms_eps=1e-6, context=256)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "tiny.gguf"
    summary = synthetic.write_synthetic(path, TINY, seed=7, dtype="f16", name="tiny")
    return path, summary


@pytest.fixture(scope="module")
def tiny_ck(tiny_gguf):
    """The tiny file opened once: each open parses the 147k tokenizer fields again."""
    with open_checkpoint(tiny_gguf[0]) as ck:
        yield ck


@pytest.fixture(scope="module")
def embedded():
    """The embedded model's metadata fields (read once, shared with the writer's cache)."""
    return {key: value for key, value, *_ in synthetic.gguf_fields(default_model_path())}


def hf_config(shape, vocab=49152):
    return {"model_type": "llama", "hidden_size": shape.hidden,
            "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
            "head_dim": shape.head_dim, "vocab_size": vocab,
            "tie_word_embeddings": shape.tied}


def test_q35f_reads_the_config_the_shape_names(tiny_gguf, tiny_ck):
    summary = tiny_gguf[1]
    config = tiny_ck.config  # opening checked every tensor's shape against it
    assert tiny_ck.info("model.layers.1.mlp.down_proj.weight").dtype == "F16"
    assert tiny_ck.info("model.norm.weight").dtype == "F32"
    assert config["hidden_size"] == 64 and config["intermediate_size"] == 160
    assert config["num_hidden_layers"] == 2
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["head_dim"] == 16 and config["vocab_size"] == 49152
    assert config["rope_theta"] == 50000.0 and config["rms_norm_eps"] == 1e-6
    assert config["max_position_embeddings"] == 256
    assert config["tie_word_embeddings"] is False
    assert summary["params"] == sum(np.prod(s) for s in expected_shapes(config).values())


def test_the_tokenizer_is_the_embedded_models(tiny_gguf, embedded):
    copied = synthetic.tokenizer_fields(tiny_gguf[0])  # vocabulary, merges, ids, template
    assert copied == synthetic.tokenizer_fields(default_model_path())
    fields = {key: value for key, value, *_ in copied}
    assert len(fields["tokenizer.ggml.tokens"]) == 49152
    assert fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.chat_template"] == embedded["tokenizer.chat_template"]


def test_weights_have_the_stated_scale_and_norms_are_one(tiny_ck):
    embed = tiny_ck.get("model.embed_tokens.weight")
    down = tiny_ck.get("model.layers.0.mlp.down_proj.weight")
    norm = tiny_ck.get("model.layers.1.input_layernorm.weight")
    assert embed.std() == pytest.approx(synthetic.WEIGHT_STD, rel=0.01)
    assert abs(embed.mean()) < 1e-4
    assert down.std() == pytest.approx(synthetic.WEIGHT_STD, rel=0.05)
    np.testing.assert_array_equal(norm, np.ones(64, np.float32))


def test_values_do_not_depend_on_the_band_size_and_differ_by_seed_and_index():
    whole, banded, other_index, other_seed = (np.empty((37, 50), np.float32) for _ in range(4))
    synthetic.fill_tensor(whole, seed=3, index=5)
    synthetic.fill_tensor(banded, seed=3, index=5, band_bytes=4 * 50 * 4)  # 4 rows a band
    np.testing.assert_array_equal(whole, banded)
    synthetic.fill_tensor(other_index, seed=3, index=6)
    synthetic.fill_tensor(other_seed, seed=4, index=5)
    assert not np.array_equal(whole, other_index)
    assert not np.array_equal(whole, other_seed)


def test_tensor_i_comes_from_generator_i_whatever_the_layer_count(tiny_ck, tmp_path):
    one_layer = dataclasses.replace(TINY, layers=1)
    summary = synthetic.write_synthetic(tmp_path / "one.gguf", one_layer, seed=7, name="tiny",
                                        band_bytes=1024)
    with open_checkpoint(summary["path"]) as one:
        for name in one.names():
            if "layers.0." in name or name == "model.embed_tokens.weight":
                np.testing.assert_array_equal(one.get(name), tiny_ck.get(name), err_msg=name)
    assert not list(tmp_path.glob("*.partial"))


def test_q35f_runs_and_quantizes_it(tiny_gguf, tiny_ck, tmp_path):
    path, _ = tiny_gguf
    config = LlamaConfig.from_hf(tiny_ck.config)
    model = Model(config, Weights.from_checkpoint(tiny_ck, config), max_seq_len=16)
    logits = model.forward(np.arange(8), 0)
    assert logits.shape == (49152,) and np.isfinite(logits).all()
    out = tmp_path / "tiny-q35"
    run = subprocess.run([sys.executable, "-m", "q35f", "quantize", str(path), "-o", str(out),
                          "--round-to-nearest", "--no-progress", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    with open_checkpoint(out) as ck:
        assert ck.kind == "q35f" and ck.quant_config["bits"] == "q35"
        assert ck.info("model.layers.1.mlp.up_proj.weight").quantized
    assert json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(synthetic.SHAPES))
def test_named_shapes_are_the_tensors_q35f_expects(name):
    shape = synthetic.SHAPES[name]
    written = {gguf_to_hf_name(t): dims for t, dims in synthetic.tensor_shapes(shape, 49152)}
    assert written == {k: tuple(v) for k, v in expected_shapes(hf_config(shape)).items()}


def test_named_shapes_have_the_published_dimensions(embedded):
    smol = synthetic.SHAPES["smollm2-135m"]
    assert (smol.hidden, smol.layers, smol.ffn, smol.heads, smol.kv_heads, smol.rope_theta,
            smol.context) == tuple(embedded[f"llama.{key}"] for key in (
                "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.freq_base",
                "context_length"))
    assert smol.head_dim == embedded["llama.rope.dimension_count"]
    tiny = synthetic.SHAPES["tinyllama-1.1b"]
    assert (tiny.hidden, tiny.layers, tiny.ffn, tiny.heads, tiny.kv_heads, tiny.head_dim) == (
        2048, 22, 5632, 32, 4, 64)
    seven = synthetic.SHAPES["llama2-7b-layers"]
    assert (seven.hidden, seven.ffn, seven.heads, seven.kv_heads, seven.head_dim) == (
        4096, 11008, 32, 32, 128)
