"""Compact group parameters, "e4m4" (q35f.format.group_params, FORMAT.md §10); the code
tables themselves against the Lean theorems: tests/kernels/test_lean_kernels.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.format import group_params as gp


@st.composite
def parameter_sets(draw):
    rows, groups = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = 10.0 ** draw(st.floats(-4, 2))
    w = (rng.standard_normal((rows, groups * 16)) * size
         + draw(st.sampled_from([0.0, 0.5, -3.0])) * size).astype(np.float32)
    qt = q35f.quantize(w, 16, "q35", clip_search=draw(st.booleans()))
    return w, qt


@given(parameter_sets())
def test_snapped_parameters_round_trip_exactly_and_stay_near(case):
    w, qt = case
    exponents = gp.row_exponents(w)
    offset, scale = gp.snap(qt.offset, qt.scale, exponents, 15)
    back_offset, back_scale = gp.decode(*gp.encode(offset, scale, 15), 15)
    np.testing.assert_array_equal(back_scale.view(np.uint16), scale.view(np.uint16))
    np.testing.assert_array_equal(back_offset.view(np.uint16), offset.view(np.uint16))
    s0, s1 = qt.scale.astype(np.float64), scale.astype(np.float64)
    o0, o1 = qt.offset.astype(np.float64), offset.astype(np.float64)
    # groups whose low end lies within their range below zero keep their grid: scale within
    # half a code (1/32 of an octave), offset within half a 128th of the range plus float16
    # rounding
    near = (s0 > 2.0 ** (exponents[:, None].astype(int) - 14)) & (o0 <= 0) & (o0 >= -15 * s0)
    assert np.all(np.abs(s1 / np.where(s0 > 0, s0, 1) - 1)[near] <= 1 / 32 + 1e-9)
    assert np.all((np.abs(o1 - o0) <= 15 * s1 / 256 + np.abs(o0) * 2.0**-10 + 2.0**-24)[near])


def test_snap_keeps_zero_groups_zero_and_constant_groups_reachable():
    offset = np.array([[0.0, 1.0, -3.0, 0.0]], np.float16)
    scale = np.array([[0.0, 0.0, 0.01, 0.5]], np.float16)
    o, s = gp.snap(offset, scale, np.array([3], np.int8), 15)
    assert o[0, 0] == 0 and s[0, 0] == 0  # a zero group stays exactly zero
    step = 15 / 128 * s.astype(np.float64)  # the offset codes' resolution
    assert s[0, 1] > 0 and abs(float(o[0, 1]) - 1.0) <= step[0, 1] / 2  # constant 1.0
    # -3 lies 300 steps of 0.01 below zero: the scale widens until the offset codes reach it
    assert float(s[0, 2]) >= 3.0 / (15 * 191 / 128) and abs(float(o[0, 2]) + 3.0) <= step[0, 2]
    gp.encode(o, s, 15)  # all representable


def test_parameters_without_codes_are_refused():
    with pytest.raises(ValueError, match="no e4m4 codes"):
        gp.encode(np.array([[0.0]], np.float16), np.array([[0.0123]], np.float16), 15)
    with pytest.raises(ValueError, match="no e4m4 codes"):  # offset 100 steps below zero
        gp.encode(np.array([[-100.0]], np.float16), np.array([[1.0]], np.float16), 15)
    with pytest.raises(ValueError, match="no e4m4 codes"):  # a zero scale with an offset
        gp.encode(np.array([[1.0]], np.float16), np.array([[0.0]], np.float16), 15)


def test_row_exponents_leave_room_above_the_widest_group():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 256)).astype(np.float32) * np.logspace(-3, 2, 8)[:, None]
    e = gp.row_exponents(w).astype(int)
    widest = (w.max(1) - w.min(1)) / 15
    assert np.all(31 / 16 * 2.0 ** e >= gp.ROW_MARGIN * widest)
    free = e > gp.EXPONENT_MIN  # rows of tiny weights sit at the exact-float16 floor
    assert np.all((31 / 16 * 2.0 ** (e - 1) < gp.ROW_MARGIN * widest)[free])  # no more room
    assert free.sum() >= 4
    assert gp.row_exponents(np.zeros((2, 16), np.float32)).tolist() == [gp.EXPONENT_MIN] * 2


def test_bits_per_weight_of_compact_parameters():
    from q35f.format.spec import bits_per_weight

    assert bits_per_weight(576, 64, "q35", "e4m4") == pytest.approx(3.5 + 16 / 64 + 8 / 576)
    assert bits_per_weight(576, 128, "q35") == pytest.approx(3.5 + 32 / 128 + 32 * 0.5 / 576)
