"""The integer prompt GEMM (fortran/q35_gemm.f90) against its numpy reference: activation
quantization, integer levels and integer group sums bit for bit; the float result within a bound
derived from the rounding of the activations and of float32 arithmetic."""

import numpy as np
import pytest
from conftest import BITS, weight_matrices
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.kernels import fortran as kernels
from q35f.kernels import reference, tensor

EPS32 = 2.0**-23
TINY = 2.0**-142  # 127 times float32's smallest subnormal, with room: scale's absolute error


@st.composite
def activations(draw, k, max_rows=300):
    """(M, k) float32 activations: normal, huge, tiny (subnormal scales), zero rows, outliers."""
    m = draw(st.integers(1, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "huge", "tiny", "zero_rows", "outliers", "ties"]))
    x = rng.standard_normal((m, k))
    if kind == "huge":
        x *= 1e30
    elif kind == "tiny":
        x *= 1e-40
    elif kind == "zero_rows":
        x[rng.random(m) < 0.5] = 0.0
    elif kind == "outliers":
        x[rng.random((m, k)) < 0.01] = 1e4
    elif kind == "ties":  # exact multiples of half a step: floor(v + 1/2) decides
        x = rng.integers(-254, 255, size=(m, k)) / 2.0
    return x.astype(np.float32)


def _derived_bound(x, qt):
    """|kernel - float64 x @ W.T| bound: activation rounding (half a step per element, plus the
    float32 error of x / scale and of a subnormal scale), the float32 rounding of the dequantized
    weights and of q35's odd step, and the kernel's float32 sums (groups + 4 roundings)."""
    k = qt.shape[1]
    g = qt.group_size
    _, sx, _ = reference.quantize_activations(x, g)
    w = qt.dequantize().astype(np.float64)
    offset = np.repeat(qt.offset.astype(np.float64), g, axis=1)[:, :k]
    step_sx = np.repeat(sx.astype(np.float64), g, axis=1)[:, :k]
    act = step_sx * (0.5 + 2.0**-14) + TINY  # |x - sx * xq| per element
    bound = act @ np.abs(w).T
    bound += 2 * EPS32 * (np.abs(x).astype(np.float64) @ (np.abs(offset) + np.abs(w - offset)).T)
    return bound + _rounding_bound(x, qt)


def _rounding_bound(x, qt):
    """Bound of the kernel's float32 evaluation of the reference formula."""
    k = qt.shape[1]
    _, _, sx, total, s = reference.matmul_int8(x, qt.packed, qt.scale, qt.offset, k,
                                                qt.group_size, qt.bits)
    a = qt.scale.astype(np.float64) / reference.INTEGER_LEVELS[qt.bits][2]
    o = qt.offset.astype(np.float64)
    sx64 = sx.astype(np.float64)
    terms = (np.einsum("nmg,mg,ng->mn", np.abs(s).astype(np.float64), sx64, np.abs(a))
             + np.einsum("ng,mg->mn", np.abs(o), sx64 * np.abs(total)))
    groups = sx.shape[1]
    return (groups + 4) * EPS32 * terms + 8 * groups * 2.0**-149


@pytest.mark.parametrize("bits", BITS)
@given(data=weight_matrices(), seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 40))
def test_activation_quantization_is_bit_identical_to_the_reference(bits, data, seed, rows):
    w, group_size = data
    k = w.shape[1]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, k)) * 10.0 ** rng.integers(-40, 30)).astype(np.float32)
    x[rng.random(rows) < 0.2] = 0.0
    xq, sx, total = kernels.quantize_activations(kernels._padded_x(x, kernels.padded_width(k)),
                                                 group_size)
    ref_xq, ref_sx, ref_total = reference.quantize_activations(x, group_size)
    np.testing.assert_array_equal(xq, ref_xq)
    np.testing.assert_array_equal(sx, ref_sx)
    np.testing.assert_array_equal(total, ref_total)
    assert np.abs(xq.astype(np.int64)).max(initial=0) <= 127


@pytest.mark.parametrize("bits", BITS)
@given(data=weight_matrices(), m=st.integers(1, 12).map(lambda v: 4 * v), seed=st.integers(0, 999))
def test_integer_levels_and_sums_are_bit_identical_to_the_reference(bits, data, m, seed,
                                                                    no_array_copies):
    w, group_size = data
    n, k = w.shape
    qt = q35f.quantize(w, group_size, bits)
    u = kernels.unpack_levels(qt)
    ref_u = reference.integer_levels(qt.packed, k, bits)
    np.testing.assert_array_equal(u[:n], ref_u)
    assert u.max() <= kernels.MAX_LEVEL[bits]
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    xq, _, _ = reference.quantize_activations(x, group_size)
    sums = kernels.group_sums(qt, xq)
    np.testing.assert_array_equal(sums[:n], reference.group_sums(ref_u, xq, group_size))


@pytest.mark.parametrize("bits", BITS)
@given(data=st.data())
def test_int8_gemm_is_within_the_derived_bound(bits, data, no_array_copies):
    w, group_size = data.draw(weight_matrices())
    x = data.draw(activations(w.shape[1]))
    qt = q35f.quantize(w, group_size, bits)
    y = kernels.gemm_int8(x, qt)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], w.shape[0])
    formula, *_ = reference.matmul_int8(x, qt.packed, qt.scale, qt.offset, w.shape[1],
                                        group_size, bits)
    # The kernel evaluates the reference's formula up to float32 rounding ...
    assert np.all(np.abs(y - formula) <= _rounding_bound(x, qt))
    # ... and the formula is the float64 product up to the activations' rounding.
    exact = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    assert np.all(np.abs(y - exact) <= _derived_bound(x, qt))


def test_all_zero_activations_give_exact_zeros():
    qt = q35f.quantize(np.random.default_rng(0).standard_normal((20, 200)).astype(np.float32), 64)
    y = kernels.gemm_int8(np.zeros((9, 200), np.float32), qt)
    assert np.all(y == 0)


@pytest.mark.parametrize("bits", BITS)
def test_extreme_levels_and_a_parallel_sized_matrix(bits):
    # Every weight at its grid's top or bottom level, activations at +-max: the largest |S|,
    # on a matrix big enough to be split among threads (run with OMP_NUM_THREADS=2 too).
    rng = np.random.default_rng(3)
    w = np.where(rng.random((512, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    qt = q35f.quantize(w, 128, bits)
    assert set(np.unique(reference.integer_levels(qt.packed, 512, bits))) == {
        0, kernels.MAX_LEVEL[bits]}
    x = np.where(rng.random((64, 512)) < 0.5, -3.0, 3.0).astype(np.float32)
    y = kernels.gemm_int8(x, qt)
    exact = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    assert np.all(np.abs(y - exact) <= _rounding_bound(x, qt) + 1e-6 * np.abs(exact))


def test_groups_too_large_for_int32_sums_are_refused_and_matmul_falls_back(monkeypatch):
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "int8")
    g = 16 * (kernels.max_group_weights("q35") // 16 + 1)
    qt = q35f.quantize(np.ones((3, 32), np.float32), g)
    x = np.ones((tensor.GEMM_MIN_ROWS, 32), np.float32)
    with pytest.raises(ValueError, match="int32"):
        kernels.gemm_int8(x, qt)
    np.testing.assert_allclose(q35f.matmul(x, qt), x @ qt.dequantize().T, rtol=1e-5)


def test_matmul_takes_the_integer_path_for_prompts_only_when_asked(monkeypatch):
    rng = np.random.default_rng(5)
    qt = q35f.quantize(rng.standard_normal((40, 200)).astype(np.float32), 64)
    x = rng.standard_normal((tensor.GEMM_MIN_ROWS, 200)).astype(np.float32)
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "float32")
    np.testing.assert_array_equal(q35f.matmul(x, qt), tensor._gemm_by_tiles(x, qt))
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "int8")
    np.testing.assert_array_equal(q35f.matmul(x, qt), kernels.gemm_int8(x, qt))
    qt3 = q35f.quantize(rng.standard_normal((40, 200)).astype(np.float32), 64, "int3")
    np.testing.assert_array_equal(q35f.matmul(x, qt3), tensor._gemm_by_tiles(x, qt3))


def test_non_finite_activations_take_the_float_path(monkeypatch):
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "int8")
    qt = q35f.quantize(np.ones((20, 64), np.float32), 32)
    x = np.ones((9, 64), np.float32)
    x[2, 3], x[4, 5] = np.nan, np.inf
    assert kernels.gemm_int8(x, qt) is None
    y = q35f.matmul(x, qt)
    assert np.isnan(y[2]).all() and np.isinf(y[4]).all() and np.all(y[[0, 1, 3, 5]] == 64)
