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


def test_coarse_first_orders_q35_s_odd_columns_before_its_even_ones():
    from q35f.quantization.gptq import column_order

    np.testing.assert_array_equal(column_order(7, "q35", "coarse-first"), [1, 3, 5, 0, 2, 4, 6])
    assert column_order(8, "q35") is None  # natural
    assert column_order(8, "int4", "coarse-first") is None  # one grid: nothing to order
    with pytest.raises(ValueError, match="order must be one of"):
        column_order(8, "q35", "random")


def test_the_factor_in_an_order_is_the_factor_of_the_permuted_hessian():
    from q35f.quantization.gptq import column_order

    _, h = _layer(6, k=64)
    order = column_order(64, "q35", "coarse-first")
    np.testing.assert_array_equal(inverse_hessian_factor(h, 0.05, order),
                                  inverse_hessian_factor(h[np.ix_(order, order)], 0.05))


@given(n=st.integers(1, 12), k=st.integers(1, 150), group_size=st.sampled_from([16, 32, 64]),
       bits=st.sampled_from(["q35", "int4"]), group_params=st.sampled_from(["float16", "e4m4"]),
       seed=st.integers(0, 2**32 - 1))
def test_the_natural_order_given_explicitly_changes_nothing(n, k, group_size, bits,
                                                            group_params, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((2 * k + 4, k))
    h = x.T @ x
    u = inverse_hessian_factor(h)
    a = gptq_quantize(w, u, group_size, bits, True, group_params=group_params)
    b = gptq_quantize(w, u, group_size, bits, True, group_params=group_params,
                      order=np.arange(k))
    np.testing.assert_array_equal(a.packed, b.packed)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.offset, b.offset)


@given(n=st.integers(1, 12), k=st.integers(1, 150), group_size=st.sampled_from([16, 32, 64]),
       seed=st.integers(0, 2**32 - 1))
def test_coarse_first_with_a_diagonal_hessian_is_still_round_to_nearest(n, k, group_size, seed):
    # No column can compensate another, in any order; a group's parameters come from its
    # untouched weights.
    from q35f.quantization.gptq import column_order

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    h = np.diag(rng.random(k) + 0.1)
    order = column_order(k, "q35", "coarse-first")
    fed = gptq_quantize(w, inverse_hessian_factor(h, order=order), group_size, "q35",
                        order=order)
    plain = q35f.quantize(w, group_size, "q35")
    np.testing.assert_array_equal(fed.packed, plain.packed)
    np.testing.assert_array_equal(fed.scale, plain.scale)


@pytest.mark.parametrize("group_params", ["float16", "e4m4"])
def test_coarse_first_lowers_the_output_error_of_correlated_layers(group_params):
    # What the order is for (not a bound: on the embedded model's layers -8 to -28 %).
    from q35f.quantization.gptq import column_order

    ratios = []
    for seed in range(10, 16):
        w, h = _layer(seed)
        order = column_order(w.shape[1], "q35", "coarse-first")
        # light damping: this synthetic Hessian is well conditioned, and the more GPTQ trusts
        # it the more the order matters
        natural = gptq_quantize(w, inverse_hessian_factor(h, 0.01), 64, "q35", True,
                                group_params=group_params)
        coarse = gptq_quantize(w, inverse_hessian_factor(h, 0.01, order), 64, "q35", True,
                               group_params=group_params, order=order)
        ratios.append(output_error(w, coarse.dequantize(), h)
                      / output_error(w, natural.dequantize(), h))
    assert np.mean(ratios) < 0.975, ratios  # 0.958 (float16), 0.957 (e4m4) on these seeds


def test_an_order_must_be_a_permutation():
    w, h = _layer(7, k=64)
    with pytest.raises(ValueError, match="permutation"):
        gptq_quantize(w, inverse_hessian_factor(h), 32, order=np.zeros(64, int))
