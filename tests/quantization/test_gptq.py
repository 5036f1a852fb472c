"""Error feedback (q35f.quantization.gptq) on the mixed 4/3-bit grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.quantization.calibrate import Calibration, sequences
from q35f.quantization.gptq import gptq_quantize, inverse_hessian_factor, output_error


def _layer(seed, n=48, k=256, tokens=1024):
    """A random layer and correlated inputs with a few loud channels: its Hessian X^T X."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    mix = np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k)
    x = rng.standard_normal((tokens, k)) @ mix
    x[:, rng.choice(k, 8, replace=False)] *= 6
    return w, x.T @ x


def test_inverse_hessian_factor_is_upper_and_factors_the_damped_inverse():
    _, h = _layer(0, k=64)
    u = inverse_hessian_factor(h, damping=0.01)
    np.testing.assert_array_equal(u, np.triu(u))
    damped = h + 0.01 * np.diag(h).mean() * np.eye(64)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-8,
                               atol=1e-10 * np.abs(np.linalg.inv(damped)).max())


@pytest.mark.parametrize("bits", ["q35", "int4", "int3"])
@pytest.mark.parametrize("clip_search", [False, True])
@pytest.mark.parametrize("seed", [1])
def test_error_feedback_lowers_the_output_error_below_round_to_nearest(bits, clip_search, seed):
    w, h = _layer(seed)
    fed = gptq_quantize(w, inverse_hessian_factor(h), 128, bits, clip_search).dequantize()
    rounded = q35f.quantize(w, 128, bits, clip_search=clip_search).dequantize()
    assert output_error(w, fed, h) < 0.9 * output_error(w, rounded, h)


@given(n=st.integers(1, 20), k=st.integers(1, 150), group_size=st.sampled_from([16, 32, 64]),
       seed=st.integers(0, 2**32 - 1))
def test_a_diagonal_hessian_gives_round_to_nearest_exactly(n, k, group_size, seed):
    # With uncorrelated inputs no column's error can be compensated by another.
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    h = np.diag(rng.random(k) + 0.1)
    fed = gptq_quantize(w, inverse_hessian_factor(h), group_size, "q35")
    plain = q35f.quantize(w, group_size, "q35")
    np.testing.assert_array_equal(fed.packed, plain.packed)
    np.testing.assert_array_equal(fed.scale, plain.scale)
    np.testing.assert_array_equal(fed.offset, plain.offset)


def test_channels_never_active_in_calibration_are_harmless():
    w, h = _layer(3, k=64)
    h[:, 5] = h[5, :] = 0
    u = inverse_hessian_factor(h)
    assert np.isfinite(u).all()
    fed = gptq_quantize(w, u, 32, "q35").dequantize()
    assert np.isfinite(fed).all()
    # every weight stays near its group's range: error feedback moves weights, not the grid
    assert np.abs(fed - w).max() < 2 * np.abs(w).max()


def test_factor_shape_must_match():
    w, h = _layer(4, k=64)
    with pytest.raises(ValueError, match="Hessian factor"):
        gptq_quantize(w, inverse_hessian_factor(h[:32, :32]), 32)


def test_calibration_sequences_are_spread_and_checked():
    ids = np.arange(1000)
    batches = sequences(ids, 300, 100)
    assert batches.shape == (3, 100)
    assert batches[0, 0] == 0 and batches[-1, -1] < 1000
    assert len(set(batches[:, 0])) == 3
    with pytest.raises(ValueError, match="calibration-tokens"):
        sequences(ids, 50, 100)
    with pytest.raises(ValueError, match="only 1000 tokens"):
        sequences(ids, 5000, 100)
    assert Calibration("x", 3, 100).tokens == 300


def test_the_layer_stream_feeds_each_block_the_quantized_model_s_own_states():
    # Quantize block by block (int8 rounding as the callback) and compare the carried hidden
    # states with the forward pass of the model made of exactly those quantized weights.
    from q35f.quantization.sequential import LayerStream
    from conftest import (TINY_CONFIG, DictCheckpoint, assert_stream_is_the_quantized_model,
                          tiny_tensors)

    weights = tiny_tensors(TINY_CONFIG, seed=5)
    ck = DictCheckpoint(weights, TINY_CONFIG)
    batches = (np.arange(3 * 24).reshape(3, 24) * 7 + 1) % TINY_CONFIG["vocab_size"]
    seen = {}

    def quantize(name, w, hessian, mean_square):
        seen[name] = (hessian.shape, mean_square.shape)
        assert np.allclose(np.diag(hessian) / batches.size, mean_square)
        return q35f.quantize(w, 32, "int8")

    stream = LayerStream(ck, TINY_CONFIG, batches, quantize)
    layers = TINY_CONFIG["num_hidden_layers"]
    blocks = [stream.block(i) for i in reversed(range(layers))]  # any order: later ones wait
    assert len(seen) == 7 * layers
    assert_stream_is_the_quantized_model(stream, blocks, weights, batches)
    with pytest.raises(ValueError, match="already handed out"):
        stream.block(0)
