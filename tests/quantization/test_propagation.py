"""Error propagation (q35f.quantization.sequential.propagation_correction, `--propagation`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import q35f
from q35f.quantization.sequential import LayerStream, propagation_correction, weight_name


def _objective(x, x_float, w, w_star, damping_term=0.0):
    """||X W*^T - X_float W^T||^2 in float64."""
    x, x_float = np.asarray(x, np.float64), np.asarray(x_float, np.float64)
    return float(((x @ np.asarray(w_star, np.float64).T - x_float @ w.T) ** 2).sum())


def _inputs(seed, tokens, k, n, noise):
    rng = np.random.default_rng(seed)
    x_float = rng.standard_normal((tokens, k)).astype(np.float32)
    x_float[:, rng.integers(k)] *= 5  # a loud channel
    x = (x_float + noise * rng.standard_normal((tokens, k))).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    return x, x_float, w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), tokens=st.integers(1, 80), k=st.integers(1, 24),
       n=st.integers(1, 6), noise=st.sampled_from([0.0, 0.01, 0.3, 2.0]),
       damping=st.sampled_from([1e-6, 0.01, 0.05, 1.0]),
       strength=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_the_corrected_weight_never_reproduces_the_float_output_worse(seed, tokens, k, n, noise,
                                                                      damping, strength):
    # W* = W + a W C minimises ||X W*^T - X_float W^T||^2 + damping ||W* - W||^2 at a = 1, so
    # every a in [0, 1] (a convex objective on the segment from W) is no worse than W itself,
    # even with fewer tokens than inputs (a singular X^T X).
    x, x_float, w = _inputs(seed, tokens, k, n, noise)
    hessian = x.T.astype(np.float64) @ x
    c = propagation_correction(x, x_float, hessian, damping)
    assert c.shape == (k, k) and np.isfinite(c).all()
    w_star = w + strength * (w.astype(np.float64) @ c)
    before = _objective(x, x_float, w, w)
    assert _objective(x, x_float, w, w_star) <= before * (1 + 1e-6) + 1e-6


def test_full_correction_is_the_least_squares_weight():
    # Enough tokens and almost no damping: W* solves the normal equations X^T X W*^T =
    # X^T X_float W^T, i.e. the quantized inputs reproduce the float output as well as any W can.
    x, x_float, w = _inputs(3, 400, 16, 5, 0.3)
    # an upstream error that is a linear map of the float input can be undone exactly
    x = (x_float @ (np.eye(16) + 0.2 * np.random.default_rng(9).standard_normal((16, 16))))
    x = x.astype(np.float32)
    hessian = x.T.astype(np.float64) @ x
    w_star = w + w.astype(np.float64) @ propagation_correction(x, x_float, hessian, 1e-9)
    x64, xf64 = x.astype(np.float64), x_float.astype(np.float64)
    exact = np.linalg.lstsq(x64, xf64 @ w.T.astype(np.float64), rcond=None)[0].T
    np.testing.assert_allclose(w_star, exact, rtol=1e-5, atol=1e-5)
    assert _objective(x, x_float, w, w_star) < 1e-6 * _objective(x, x_float, w, w)


def test_no_upstream_error_means_no_correction():
    x, _, _ = _inputs(4, 50, 12, 3, 0.0)
    c = propagation_correction(x, x.copy(), x.T.astype(np.float64) @ x, 0.05)
    assert np.array_equal(c, np.zeros_like(c))


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_the_stream_corrects_every_weight_after_the_first_error(strength):
    # Block 0's q/k/v read the embedding, where float and quantized streams agree: their
    # weights go to the quantizer unchanged. Every later input differs, so the weights change;
    # the carried states are still those of the model made of the quantized blocks.
    from conftest import (TINY_CONFIG, DictCheckpoint, assert_stream_is_the_quantized_model,
                          tiny_tensors)

    weights = tiny_tensors(TINY_CONFIG, seed=5)
    ck = DictCheckpoint(weights, TINY_CONFIG)
    batches = (np.arange(3 * 24).reshape(3, 24) * 7 + 1) % TINY_CONFIG["vocab_size"]
    given_weights = {}

    def quantize(name, w, hessian, mean_square):
        given_weights[name] = w
        return q35f.quantize(w, 32, "q35")  # coarse: upstream errors are large

    stream = LayerStream(ck, TINY_CONFIG, batches, quantize, propagation=strength)
    layers = TINY_CONFIG["num_hidden_layers"]
    blocks = [stream.block(i) for i in range(layers)]
    for layer in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj"):
            name = weight_name(layer, proj)
            same = np.array_equal(given_weights[name], weights[name])
            assert same == (layer == 0 and proj in ("q_proj", "k_proj", "v_proj")), name
            assert given_weights[name].dtype == np.float32
    assert_stream_is_the_quantized_model(stream, blocks, weights, batches)


def test_propagation_is_checked():
    from conftest import TINY_CONFIG, DictCheckpoint, tiny_tensors
    from q35f.quantization.recipe import Improver

    ck = DictCheckpoint(tiny_tensors(TINY_CONFIG), TINY_CONFIG)
    with pytest.raises(ValueError, match="needs --gptq"):
        Improver(ck, clip_search=True, propagation=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Improver(ck, gptq=True, propagation=1.5)
    batches = np.zeros((1, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LayerStream(ck, TINY_CONFIG, batches, None, propagation=-0.1)
