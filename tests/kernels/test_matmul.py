"""Fused dequantize-matmul: y = x @ W.T against a float64 product of the dequantized matrix."""

import numpy as np
import pytest
from conftest import BITS, weight_matrices
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.kernels import tensor


def _check(x, qt):
    y = q35f.matmul(x, qt)
    w = qt.dequantize().astype(np.float64)
    exact = x.astype(np.float64) @ w.T
    assert y.dtype == np.float32 and y.shape == exact.shape
    # 1e-5 relative to the size of the terms the fused kernel sums, offset*sum(x) and
    # step*sum(x*level) (FORMAT.md §4); cancellation makes |y| itself meaningless.
    n, k = qt.shape
    offset = np.repeat(qt.offset.astype(np.float64), qt.group_size, axis=1)[:, :k]
    magnitude = np.abs(x.astype(np.float64)) @ (np.abs(offset) + np.abs(w - offset)).T
    assert np.all(np.abs(y - exact) <= 1e-5 * magnitude + 1e-30)


@pytest.mark.parametrize("bits", BITS)
@given(data=weight_matrices(), m=st.sampled_from([1, 2, 5, 8, 33]), seed=st.integers(0, 999))
def test_matmul_matches_the_dequantized_product(bits, data, m, seed, no_array_copies):
    w, group_size = data
    qt = q35f.quantize(w, group_size, bits)
    x = np.random.default_rng(seed).standard_normal((m, w.shape[1])).astype(np.float32)
    _check(x, qt)


def test_gemm_path_works_in_bounded_bands(monkeypatch):
    # Force many bands: each holds a single tile of 16 rows.
    monkeypatch.setattr(tensor, "GEMM_BUFFER_FLOATS", 16 * 200)
    w = np.random.default_rng(0).standard_normal((75, 200)).astype(np.float32)
    qt = q35f.quantize(w, 64)
    x = np.random.default_rng(1).standard_normal((20, 200)).astype(np.float32)
    _check(x, qt)


def test_a_vector_gives_a_vector():
    w = np.random.default_rng(0).standard_normal((7, 40)).astype(np.float32)
    qt = q35f.quantize(w, 16)
    x = np.ones(40, dtype=np.float32)
    y = q35f.matmul(x, qt)
    assert y.shape == (7,)
    assert np.allclose(y, qt.dequantize().sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (np.ones((2, 41), np.float32), ValueError, "41 features"),
        (np.ones((2, 40), np.float64), TypeError, "float32"),
        (np.ones((0, 40), np.float32), ValueError, "at least one row"),
        (np.ones((2, 2, 40), np.float32), ValueError, "1-D or 2-D"),
    ],
)
def test_mismatched_input_is_rejected(x, error, match):
    qt = q35f.quantize(np.ones((3, 40), np.float32), 16)
    with pytest.raises(error, match=match):
        q35f.matmul(x, qt)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        q35f.matmul(np.ones((1, 40), np.float32), np.ones((3, 40), np.float32))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("rows, k, group_size", [(16, 64, 64), (37, 80, 32)])
def test_every_weight_position_reaches_its_own_input_in_the_gemv(bits, rows, k, group_size):
    # x = e_j picks column j: each bit field of a block must meet its own input (a field read
    # from the wrong bits or fed the wrong x shows here even where random sums would blur it).
    # Uniform integer weights per group put every level at every position of a block.
    rng = np.random.default_rng(7)
    levels = {"q35": 16, "int8": 256, "int4": 16, "int3": 8}[bits]
    w = rng.integers(0, levels, (rows, k)).astype(np.float32)
    w[:, ::group_size] = 0
    w[:, 1::group_size] = levels - 1  # each group spans the whole grid
    qt = q35f.quantize(w, group_size, bits)
    dense = qt.dequantize()
    for j in range(k):
        x = np.zeros((1, k), np.float32)
        x[0, j] = 1
        np.testing.assert_allclose(q35f.matmul(x, qt)[0], dense[:, j], rtol=1e-6, atol=1e-6)
