"""Perplexity windows and scoring, the perplexity command, and the compare table."""

import json

import numpy as np
import pytest

from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.runtime.model import LlamaConfig, Model
from q35f.measure.perplexity import perplexity, window_nll
from conftest import tiny_config, tiny_weights


def test_window_nll_is_the_negative_log_softmax_of_the_targets():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((6, 50)) * 5).astype(np.float32)
    targets = rng.integers(0, 50, size=6)
    z = logits.astype(np.float64)
    log_softmax = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - z.max(1, keepdims=True)
    expected = -log_softmax[np.arange(6), targets].sum()
    assert window_nll(logits.copy(), targets) == pytest.approx(expected, rel=1e-6)


def test_a_model_with_uniform_predictions_has_perplexity_equal_to_the_vocabulary():
    config = tiny_config(tie_word_embeddings=False)
    weights = tiny_weights(config)
    weights.lm_head = np.zeros_like(weights.lm_head)  # every logit 0
    model = Model(LlamaConfig.from_hf(config), weights)
    ids = np.random.default_rng(1).integers(0, 97, size=50)
    assert perplexity(model, ids, ctx=16)["ppl"] == pytest.approx(97, rel=1e-5)


def test_windows_do_not_overlap_and_skip_their_first_token():
    model = Model(LlamaConfig.from_hf(tiny_config()), tiny_weights(tiny_config()))
    ids = np.random.default_rng(2).integers(0, 97, size=41)
    result = perplexity(model, ids, ctx=16)
    assert result["windows"] == 3  # 16 + 16 + 9
    assert result["tokens"] == 15 + 15 + 8
    total = 0.0
    for start in (0, 16, 32):
        window = ids[start:start + 16]
        total += window_nll(model.forward(window, 0, all_logits=True)[:-1], window[1:])
    assert result["ppl"] == pytest.approx(np.exp(total / 38), rel=1e-6)
    assert perplexity(model, ids, ctx=16, max_tokens=17)["tokens"] == 15  # last window 1 token
    assert perplexity(model, ids, ctx=16, max_tokens=18)["tokens"] == 16


def test_bad_arguments_raise_value_error():
    model = Model(LlamaConfig.from_hf(tiny_config()), tiny_weights(tiny_config()), max_seq_len=32)
    with pytest.raises(ValueError, match="ctx"):
        perplexity(model, [1, 2, 3], ctx=64)
    with pytest.raises(ValueError, match="2 tokens"):
        perplexity(model, [1], ctx=16)


def test_perplexity_command_json_on_the_embedded_model(capsys):
    from q35f.cli import main

    assert main(["perplexity", "--corpus", "pydoc", "--ctx", "64", "--max-tokens", "128",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 126
    assert result["bits_per_weight"] == 32.0  # a GGUF model runs in float32
    assert 2 < result["ppl"] < 200  # a real language model on English, not chance (49152)


def test_perplexity_command_names_a_missing_text_file(capsys, tmp_path):
    from q35f.cli import main

    missing = tmp_path / "nothing.txt"
    assert main(["perplexity", "--text", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """A random tiny Llama as a Hugging Face directory, with the embedded model's tokenizer."""
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("tiny-llama")
    with open_checkpoint(default_model_path()) as ck:
        tokenizer = ck.tokenizer
    config = tiny_config(vocab_size=tokenizer.get_vocab_size(), hidden_size=128,
                         intermediate_size=256, tie_word_embeddings=True, model_type="llama",
                         architectures=["LlamaForCausalLM"], max_position_embeddings=256)
    weights = tiny_weights(config, seed=5)
    tensors = {"model.embed_tokens.weight": weights.embed, "model.norm.weight": weights.norm}
    names = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
             "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
             "w_down": "mlp.down_proj"}
    for i, layer in enumerate(weights.layers):
        for attr, name in names.items():
            tensors[f"model.layers.{i}.{name}.weight"] = getattr(layer, attr)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    tokenizer.save(str(path / "tokenizer.json"))
    return path


@pytest.mark.slow
def test_compare_measures_every_variant_on_the_same_tokens(tiny_hf_dir, tmp_path):
    from q35f.measure.compare import compare, format_table, to_csv

    rows = compare(tiny_hf_dir, bits=["fp32", "int8", "q35", "int3"], corpus="pydoc", ctx=64,
                   max_tokens=192, runs=1, prompt_tokens=32, decode_tokens=4,
                   out_dir=tmp_path, progress=False)
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["fp32", "int8", "q35", "int3"]
    assert by["fp32"]["delta_ppl_pct"] == 0
    assert all(r["tokens"] == 192 - 3 for r in rows)  # the same windows for every variant
    assert by["fp32"]["bits_per_weight"] == 32
    # q35 is the default recipe's: groups of 64 with one-byte parameters (FORMAT.md §10),
    # reported as the file stores them (in memory they are float16)
    from q35f.format.spec import bits_per_weight
    from q35f.io.checkpoint import open_checkpoint

    with open_checkpoint(by["q35"]["path"]) as ck:
        linear = [i for i in ck.infos() if i.quantized and ".layers." in i.name]
    assert {i.meta[1:] for i in linear} == {(64, "hadamard", "e4m4")}
    want = sum(i.n_params * bits_per_weight(i.shape[1], 64, "q35", "e4m4") for i in linear)
    assert by["q35"]["bits_per_weight"] == pytest.approx(want / sum(i.n_params for i in linear))
    assert by["q35"]["group_size"] == 64
    assert by["int3"]["bits_per_weight"] == pytest.approx(3.25)
    # (file sizes say little here: this tiny model's file is mostly its int8 embedding, at
    # G = 64 in the q35 file and G = 128 in the others)
    assert by["int8"]["bits_per_weight"] > by["q35"]["bits_per_weight"] > by["int3"][
        "bits_per_weight"]
    # a random model is chaotic, so its PPL says nothing about the formats: only that each
    # variant really ran different weights (the real model's ordering is what compare reports)
    assert all(np.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
    assert len({r["ppl"] for r in rows}) == 4
    for r in rows:
        assert r["decode_tok_s"] > 0 and r["peak_rss_mb"] > 0 and r["ttft_ms"] > 0
    table = format_table(rows)
    assert "ΔPPL %" in table and len(table.splitlines()) == 6
    assert to_csv(rows).splitlines()[0].startswith("variant,")
    # the quantized variants are cached: a second run reuses the directories (not remade)
    (q35_dir,) = tmp_path.glob("*-q35-*")
    made = (q35_dir / "model.safetensors").stat().st_mtime_ns
    again = compare(tiny_hf_dir, bits=["q35"], corpus="pydoc", ctx=64, max_tokens=192,
                    out_dir=tmp_path, speed=False, progress=False)
    assert again[0]["ppl"] == by["q35"]["ppl"]
    assert (q35_dir / "model.safetensors").stat().st_mtime_ns == made
    # a file made by an older default (before error propagation) is made again
    config_path = q35_dir / "config.json"
    config = json.loads(config_path.read_text())
    assert config["quantization_config"].pop("propagation") == 0.5
    config_path.write_text(json.dumps(config))
    compare(tiny_hf_dir, bits=["q35"], corpus="pydoc", ctx=64, max_tokens=192,
            out_dir=tmp_path, speed=False, progress=False)
    assert json.loads(config_path.read_text())["quantization_config"]["propagation"] == 0.5
