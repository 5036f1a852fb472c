"""Symmetric group parameters (the ablation's symmetric grid) and their use inside GPTQ."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from q35f.quantization.calibrate import calibration_text
from q35f.quantization.gptq import gptq_quantize, inverse_hessian_factor
from q35f.quantization.symmetric import (dequantize_group, symmetric_parameters,
                                         symmetric_scale)


def _group(seed=0, shape=(24, 128)):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, shape).astype(np.float32) * np.float32(0.02)
    w[0] = 0  # an all-zero row
    return w


def test_symmetric_scale_is_the_smallest_float16_covering_max_abs():
    m = np.abs(_group()).max(axis=1)
    s = symmetric_scale(m, 15)
    assert np.all(np.float32(7.5) * s >= m)
    below = np.nextafter(s.astype(np.float16), np.float16(0)).astype(np.float32)
    assert np.all((np.float32(7.5) * below < m) | (s == 0))


def test_offsets_are_the_float16_nearest_minus_half_range():
    offset, scale = symmetric_parameters(_group(1), "q35", search=True)
    expect = (np.float32(-7.5) * scale.astype(np.float32)).astype(np.float16)
    assert offset.dtype == scale.dtype == np.float16
    assert np.array_equal(offset, expect)


def test_search_never_does_worse_than_the_full_range_on_its_objective():
    w = _group(2)
    importance = np.random.default_rng(3).uniform(0.1, 3, w.shape[1]).astype(np.float32)

    def weighted_error(params):
        offset, scale = (p.astype(np.float32) for p in params)
        return (((w - dequantize_group(w, offset, scale)) ** 2) * importance).sum(axis=1)

    full = weighted_error(symmetric_parameters(w, search=False, importance=importance))
    searched = weighted_error(symmetric_parameters(w, search=True, importance=importance))
    assert np.all(searched <= full * (1 + 1e-6) + 1e-12)


def test_gptq_with_symmetric_groups_stores_centred_parameters():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.05, (16, 256)).astype(np.float32)
    x = rng.normal(size=(512, 256)).astype(np.float32)
    factor = inverse_hessian_factor(x.T.astype(np.float64) @ x)
    qt = gptq_quantize(w, factor, 128, "q35", clip_search=True, symmetric=True)
    expect = (np.float32(-7.5) * qt.scale.astype(np.float32)).astype(np.float16)
    assert np.array_equal(qt.offset, expect)
    assert qt.dequantize().shape == w.shape
    assert np.abs(qt.dequantize() - w).max() < 0.1


def test_symmetric_needs_gptq():
    from q35f.quantization.recipe import Improver

    with pytest.raises(ValueError, match="GPTQ only"):
        Improver(object(), clip_search=True, symmetric=True)


def test_calibration_text_reads_gzip_files(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress("one sample\n\nanother".encode()))
    assert calibration_text(str(path)) == "one sample\n\nanother"
