"""Refit and block-wise tuning of the group scales/offsets (q35f.quantization.tune)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import q35f
from q35f.quantization.gptq import gptq_quantize, inverse_hessian_factor
from q35f.quantization.sequential import LayerStream, weight_name
from q35f.quantization.tune import PROJS, refit_rows, row_errors, torch_block, tune_block
from q35f.runtime.model import LlamaConfig
from conftest import (TINY_CONFIG, DictCheckpoint, assert_stream_is_the_quantized_model,
                      tiny_tensors, write_hf)

torch = pytest.importorskip("torch")


def _layer(seed, n, k, tokens=256):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((tokens, k)) @ (np.eye(k) + 0.3 * rng.standard_normal((k, k))
                                            / np.sqrt(k))
    x[:, rng.choice(k, max(1, k // 16), replace=False)] *= 5
    return w, x.T @ x


@given(n=st.integers(1, 24), k=st.integers(2, 160), group_size=st.sampled_from([16, 32, 64]),
       bits=st.sampled_from(["q35", "int4", "int3"]), seed=st.integers(0, 2**32 - 1))
def test_the_refit_never_raises_any_row_s_output_error_and_keeps_the_levels(n, k, group_size,
                                                                           bits, seed):
    w, h = _layer(seed, n, k)
    qt = gptq_quantize(w, inverse_hessian_factor(h), group_size, bits, clip_search=True)
    refit = refit_rows(qt, w, h)
    np.testing.assert_array_equal(refit.packed, qt.packed)
    assert refit.bits_per_weight == qt.bits_per_weight
    before, after = row_errors(w, qt.dequantize(), h), row_errors(w, refit.dequantize(), h)
    assert np.all(after <= before)


def test_the_refit_lowers_gptq_s_output_error_on_a_correlated_layer():
    w, h = _layer(0, 48, 256, tokens=1024)
    qt = gptq_quantize(w, inverse_hessian_factor(h), 128, "q35", clip_search=True)
    refit = refit_rows(qt, w, h)
    assert row_errors(w, refit.dequantize(), h).sum() < 0.97 * row_errors(
        w, qt.dequantize(), h).sum()


def _block(seed=0):
    weights = tiny_tensors(TINY_CONFIG, seed=seed)
    cfg = LlamaConfig.from_hf(TINY_CONFIG)
    p = "model.layers.0."
    norms = (weights[p + "input_layernorm.weight"], weights[p + "post_attention_layernorm.weight"])
    floats = {proj: weights[weight_name(0, proj)] for proj in PROJS}
    return weights, cfg, norms, floats


@settings(max_examples=10)
@given(n=st.integers(1, 3), t=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_the_torch_block_equals_the_numpy_block(n, t, seed):
    weights, cfg, norms, floats = _block(seed)
    batches = np.random.default_rng(seed).integers(0, TINY_CONFIG["vocab_size"], (n, t))
    stream = LayerStream(DictCheckpoint(weights, TINY_CONFIG), TINY_CONFIG, batches, None)
    x = stream.x * 30  # hidden states of a deeper block's size
    expect = stream.forward(x, norms, stream.float_linear(0))
    got = torch_block(torch.from_numpy(x), {p: torch.from_numpy(w) for p, w in floats.items()},
                      *(torch.from_numpy(v) for v in norms), cfg, torch.from_numpy(stream.cos),
                      torch.from_numpy(stream.sin)).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5 * np.abs(expect).max())


def _quantized_block(bits="q35"):
    weights, cfg, norms, floats = _block(1)
    batches = (np.arange(6 * 16).reshape(6, 16) * 11 + 3) % TINY_CONFIG["vocab_size"]
    stream = LayerStream(DictCheckpoint(weights, TINY_CONFIG), TINY_CONFIG, batches, None)
    x = stream.x * 30
    target = stream.forward(x, norms, stream.float_linear(0))
    quantized = {p: q35f.quantize(w, 16, bits) for p, w in floats.items()}
    return x, target, quantized, norms, cfg, stream


@pytest.mark.parametrize("bits", ["q35", "int3"])
def test_tuning_lowers_the_block_s_output_mse_with_the_levels_fixed(bits):
    x, target, quantized, norms, cfg, s = _quantized_block(bits)
    tuned, before, after = tune_block(x, target, quantized, norms, cfg, s.cos, s.sin, steps=60,
                                      lr=1e-2, batch=3)
    assert after < 0.95 * before
    for p, qt in quantized.items():
        np.testing.assert_array_equal(tuned[p].packed, qt.packed)
        assert tuned[p].scale.dtype == np.float16 and (tuned[p].scale >= 0).all()
    # the MSE reported is that of the float16 parameters returned
    def mse(tensors):
        out = s.forward(x, norms, lambda proj, v: v @ tensors[proj].dequantize().T)
        return float(((out - target) ** 2).mean())
    assert mse(tuned) == pytest.approx(after, rel=1e-3)
    assert mse(quantized) == pytest.approx(before, rel=1e-3)


@settings(max_examples=8)
@given(lr=st.sampled_from([1e-3, 1e-1, 3.0, 100.0]), steps=st.integers(0, 8),
       seed=st.integers(0, 100))
def test_tuning_never_returns_parameters_worse_than_the_given_ones(lr, steps, seed):
    # a wild learning rate makes Adam overshoot: then the given parameters come back unchanged
    x, target, quantized, norms, cfg, s = _quantized_block()
    tuned, before, after = tune_block(x, target, quantized, norms, cfg, s.cos, s.sin,
                                      steps=steps, lr=lr, batch=2, seed=seed)
    assert after <= before
    if after == before:
        for p, qt in quantized.items():
            np.testing.assert_array_equal(tuned[p].scale, qt.scale)
            np.testing.assert_array_equal(tuned[p].offset, qt.offset)


@pytest.mark.parametrize("target", ["float-block", "float-stream"])
def test_the_stream_carries_the_tuned_model_s_own_states(target):
    weights = tiny_tensors(TINY_CONFIG, seed=5)
    ck = DictCheckpoint(weights, TINY_CONFIG)
    batches = (np.arange(4 * 24).reshape(4, 24) * 7 + 1) % TINY_CONFIG["vocab_size"]

    def quantize(name, w, hessian, mean_square):
        return gptq_quantize(w, inverse_hessian_factor(hessian), 16, "q35")

    stream = LayerStream(ck, TINY_CONFIG, batches, quantize, refit=True, tune_steps=20,
                         target=target, tune_options={"lr": 1e-2, "batch": 2})
    blocks = [stream.block(i) for i in range(TINY_CONFIG["num_hidden_layers"])]
    assert [layer for layer, _, _ in stream.tune_log] == [0, 1]
    assert all(after <= before for _, before, after in stream.tune_log)
    assert_stream_is_the_quantized_model(stream, blocks, weights, batches)


def test_a_file_quantized_with_tuning_loads_generates_and_keeps_its_size(tmp_path, capsys):
    from q35f.cli import main

    src = write_hf(tmp_path / "src", tiny_tensors(TINY_CONFIG, seed=3))
    text = tmp_path / "calibration.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession "
                    "of a good fortune, must be in want of a wife. " * 40)
    common = [str(src), "--calibration", str(text), "--calibration-tokens", "512",
              "--group-size", "16", "--json", "--no-progress"]
    # tuning implies no rotation and float16 group parameters: compare with the default recipe
    # without either
    assert main(["quantize", *common, "-o", str(tmp_path / "plain"), "--rotation", "none",
                 "--group-params", "float16"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["quantize", *common, "-o", str(tmp_path / "tuned"), "--refit-scales",
                 "--tune-scales", "--tune-steps", "5"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["bits_per_weight"] == plain["bits_per_weight"]
    assert tuned["linear_bits_per_weight"] == plain["linear_bits_per_weight"]
    assert tuned["file_bytes"] == plain["file_bytes"]
    qc = json.loads((tmp_path / "tuned" / "config.json").read_text())["quantization_config"]
    assert qc["tune"]["steps"] == 5 and qc["refit"] == "hessian"
    assert qc["format_version"] == 1
    assert main(["generate", str(tmp_path / "tuned"), "--prompt", "It is", "-n", "4",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("It is")


def test_tuning_options_are_checked(tmp_path):
    from q35f.quantization.convert import quantize_checkpoint

    src = write_hf(tmp_path / "src", tiny_tensors(TINY_CONFIG, seed=3))
    with pytest.raises(ValueError, match="need --gptq"):
        quantize_checkpoint(src, tmp_path / "q", tune_steps=5, clip_search=True)
    with pytest.raises(ValueError, match="target"):
        LayerStream(DictCheckpoint(tiny_tensors(TINY_CONFIG), TINY_CONFIG), TINY_CONFIG,
                    np.zeros((1, 4), int), None, target="sideways")
