"""The kernels' float16 decoder (q35_half.half_to_real) against numpy's, on every bit pattern.

A group's scale and offset are float16 (FORMAT.md §4). Exponent 31 is Inf or NaN: decoding it
as a number turned a NaN scale into 786429.7 and hid corrupt files (issue 13). The kernels must
decode all 65,536 patterns exactly as IEEE 754 widening does, so non-finite parameters stay
non-finite through dequantize and GEMV.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.kernels import fortran as kernels
from q35f.kernels import reference
from q35f.kernels.tensor import QuantizedTensor
from conftest import BITS

ALL_PATTERNS = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
NON_FINITE = np.array([0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7FFF], np.uint16).view(np.float16)


def _tensor(packed, scale, offset, k, group_size, bits):
    """A QuantizedTensor from file-layout pieces, whatever their values."""
    return QuantizedTensor(kernels.packed_to_tiles(packed, bits),
                           kernels.tile_rows(scale.view(np.int16)),
                           kernels.tile_rows(offset.view(np.int16)),
                           (packed.shape[0], k), group_size, bits)


def _level_one_rows(n):
    """q35 rows of 16 weights: even weights at level 1, odd weights at level 0."""
    codes = q35f.encode(np.full((n, 8), -7, np.int8), np.full((n, 8), -4, np.int8))
    return q35f.pack_codes(codes)


def test_every_float16_scale_decodes_like_numpy():
    n = ALL_PATTERNS.size
    packed = _level_one_rows(n)
    scale = ALL_PATTERNS.reshape(n, 1)
    offset = np.zeros((n, 1), np.float16)
    w = _tensor(packed, scale, offset, 16, 16, "q35").dequantize()
    # even weight = offset + scale * 1 = the decoded scale, bit for bit (NaN payloads aside)
    assert np.array_equal(w[:, 0], scale[:, 0].astype(np.float32), equal_nan=True)
    assert np.isinf(w[:, 0]).sum() == 2 and np.isnan(w[:, 0]).sum() == 2 * 1023
    ref = reference.dequantize(packed, scale, offset, 16, 16, "q35")
    assert np.array_equal(w, ref, equal_nan=True)


def test_every_float16_offset_decodes_like_numpy():
    n = ALL_PATTERNS.size
    packed = _level_one_rows(n)
    offset = ALL_PATTERNS.reshape(n, 1)
    scale = np.zeros((n, 1), np.float16)
    w = _tensor(packed, scale, offset, 16, 16, "q35").dequantize()
    assert np.array_equal(w, np.repeat(offset.astype(np.float32), 16, axis=1), equal_nan=True)


@given(rows=st.integers(1, 40), k=st.integers(1, 300), group_size=st.sampled_from([16, 32, 128]),
       bits=st.sampled_from(BITS), seed=st.integers(0, 2**32 - 1), m=st.sampled_from([1, 3, 9]))
def test_non_finite_parameters_stay_non_finite_in_dequantize_and_gemv(rows, k, group_size, bits,
                                                                     seed, m):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    qt = q35f.quantize(w, group_size, bits)
    packed, scale, offset = qt.packed, qt.scale.copy(), qt.offset.copy()
    for params in (scale, offset):
        bad = rng.random(params.shape) < 0.2
        params[bad] = rng.choice(NON_FINITE, size=int(bad.sum()))
    bad_qt = _tensor(packed, scale, offset, k, group_size, bits)
    ref = reference.dequantize(packed, scale, offset, k, group_size, bits)
    assert np.array_equal(bad_qt.dequantize(), ref, equal_nan=True)
    x = rng.standard_normal((m, k)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = x.astype(np.float64) @ ref.astype(np.float64).T
    got = q35f.matmul(x, bad_qt)
    # a row is non-finite exactly where the reference's is (Inf - Inf may be NaN in one only)
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
