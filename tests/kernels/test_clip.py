"""Clip search (fortran/q35_clip.f90) against its numpy reference, and the given-parameters path."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BITS, weight_matrices
from hypothesis import given, settings
from hypothesis import strategies as st

import q35f
from q35f.kernels import reference as ref
from q35f.format.spec import n_groups


def _group_errors(w, deq, group_size, importance=1.0):
    """(Importance-weighted) squared error per (row, group), float64."""
    d = importance * (deq.astype(np.float64) - w.astype(np.float64)) ** 2
    groups = n_groups(w.shape[1], group_size)
    return np.stack([d[:, g * group_size:(g + 1) * group_size].sum(axis=1)
                     for g in range(groups)], axis=1)


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=15)
@given(data=weight_matrices(max_rows=12, max_cols=200))
def test_clip_search_is_bit_identical_to_the_reference(bits, data, no_array_copies):
    w, group_size = data
    qt = q35f.quantize(w, group_size, bits, clip_search=True)
    offset, scale = ref.clip_params(w, group_size, bits)
    np.testing.assert_array_equal(qt.offset.astype(np.float32), offset)
    np.testing.assert_array_equal(qt.scale.astype(np.float32), scale)
    np.testing.assert_array_equal(qt.packed, ref.quantize_with_params(w, offset, scale,
                                                                      group_size, bits))


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=20)
@given(data=weight_matrices(max_rows=12, max_cols=200))
def test_clip_search_is_never_worse_than_min_max_for_any_group(bits, data):
    w, group_size = data
    searched = q35f.quantize(w, group_size, bits, clip_search=True).dequantize()
    plain = q35f.quantize(w, group_size, bits).dequantize()
    # The search compares candidates with the same float64 error it is measured by here
    # (up to summation order, hence the relative slack of a few ulps).
    err_searched = _group_errors(w, searched, group_size)
    err_plain = _group_errors(w, plain, group_size)
    assert np.all(err_searched <= err_plain * (1 + 1e-12) + 1e-300)


def test_clip_search_lowers_the_error_of_gaussian_groups():
    w = np.random.default_rng(3).standard_normal((64, 512)).astype(np.float32)
    searched = q35f.quantize(w, 128, clip_search=True).dequantize()
    plain = q35f.quantize(w, 128).dequantize()
    assert ((searched - w) ** 2).sum() < 0.9 * ((plain - w) ** 2).sum()


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=25)
@given(data=weight_matrices(max_rows=12, max_cols=200))
def test_given_min_max_parameters_reproduce_plain_quantize(bits, data, no_array_copies):
    w, group_size = data
    plain = q35f.quantize(w, group_size, bits)
    again = q35f.quantize(w, group_size, bits, params=(plain.offset, plain.scale))
    np.testing.assert_array_equal(again.packed, plain.packed)
    np.testing.assert_array_equal(again.scale, plain.scale)
    np.testing.assert_array_equal(again.offset, plain.offset)


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=25)
@given(data=weight_matrices(max_rows=12, max_cols=200), shift=st.floats(-3, 3, width=32))
def test_given_parameters_clamp_weights_outside_the_grid(bits, data, shift):
    w, group_size = data
    plain = q35f.quantize(w, group_size, bits)
    moved = (w + np.float32(shift) * np.abs(w).max()).astype(np.float32)
    moved = np.clip(moved, -65504, 65504).astype(np.float32)
    qt = q35f.quantize(moved, group_size, bits, params=(plain.offset, plain.scale))
    expect = ref.quantize_with_params(moved, plain.offset, plain.scale, group_size, bits)
    np.testing.assert_array_equal(qt.packed, expect)


def test_given_parameters_must_match_the_groups():
    w = np.zeros((4, 64), dtype=np.float32)
    bad = np.zeros((4, 3), dtype=np.float16)
    with pytest.raises(ValueError, match="params offset"):
        q35f.quantize(w, 32, params=(bad, bad))
    with pytest.raises(TypeError, match="float16"):
        q35f.quantize(w, 32, params=(np.zeros((4, 2)), np.zeros((4, 2))))


@st.composite
def weighted_matrices(draw):
    """(w, group_size, importance): weight_matrices plus per-column importances incl. zeros."""
    w, group_size = draw(weight_matrices(max_rows=10, max_cols=200))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["lognormal", "sparse", "ones"]))
    k = w.shape[1]
    if kind == "lognormal":
        imp = np.exp(2 * rng.standard_normal(k))
    elif kind == "sparse":
        imp = np.where(rng.random(k) < 0.2, 100 * rng.random(k), 0.0)
    else:
        imp = np.ones(k)
    return w, group_size, imp.astype(np.float32)


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=8)
@given(data=weighted_matrices())
def test_weighted_clip_search_is_bit_identical_to_the_reference(bits, data, no_array_copies):
    w, group_size, imp = data
    qt = q35f.quantize(w, group_size, bits, clip_search=True, importance=imp)
    offset, scale = ref.clip_params(w, group_size, bits, importance=imp)
    np.testing.assert_array_equal(qt.offset.astype(np.float32), offset)
    np.testing.assert_array_equal(qt.scale.astype(np.float32), scale)


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=10)
@given(data=weighted_matrices())
def test_weighted_clip_search_is_never_worse_than_min_max_on_its_weighted_error(bits, data):
    w, group_size, imp = data
    searched = q35f.quantize(w, group_size, bits, clip_search=True, importance=imp).dequantize()
    plain = q35f.quantize(w, group_size, bits).dequantize()
    weighted = (w * 0 + imp).astype(np.float64)  # (N, K): each column's importance
    err_searched = _group_errors(w, searched, group_size, weighted)
    err_plain = _group_errors(w, plain, group_size, weighted)
    assert np.all(err_searched <= err_plain * (1 + 1e-12) + 1e-300)


def test_unit_importance_is_the_plain_clip_search():
    w = np.random.default_rng(5).standard_normal((16, 300)).astype(np.float32)
    plain = q35f.quantize(w, 64, clip_search=True)
    ones = q35f.quantize(w, 64, clip_search=True, importance=np.ones(300, np.float32))
    np.testing.assert_array_equal(plain.packed, ones.packed)
    np.testing.assert_array_equal(plain.scale, ones.scale)


def test_importance_lowers_the_weighted_error_of_gaussian_groups():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((64, 512)).astype(np.float32)
    imp = np.exp(2 * rng.standard_normal(512)).astype(np.float32)
    weighted = q35f.quantize(w, 128, clip_search=True, importance=imp).dequantize()
    unweighted = q35f.quantize(w, 128, clip_search=True).dequantize()
    assert (imp * (weighted - w) ** 2).sum() < (imp * (unweighted - w) ** 2).sum()


def test_importance_is_checked():
    w = np.ones((2, 32), np.float32)
    with pytest.raises(ValueError, match="importance must have shape"):
        q35f.quantize(w, 16, clip_search=True, importance=np.ones(31, np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        q35f.quantize(w, 16, clip_search=True, importance=-np.ones(32, np.float32))
    with pytest.raises(ValueError, match="only by the clip search"):
        q35f.quantize(w, 16, importance=np.ones(32, np.float32))
