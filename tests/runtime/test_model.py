"""The numpy Llama forward pass: cache consistency, quantized layers, loading, errors, benchmark."""

import json
import subprocess
import sys

import numpy as np
import pytest

import q35f
import q35f.format.spec
from q35f.kernels import tensor
from q35f.runtime import model as model_module
from conftest import tiny_config, tiny_model, tiny_weights
from q35f.runtime.model import FusedLinear, LlamaConfig, Model, Weights, stack_rows

LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def quantized_copy(weights: Weights, bits: str, embed_bits: str | None = None,
                   dequantize: bool = False) -> Weights:
    """The same weights with every linear layer quantized (or quantized then dequantized)."""

    def q(w, b):
        qt = q35f.quantize(w, 32, b)
        return qt.dequantize() if dequantize else qt

    layers = [
        model_module.LayerWeights(
            attn_norm=lw.attn_norm, mlp_norm=lw.mlp_norm,
            **{name: q(getattr(lw, name), bits) for name in LINEAR_NAMES})
        for lw in weights.layers
    ]
    embed = q(weights.embed, embed_bits) if embed_bits else weights.embed
    return Weights(embed=embed, layers=layers, norm=weights.norm, lm_head=weights.lm_head)


def test_token_by_token_decode_equals_one_prefill():
    model = tiny_model()
    ids = np.random.default_rng(1).integers(0, 97, size=40)
    full = model.forward(ids, 0, all_logits=True)
    step = np.stack([model.forward([t], i) for i, t in enumerate(ids)])
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


def test_prefill_in_chunks_equals_one_pass(monkeypatch):
    model = tiny_model()
    ids = np.random.default_rng(2).integers(0, 97, size=50)
    whole = model.forward(ids, 0, all_logits=True)
    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 7)
    chunked = model.forward(ids, 0, all_logits=True)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())
    assert np.argmax(model.forward(ids, 0)) == np.argmax(whole[-1])


def test_prompt_continued_after_cached_prefix_equals_fresh_run():
    model = tiny_model()
    ids = np.random.default_rng(3).integers(0, 97, size=30)
    fresh = model.forward(ids, 0)
    model.forward(ids[:20], 0)
    continued = model.forward(ids[20:], 20)
    np.testing.assert_allclose(continued, fresh, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits", ["q35", "int4", "int8", "int3"])
@pytest.mark.parametrize("prompt_gemm", ["float", "integer", "bf16"])
def test_quantized_layers_compute_what_their_dequantized_weights_do(bits, prompt_gemm,
                                                                    monkeypatch):
    """Kernels (GEMV for one token, GEMM for prompts, take_rows) vs float matmuls of W_hat.

    The integer prompt GEMM also rounds each activation, by at most 1/254 of its group's max
    |x|; in sequence through the 9 matmuls of this model (2 blocks x 4, the head) that is at
    most about 9/254 = 3.5 % of the largest logit (1.0-1.4 % measured), against float32
    rounding (1e-4) on the float path. The bf16 GEMM rounds activations, weights and results
    to 8 significant bits: 3 * 2^-8 of each product's magnitude, 27 * 2^-8 = 10.5 % through
    the 9 matmuls."""
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, {"float": "float32", "integer": "int8",
                                                "bf16": "bf16"}[prompt_gemm])
    prompt_atol = {"float": 1e-4, "integer": 9 / 254, "bf16": 27 * 2.0**-8}[prompt_gemm]
    weights = tiny_weights(tiny_config())
    config = LlamaConfig.from_hf(tiny_config())
    quant = Model(config, quantized_copy(weights, bits, embed_bits="int8"))
    reference = Model(config, quantized_copy(weights, bits, embed_bits="int8", dequantize=True))
    assert all(lin.quantized for lin in quant.linears()) and quant.embed_quantized
    assert not any(lin.quantized for lin in reference.linears())
    ids = np.random.default_rng(4).integers(0, 97, size=24)  # > GEMM_MIN_ROWS: the GEMM path
    a = quant.forward(ids, 0, all_logits=True)
    b = reference.forward(ids, 0, all_logits=True)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=prompt_atol * np.abs(b).max())
    a1 = quant.forward([5], 24)  # one token: the GEMV path (on the prompt's KV cache)
    b1 = reference.forward([5], 24)
    np.testing.assert_allclose(a1, b1, rtol=1e-3, atol=prompt_atol * np.abs(b1).max())


def test_quantized_model_holds_format_bytes():
    weights = quantized_copy(tiny_weights(tiny_config()), "q35", embed_bits="int8")
    model = Model(LlamaConfig.from_hf(tiny_config()), weights)
    stats = model.stats()
    expected = sum(q35f.format.spec.tensor_nbytes(*lin.shape, 32, "q35") for lin in model.linears())
    assert 8 * expected / stats["block_params"] == pytest.approx(stats["block_bits_per_weight"])
    assert stats["block_bits_per_weight"] == pytest.approx(3.5 + 32 / 32)


def test_fusing_differently_quantized_layers_falls_back_to_separate_matmuls():
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((32, 64)).astype(np.float32)
    w2 = rng.standard_normal((16, 64)).astype(np.float32)
    q1, q2 = q35f.quantize(w1, 32, "q35"), q35f.quantize(w2, 32, "int4")
    assert [w.bits for w in stack_rows([q1, q2])] == ["q35", "int4"]
    (fused_same,) = stack_rows([q1, q35f.quantize(w2, 32, "q35")])
    assert fused_same.shape == (48, 64) and fused_same.bits == "q35"
    # runs of alike weights stack: q apart, k and v together (a mix)
    q3 = q35f.quantize(w2, 32, "int4")
    assert [w.shape[0] for w in stack_rows([q1, q2, q3])] == [32, 32]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    expected = np.concatenate([x @ q1.dequantize().T, x @ q2.dequantize().T], axis=1)
    np.testing.assert_allclose(FusedLinear([q1, q2])(x), expected, rtol=1e-4, atol=1e-4)


def test_config_from_hf_reads_llama_fields():
    cfg = LlamaConfig.from_hf(tiny_config(eos_token_id=[3, 7], head_dim=32,
                                          rope_scaling={"rope_type": "linear", "factor": 2.0}))
    assert cfg.eos_token_ids == (3, 7)
    assert cfg.head_dim == 32
    assert cfg.num_key_value_heads == 2
    assert cfg.rope_scaling["factor"] == 2.0


@pytest.mark.parametrize("overrides,message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 3}, "multiple"),
])
def test_unsupported_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_hf(tiny_config(**overrides))


def test_unsupported_rope_scaling_is_refused():
    with pytest.raises(ValueError, match="yarn"):
        tiny_model(rope_scaling={"rope_type": "yarn", "factor": 4.0})


def test_wrong_weight_shape_names_the_tensor():
    config = tiny_config()
    weights = tiny_weights(config)
    weights.layers[1].wo = weights.layers[1].wo[:, :32]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight"):
        Model(LlamaConfig.from_hf(config), weights)


def test_positions_beyond_the_context_are_refused():
    model = tiny_model(max_seq_len=16)
    with pytest.raises(ValueError, match="context"):
        model.forward(list(range(10)), 10)
    with pytest.raises(ValueError, match="token ids"):
        model.forward([97], 0)


@pytest.fixture(scope="module")
def quantized_embedded(tmp_path_factory):
    from q35f.quantization.convert import quantize_checkpoint

    out = tmp_path_factory.mktemp("q35") / "smollm2-q35"
    quantize_checkpoint(None, out, bits="q35", group_size=128, progress=False)
    return out


def test_loading_a_quantized_checkpoint_keeps_every_linear_packed(quantized_embedded):
    from q35f.runtime.model import load_model

    model, ckpt = load_model(quantized_embedded, max_seq_len=64)
    assert all(lin.quantized and lin.weight.bits == "q35" for lin in model.linears())
    assert model.embed_quantized  # int8 embedding/head by default, read row by row
    stats = model.stats()
    assert stats["block_bits_per_weight"] == pytest.approx(3.5 + 32 / 128, abs=0.03)
    assert stats["weight_bytes"] <= ckpt.file_bytes  # nothing float beyond what the file holds
    ids = ckpt.tokenizer.encode("The capital of France is", add_special_tokens=False).ids
    assert model.forward(ids, 0).shape == (model.config.vocab_size,)


def test_resident_memory_after_loading_stays_near_the_file_size(quantized_embedded):
    script = (
        "import json, sys, psutil, numpy, tokenizers, q35f.kernels.tensor, q35f.io.checkpoint\n"
        "from q35f.runtime.model import load_model\n"
        "before = psutil.Process().memory_info().rss\n"
        "model, ckpt = load_model(sys.argv[1])\n"
        "after = psutil.Process().memory_info().rss\n"
        "print(json.dumps({'grew': after - before, 'file': ckpt.file_bytes}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(quantized_embedded)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["grew"] <= 1.2 * result["file"], result


def test_bench_model_reports_medians_in_a_fresh_process(quantized_embedded):
    from q35f.measure.benchmark import bench_model

    result = bench_model(quantized_embedded, runs=2, prompt_tokens=24, decode_tokens=4)
    for key in ("decode_tok_s", "prompt_tok_s", "ttft_ms", "peak_rss_mb", "file_mb"):
        assert result[key] > 0, key
    assert len(result["decode_s"]) == 2
    assert result["peak_rss_mb"] >= result["rss_after_load_mb"]
    assert result["bits_per_weight"] == pytest.approx(3.5 + 32 / 128, abs=0.03)
