"""The input rotation (FORMAT.md §9): the Fortran transform against explicit matrices, the
rotated tensor standing for W everywhere, and the files that carry it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import q35f
from q35f.format.rotation import can_rotate, column_signs
from q35f.kernels import fortran as kernels
from q35f.kernels import reference
from q35f.kernels.tensor import QuantizedTensor


@st.composite
def rotatable_shapes(draw):
    """(K, group): every group length a power of two, ragged tails included."""
    group = draw(st.sampled_from([16, 32, 64, 128, 256]))
    tail = draw(st.sampled_from([0] + [t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t < group]))
    full = draw(st.integers(0 if tail else 1, 4))
    return full * group + tail, group


def _fmix32(c: int) -> int:
    """murmur3's finaliser in plain Python integers, written independently of the numpy one."""
    c ^= c >> 16
    c = (c * 0x85EBCA6B) % 2**32
    c ^= c >> 13
    c = (c * 0xC2B2AE35) % 2**32
    return c ^ (c >> 16)


def test_column_signs_follow_the_format():
    k = 3000
    want = np.array([-1.0 if _fmix32(c) & 1 else 1.0 for c in range(k)], dtype=np.float32)
    np.testing.assert_array_equal(column_signs(k), want)
    assert 0.45 < (want > 0).mean() < 0.55  # about as many of each


@given(shape=rotatable_shapes(), m=st.integers(1, 5), seed=st.integers(0, 999),
       inverse=st.booleans())
def test_fortran_rotation_equals_the_matrix_product(shape, m, seed, inverse, no_array_copies):
    k, group = shape
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    got = kernels.rotate_rows(x, group, inverse=inverse)
    want = reference.rotate(x, group, inverse=inverse)
    # log2(group) passes of float32 additions, then one scaling
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(x).max() * np.sqrt(group))


@given(shape=rotatable_shapes(), seed=st.integers(0, 999))
def test_rotation_is_orthogonal_and_keeps_every_product(shape, seed):
    k, group = shape
    r = reference.rotation_matrix(k, group)
    np.testing.assert_allclose(r @ r.T, np.eye(k), atol=1e-12)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((7, k)).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    # the stored matrix W R times the rotated input R^T x is W x
    got = kernels.rotate_rows(w, group) @ kernels.rotate_rows(x, group).T
    np.testing.assert_allclose(got, w @ x.T, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    back = kernels.rotate_rows(kernels.rotate_rows(x, group), group, inverse=True)
    np.testing.assert_allclose(back, x, atol=1e-5)


@pytest.mark.parametrize("k, group", [(100, 64), (48, 48), (96, 48), (200, 128)])
def test_groups_that_are_not_powers_of_two_are_refused(k, group):
    assert not can_rotate(k, group)
    w = np.ones((2, k), dtype=np.float32)
    with pytest.raises(ValueError, match="power"):
        kernels.rotate_rows(w, group)
    with pytest.raises(ValueError, match="power-of-two group lengths"):
        q35f.quantize(w, group, rotation="hadamard")


def test_unknown_rotation_is_refused():
    with pytest.raises(ValueError, match="rotation must be one of"):
        q35f.quantize(np.ones((2, 64), dtype=np.float32), 64, rotation="givens")


def _rotated(k, group, bits, seed):
    w = np.random.default_rng(seed).standard_normal((21, k)).astype(np.float32)
    return w, q35f.quantize(w, group, bits, rotation="hadamard")


@pytest.mark.parametrize("bits", ["q35", "int4", "int8", "int3"])
@given(shape=rotatable_shapes(), m=st.sampled_from([1, 3, 8, 20]), seed=st.integers(0, 999))
def test_rotated_matmul_feeds_the_rotated_input_to_the_stored_matrix(bits, shape, m, seed):
    k, group = shape
    w, qt = _rotated(k, group, bits, seed)
    stored = kernels.dequantize_tiles(qt, 0, qt.tile_arrays[0].shape[0])[:21, :k]
    x = np.random.default_rng(seed + 1).standard_normal((m, k)).astype(np.float32)
    exact = reference.rotate(x, group) @ stored.astype(np.float64).T
    scale = np.abs(reference.rotate(x, group)) @ np.abs(stored.astype(np.float64)).T
    y = q35f.matmul(x, qt)
    assert np.all(np.abs(y - exact) <= 1e-5 * scale + 1e-6 * np.abs(x).max())
    # the tensor still stands for W: its dequantized rows are the stored ones rotated back
    np.testing.assert_allclose(qt.dequantize(), reference.rotate(stored, group, inverse=True),
                               atol=1e-5 * max(1.0, np.abs(stored).max()))
    rows = np.array([0, 20, 5])
    np.testing.assert_array_equal(qt.take_rows(rows), qt.dequantize()[rows])


def test_rotation_spreads_an_outlier_over_its_group():
    """What the rotation is for: one large weight stretches a plain group's range; rotated, the
    group is near-Gaussian and the error of the whole row drops."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    w[:, 7] = 1.0
    plain = q35f.quantize(w, 128).dequantize()
    rotated = q35f.quantize(w, 128, rotation="hadamard").dequantize()
    assert np.square(rotated - w).sum() < 0.5 * np.square(plain - w).sum()


def test_prompt_paths_rotate_once(monkeypatch):
    """GEMV, float32/bf16 band GEMM and the integer GEMM all see the rotated input."""
    w, qt = _rotated(256, 128, "q35", 3)
    x = np.random.default_rng(4).standard_normal((12, 256)).astype(np.float32)
    want = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    for gemm, tol in (("float32", 1e-4), ("int8", 3e-2)):
        monkeypatch.setenv("Q35F_PROMPT_GEMM", gemm)
        got = q35f.matmul(x, qt)
        assert np.abs(got - want).max() <= tol * np.abs(want).max(), gemm
    np.testing.assert_allclose(q35f.matmul(x[0], qt), want[0], rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


def test_as_rotated_shares_the_arrays():
    w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    qt = q35f.quantize(kernels.rotate_rows(w, 64), 64)
    view = qt.as_rotated()
    assert view.tile_arrays[0] is qt.tile_arrays[0]
    assert view.rotated and not qt.rotated and view.config.rotation == "hadamard"
    np.testing.assert_array_equal(view.dequantize(), q35f.quantize(w, 64, rotation="hadamard")
                                  .dequantize())
    assert "rotation='hadamard'" in repr(view)


def test_from_packed_checks_the_rotation():
    w = np.ones((4, 100), dtype=np.float32)
    qt = q35f.quantize(w, 64)
    with pytest.raises(ValueError, match="power-of-two"):
        QuantizedTensor.from_packed(qt.packed, qt.scale, qt.offset, qt.shape, 64, "q35",
                                    "hadamard")
