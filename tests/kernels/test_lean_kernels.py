"""Each Lean theorem of lean/Q35 checked against the shipped Fortran kernels, via the public API.

Exhaustive where the domain is finite (128 codes, 16 × 8 pairs, every block position), hypothesis
where it is not (error bounds and the fused GEMV on random groups, ragged K, constant groups,
float16-edge magnitudes). The Lean statements are exact arithmetic; the kernels work in float32
with float16 parameters, so the float checks allow for float32 rounding, with the allowance
derived from the operations the kernels perform (never a loose relative tolerance).

The accumulator theorems concern int8 activations times 4-bit levels, which no shipped kernel
uses (the GEMV accumulates float32): they are checked with numpy int32 and int64 arithmetic on
levels decoded by the kernels, at the edge K = 1118481 and at K + 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import weight_matrices
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.format import group_params as gp

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23
UNIT32 = EPS32 / 2  # unit roundoff of float32

# All 16 × 8 pairs (n1, n2) and all 128 codes.
N1 = np.repeat(np.arange(-8, 8), 8).astype(np.int8)
N2 = np.tile(np.arange(-4, 4), 16).astype(np.int8)
CODES = np.arange(128, dtype=np.uint8)


# --- the Lean definitions, transcribed (lean/Q35/*.lean) ---------------------------------------


def lean_encode(n1, n2):
    """Q35.encode: low4 n1 * 8 + low3 n2 (Python's % is Euclidean for a positive modulus)."""
    return (np.asarray(n1, np.int64) % 16) * 8 + (np.asarray(n2, np.int64) % 8)


def lean_decode(code):
    """Q35.decode: (signExtend4 (code / 8), signExtend3 (code % 8))."""
    code = np.asarray(code, np.int64)
    f1, f2 = code // 8, code % 8
    return np.where(f1 >= 8, f1 - 16, f1), np.where(f2 >= 4, f2 - 8, f2)


def lean_pack(codes) -> int:
    """Q35.pack: c0 + 128 * (c1 + 128 * (...)), i.e. Σ c_j · 128^j."""
    value = 0
    for c in reversed([int(c) for c in codes]):
        value = c + 128 * value
    return value


def lean_code_at(value: int, j: int) -> int:
    """Q35.codeAt: divide by 128 j times, keep the remainder mod 128."""
    for _ in range(j):
        value //= 128
    return value % 128


def little_endian(row) -> int:
    return int.from_bytes(np.asarray(row, np.uint8).tobytes(), "little")


# --- reading what the kernels produced ---------------------------------------------------------


def kernel_levels(qt):
    """Unsigned grid levels (N, K) of a q35 tensor, decoded by the kernels (FORMAT.md §2, §3)."""
    codes = q35f.unpack_codes(qt.packed)
    n1, n2 = q35f.decode(codes)
    levels = np.empty((codes.shape[0], 2 * codes.shape[1]), dtype=np.int64)
    levels[:, 0::2] = n1.astype(np.int64) + 8
    levels[:, 1::2] = n2.astype(np.int64) + 4
    return levels[:, : qt.shape[1]]


def per_weight(qt, values):
    """(N, groups) group values -> (N, K) float64, each weight its group's value."""
    expanded = np.repeat(np.asarray(values, dtype=np.float64), qt.group_size, axis=1)
    return expanded[:, : qt.shape[1]]


def grids(qt):
    """Per weight: offset, step and top level of its grid, as the kernels use them (float32)."""
    n, k = qt.shape
    scale32 = qt.scale.astype(np.float32)
    step3 = (np.float32(15) * scale32) / np.float32(7)  # FORMAT.md §4, in float32
    offset = per_weight(qt, qt.offset.astype(np.float32))
    odd = (np.arange(k) % 2) == 1
    step = np.where(odd, per_weight(qt, step3), per_weight(qt, scale32))
    top = np.where(odd, 7, 15) * np.ones((n, 1), dtype=np.int64)
    return offset, step, top, odd


def spec_levels(w, offset, step, top):
    """FORMAT.md §4 in float32: clamp(floor((w - offset)/step + 1/2), 0, L - 1); 0 where step = 0."""
    w32 = w.astype(np.float32)
    o32 = offset.astype(np.float32)
    s32 = step.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.floor((w32 - o32) / s32 + np.float32(0.5))
    t = np.where(s32 == 0, 0, t)
    return np.clip(t, 0, top).astype(np.int64)


def quantized(w, group_size):
    qt = q35f.quantize(w, group_size=group_size, bits="q35")
    assert qt.bits == "q35" and qt.shape == w.shape
    return qt


def rounding_allowance(w, offset, step):
    """How far float32 rounding can move a weight's error past half a step.

    The level comes from fl(fl(fl(w - o) / step) + 1/2) (t ≤ 16.5, three roundings) and the
    dequantized value from fl(o + fl(step · l)) (two roundings, |value| ≤ |o| + 15 scale).
    """
    return UNIT32 * (4 * 17 * step + 4 * (np.abs(offset) + 16 * step) + 2 * np.abs(w))


# float16-edge magnitudes, subnormal float16 steps and float16-exact constants.
EDGE_GROUPS = [
    np.array([65504.0, -65504.0] * 8, dtype=np.float32),
    np.array([65504.0] * 15 + [65000.0], dtype=np.float32),
    np.linspace(-65504, 65504, 48, dtype=np.float32),
    np.array([6e-8, 0.0] * 8, dtype=np.float32),
    np.array([1e-5, -1e-5, 0.0, 3e-6] * 4, dtype=np.float32),
    np.full(16, 0.1, dtype=np.float32),
    np.full(33, -2.5, dtype=np.float32),
    np.arange(16, dtype=np.float32),
]


@st.composite
def q35_matrices(draw):
    if draw(st.integers(0, 4)) == 0:
        w = EDGE_GROUPS[draw(st.integers(0, len(EDGE_GROUPS) - 1))][None, :]
        return w, draw(st.sampled_from([16, 32, 128]))
    return draw(weight_matrices(max_rows=12, max_cols=300))


# --- §2: the 7-bit code, exhaustively ----------------------------------------------------------


@pytest.mark.lean("Q35.encode_lt_128")
def test_codes_fit_in_7_bits():
    codes = q35f.encode(N1, N2)
    assert codes.dtype == np.uint8 and codes.shape == (128,)
    assert int(codes.max()) < 128
    assert len(np.unique(codes)) == 128  # 128 pairs fill the 128 codes: no code is wasted
    assert np.array_equal(codes, lean_encode(N1, N2))
    # The Lean arithmetic is the spec's bit operations (FORMAT.md §2).
    spec = ((N1.astype(np.int64) & 0xF) << 3) | (N2.astype(np.int64) & 0x7)
    assert np.array_equal(codes, spec)


@pytest.mark.lean("Q35.decode_ranges")
def test_decoded_fields_lie_in_their_ranges():
    n1, n2 = q35f.decode(CODES)
    assert n1.dtype == np.int8 and n2.dtype == np.int8
    assert n1.min() == -8 and n1.max() == 7
    assert n2.min() == -4 and n2.max() == 3
    lean_n1, lean_n2 = lean_decode(CODES)
    assert np.array_equal(n1, lean_n1) and np.array_equal(n2, lean_n2)


@pytest.mark.lean("Q35.decode_encode")
def test_decode_inverts_encode_for_all_pairs():
    n1, n2 = q35f.decode(q35f.encode(N1, N2))
    assert np.array_equal(n1, N1) and np.array_equal(n2, N2)
    # Any shape, element by element.
    grid1, grid2 = N1.reshape(16, 8), N2.reshape(16, 8)
    back1, back2 = q35f.decode(q35f.encode(grid1, grid2))
    assert np.array_equal(back1, grid1) and np.array_equal(back2, grid2)


@pytest.mark.lean("Q35.encode_decode")
def test_encode_inverts_decode_for_all_codes():
    n1, n2 = q35f.decode(CODES)
    assert np.array_equal(q35f.encode(n1, n2), CODES)
    assert np.array_equal(lean_encode(*lean_decode(CODES)), CODES)


@pytest.mark.lean("Q35.levels_of_code")
def test_levels_are_fields_with_sign_bit_flipped():
    n1, n2 = q35f.decode(CODES)
    c = CODES.astype(np.int64)
    assert np.array_equal(n1.astype(np.int64) + 8, (c // 8 + 8) % 16)
    assert np.array_equal(n2.astype(np.int64) + 4, (c % 8 + 4) % 8)
    # ... which is the XOR with the field's top bit used by the GEMV kernel (FORMAT.md §2).
    assert np.array_equal((c // 8 + 8) % 16, (c >> 3) ^ 8)
    assert np.array_equal((c % 8 + 4) % 8, (c & 7) ^ 4)


# --- §3: blocks and rows -----------------------------------------------------------------------


@pytest.mark.lean("Q35.unpack_pack")
def test_unpack_pack_every_value_at_every_position():
    rng = np.random.default_rng(35)
    background = rng.integers(0, 128, size=8)
    blocks = np.tile(background, (8 * 128, 1)).astype(np.uint8)
    for j in range(8):
        blocks[j * 128 : (j + 1) * 128, j] = CODES
    packed = q35f.pack_codes(blocks)
    assert packed.shape == (8 * 128, 7) and packed.dtype == np.uint8
    assert np.array_equal(q35f.unpack_codes(packed), blocks)
    for row, codes in zip(packed, blocks):
        value = little_endian(row)
        assert value == lean_pack(codes)
        assert [lean_code_at(value, j) for j in range(8)] == [int(c) for c in codes]


@pytest.mark.lean("Q35.unpack_pack")
@given(
    n_blocks=st.integers(1, 6),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_unpack_pack_whole_rows(n_blocks, rows, seed):
    """A row of blocks is one little-endian integer holding code j at bits 7j … 7j+6."""
    codes = np.random.default_rng(seed).integers(0, 128, size=(rows, 8 * n_blocks)).astype(np.uint8)
    packed = q35f.pack_codes(codes)
    assert packed.shape == (rows, 7 * n_blocks)
    assert np.array_equal(q35f.unpack_codes(packed), codes)
    for row, row_codes in zip(packed, codes):
        value = little_endian(row)
        assert value == lean_pack(row_codes)
        assert [lean_code_at(value, j) for j in range(len(row_codes))] == row_codes.tolist()


@pytest.mark.lean("Q35.pack_lt")
@given(n_blocks=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_packed_row_is_below_128_to_the_n(n_blocks, seed):
    n = 8 * n_blocks
    codes = np.random.default_rng(seed).integers(0, 128, size=(2, n)).astype(np.uint8)
    codes[1] = 127  # the largest codes reach the bound minus one: every bit is used
    packed = q35f.pack_codes(codes)
    assert packed.shape == (2, 7 * n // 8)
    assert little_endian(packed[0]) < 128**n
    assert little_endian(packed[1]) == 128**n - 1


@pytest.mark.lean("Q35.block_fits_56_bits")
def test_block_is_exactly_7_bytes():
    full = np.full((1, 8), 127, dtype=np.uint8)
    packed = q35f.pack_codes(full)
    assert packed.shape == (1, 7)
    assert little_endian(packed[0]) == 2**56 - 1 and (packed == 0xFF).all()
    blocks = np.random.default_rng(7).integers(0, 128, size=(256, 8)).astype(np.uint8)
    assert all(little_endian(row) < 2**56 for row in q35f.pack_codes(blocks))


# --- §4: grids, rounding and clamping, on real quantized tensors -------------------------------


@pytest.mark.lean("Q35.round_bounds")
@given(q35_matrices())
def test_kernel_levels_round_to_nearest(case):
    w, group_size = case
    qt = quantized(w, group_size)
    levels = kernel_levels(qt)
    offset, step, top, _ = grids(qt)
    # The kernels' levels are FORMAT.md §4's rule evaluated in float32, bit for bit ...
    assert np.array_equal(levels, spec_levels(w, offset, step, top))
    # ... which is Lean's roundLevel, floor((2x + d) / (2d)) with x = w - offset, d = step,
    # wherever float32 rounding cannot tip a tie (exact arithmetic in float64 here).
    x = w.astype(np.float64) - offset
    live = step > 0
    t = np.floor((2 * x[live] + step[live]) / (2 * step[live]))
    tie_distance = np.abs((x[live] / step[live] + 0.5) - np.round(x[live] / step[live] + 0.5))
    clear = tie_distance > 1e-4
    exact = np.clip(t, 0, top[live])
    assert np.array_equal(levels[live][clear], exact[clear])
    # and t satisfies the bounds of Q35.round_bounds: 2d·t ≤ 2x + d < 2d·t + 2d.
    d = step[live][clear]
    tt, xx = t[clear], x[live][clear]
    assert (2 * d * tt <= 2 * xx + d).all() and (2 * xx + d < 2 * d * tt + 2 * d).all()


def _check_half_step(w, qt, parity):
    offset, step, top, odd = grids(qt)
    mask = odd if parity == "odd" else ~odd
    w64 = w.astype(np.float64)[:, mask]
    o, s = offset[:, mask], step[:, mask]
    # The theorem's hypothesis: every weight lies in its grid [offset, offset + top·step].
    scale = per_weight(qt, qt.scale.astype(np.float32))[:, mask]
    slack = UNIT32 * 4 * (np.abs(o) + 16 * scale)
    assert (w64 >= o).all()
    assert (w64 <= o + 15 * scale + slack).all()
    error = np.abs(w64 - qt.dequantize().astype(np.float64)[:, mask])
    bound = s / 2 + rounding_allowance(w64, o, s)
    worst = np.max(error - bound) if error.size else -1.0
    assert (error <= bound).all(), f"{parity} weight exceeds half a step by {worst}"


@pytest.mark.lean("Q35.even_error_half_step")
@given(q35_matrices())
def test_even_weights_within_half_a_4bit_step(case):
    w, group_size = case
    _check_half_step(w, quantized(w, group_size), "even")


@pytest.mark.lean("Q35.odd_error_half_step")
@given(q35_matrices())
def test_odd_weights_within_half_a_3bit_step(case):
    w, group_size = case
    if w.shape[1] < 2:
        w = np.concatenate([w, w], axis=1)
    _check_half_step(w, quantized(w, group_size), "odd")


def _check_clamp(w, qt, parity):
    """The clamp keeps every level in [0, top], and the group's ends land on the grid's ends.

    The quantizer chooses each group's grid to cover the group, so the kernels never see an
    out-of-range weight; what is observable is that no level ever leaves [0, top] (the clamp's
    range, also under float32 rounding at the top edge) and that a weight within half a step
    of an end of the range gets that end's level, as the theorem says.
    """
    levels = kernel_levels(qt)
    offset, step, top, odd = grids(qt)
    mask = odd if parity == "odd" else ~odd
    lv, tp = levels[:, mask], top[:, mask]
    assert (lv >= 0).all() and (lv <= tp).all()
    w64, o, s = w.astype(np.float64)[:, mask], offset[:, mask], step[:, mask]
    margin = rounding_allowance(w64, o, s)
    near_low = (s > 0) & (w64 - o < s / 2 - margin)
    assert (lv[near_low] == 0).all()
    near_top = (s > 0) & ((o + tp * s) - w64 < s / 2 - margin)
    assert (lv[near_top] == tp[near_top]).all()


@pytest.mark.lean("Q35.even_clamp")
@given(q35_matrices())
def test_even_levels_clamp_to_the_range(case):
    w, group_size = case
    _check_clamp(w, quantized(w, group_size), "even")


@pytest.mark.lean("Q35.odd_clamp")
@given(q35_matrices())
def test_odd_levels_clamp_to_the_range(case):
    w, group_size = case
    _check_clamp(w, quantized(w, group_size), "odd")


@st.composite
def weights_around_given_grids(draw):
    """Weights well outside and inside grids given as float16 (offset, scale): quantize(params=)."""
    rows = draw(st.integers(1, 4))
    k = draw(st.integers(1, 90))
    group_size = draw(st.sampled_from([16, 32]))
    groups = -(-k // group_size)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = 10.0 ** draw(st.integers(-3, 2))
    offset = (rng.uniform(-1000, 1000, (rows, groups)) * magnitude / 100).astype(np.float16)
    scale = (rng.uniform(0.01, 10, (rows, groups)) * magnitude).astype(np.float16)
    scale = np.maximum(scale, np.float16(1e-3)).astype(np.float16)
    lo = offset.astype(np.float64)
    width = 15 * scale.astype(np.float64)
    # per weight: a position in units of the grid's width, from far below to far above
    where = rng.uniform(-2.0, 3.0, (rows, groups * group_size))[:, :k]
    lo_w = np.repeat(lo, group_size, axis=1)[:, :k]
    width_w = np.repeat(width, group_size, axis=1)[:, :k]
    w = np.clip(lo_w + where * width_w, -65504, 65504).astype(np.float32)
    return w, group_size, offset, scale


def _check_clamp_given_params(w, group_size, offset16, scale16, parity):
    """Out of range, a weight gets the end level and dequantizes to the end of the range."""
    qt = q35f.quantize(w, group_size=group_size, bits="q35", params=(offset16, scale16))
    assert np.array_equal(qt.offset, offset16) and np.array_equal(qt.scale, scale16)
    levels = kernel_levels(qt)
    offset, step, top, odd = grids(qt)
    mask = odd if parity == "odd" else ~odd
    w64, o, s, tp, lv = w.astype(np.float64)[:, mask], offset[:, mask], step[:, mask], \
        top[:, mask], levels[:, mask]
    deq = qt.dequantize().astype(np.float64)[:, mask]
    top_value = (o.astype(np.float32) + s.astype(np.float32) * tp.astype(np.float32))
    top_value = top_value.astype(np.float64)  # the grid's last point, as the kernels compute it
    below, above = w64 < o, w64 > top_value
    assert (lv[below] == 0).all() and (deq[below] == o[below]).all()
    assert (lv[above] == tp[above]).all() and (deq[above] == top_value[above]).all()
    # so the error is exactly the distance to the range (Q35.even_clamp / Q35.odd_clamp) ...
    assert np.array_equal(np.abs(w64 - deq)[below], (o - w64)[below])
    assert np.array_equal(np.abs(w64 - deq)[above], (w64 - top_value)[above])
    # ... and inside the range the error stays within half a step (the in-range theorems).
    inside = ~below & ~above
    bound = s / 2 + rounding_allowance(w64, o, s)
    assert (np.abs(w64 - deq)[inside] <= bound[inside]).all()


@pytest.mark.lean("Q35.even_clamp")
@given(weights_around_given_grids())
def test_even_weights_outside_given_grids_clamp_to_the_ends(case):
    w, group_size, offset, scale = case
    _check_clamp_given_params(w, group_size, offset, scale, "even")


@pytest.mark.lean("Q35.odd_clamp")
@given(weights_around_given_grids())
def test_odd_weights_outside_given_grids_clamp_to_the_ends(case):
    w, group_size, offset, scale = case
    if w.shape[1] < 2:  # one group of one weight: give it an odd neighbour
        w = np.concatenate([w, w], axis=1)
    _check_clamp_given_params(w, group_size, offset, scale, "odd")


@pytest.mark.lean("Q35.even_clamp")
@pytest.mark.lean("Q35.odd_clamp")
@given(q35_matrices())
def test_clip_search_error_is_half_step_or_distance_to_range(case):
    """With clip search the grid may be narrower than the group: Q35.*_clamp then applies."""
    w, group_size = case
    qt = q35f.quantize(w, group_size=group_size, bits="q35", clip_search=True)
    levels = kernel_levels(qt)
    offset, step, top, _ = grids(qt)
    w64 = w.astype(np.float64)
    top_value = (offset.astype(np.float32) + step.astype(np.float32) * top.astype(np.float32))
    top_value = top_value.astype(np.float64)
    assert ((levels >= 0) & (levels <= top)).all()
    assert (levels[w64 < offset] == 0).all()
    assert (levels[w64 > top_value] == top[w64 > top_value]).all()
    distance = np.maximum(np.maximum(offset - w64, w64 - top_value), 0)
    error = np.abs(w64 - qt.dequantize().astype(np.float64))
    allowance = rounding_allowance(w64, offset, step)
    assert (error <= np.maximum(step / 2, distance) + allowance).all()


@pytest.mark.lean("Q35.zero_step_level")
@given(
    value=st.floats(-65504, 65504, width=16),
    k=st.integers(1, 70),
    group_size=st.sampled_from([16, 32, 64]),
)
def test_constant_group_dequantizes_to_its_offset(value, k, group_size):
    """A constant float16 group gets scale 0; every weight gets level 0, i.e. the offset."""
    w = np.full((3, k), value, dtype=np.float32)
    qt = quantized(w, group_size)
    assert (qt.scale == 0).all()
    assert (qt.offset.astype(np.float32) == np.float32(value)).all()
    assert (kernel_levels(qt) == 0).all()
    assert np.array_equal(qt.dequantize(), w)


# --- the fused GEMV ----------------------------------------------------------------------------


@pytest.mark.lean("Q35.fused_eq_dot")
@given(q35_matrices(), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_fused_matmul_equals_product_with_dequantized_weights(case, m, seed):
    w, group_size = case
    qt = quantized(w, group_size)
    n, k = qt.shape
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    x64 = x.astype(np.float64)
    levels = kernel_levels(qt).astype(np.float64)
    offset, step, _, odd = grids(qt)

    # The identity of Q35.fused_eq_dot on the kernels' own levels and parameters, in float64:
    # Σ x·(offset + step·level) = Σ_g [s·Σ_even x·l1 + step3·Σ_odd x·l2 + offset·Σ x].
    dequantized = offset + step * levels  # exact grid values (not rounded to float32)
    direct = x64 @ dequantized.T
    groups = -(-k // group_size)
    fused = np.zeros((m, n))
    scale32 = qt.scale.astype(np.float32)
    step3 = ((np.float32(15) * scale32) / np.float32(7)).astype(np.float64)
    for g in range(groups):
        cols = slice(g * group_size, min((g + 1) * group_size, k))
        even = ~odd[cols]
        xe = x64[:, cols] * even
        xo = x64[:, cols] * ~even
        fused += (
            (xe @ levels[:, cols].T) * scale32[:, g].astype(np.float64)
            + (xo @ levels[:, cols].T) * step3[:, g]
            + x64[:, cols].sum(axis=1, keepdims=True) * qt.offset[:, g].astype(np.float64)
        )
    magnitude = np.abs(x64) @ (np.abs(offset) + 16 * step).T
    assert np.all(np.abs(fused - direct) <= 1e-12 * magnitude + 1e-300)

    # The shipped fused kernel (M < 8 takes the GEMV path) against the float64 product with
    # the dequantized weights; float32 summation of at most K + 3·groups terms per output.
    y = q35f.matmul(x, qt)
    assert y.shape == (m, n) and y.dtype == np.float32
    reference = x64 @ qt.dequantize().astype(np.float64).T
    allowance = 2 * (k + 3 * groups + 8) * UNIT32 * magnitude
    assert np.all(np.abs(y - reference) <= allowance)
    # A single activation vector gives the same row.
    assert np.array_equal(q35f.matmul(x[0], qt), y[0])


# --- accumulator safety (int8 activations × 4-bit levels) --------------------------------------

K_MAX = 1118481
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def decoded_levels(count, seed):
    """`count` 4-bit levels (n1 + 8) decoded by the kernels from random codes."""
    codes = np.random.default_rng(seed).integers(0, 128, size=count).astype(np.uint8)
    return q35f.decode(codes)[0].astype(np.int32) + 8


def int32_prefix_sums_match(products) -> bool:
    """An int32 accumulator (numpy wraps silently) agrees with int64 at every step."""
    return np.array_equal(
        np.cumsum(products, dtype=np.int32).astype(np.int64), np.cumsum(products, dtype=np.int64)
    )


@pytest.mark.lean("Q35.term_bound")
def test_every_int8_times_level_product_is_in_range():
    x = np.arange(-128, 128, dtype=np.int64)[:, None]
    levels = np.unique(q35f.decode(CODES)[0].astype(np.int64) + 8)
    assert levels.tolist() == list(range(16))
    products = x * levels[None, :]
    assert products.min() == -1920 and products.max() == 1905


@pytest.mark.lean("Q35.accum_bound")
@given(k=st.integers(0, 5000), seed=st.integers(0, 2**32 - 1))
def test_sum_of_k_products_is_within_k_times_the_extremes(k, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=k).astype(np.int64)
    total = int((x * decoded_levels(k, seed).astype(np.int64)).sum())
    assert -1920 * k <= total <= 1905 * k


@pytest.mark.lean("Q35.accumulator_fits_int32")
def test_int32_accumulator_is_safe_at_the_edge_k():
    levels = decoded_levels(K_MAX, 1)
    rng = np.random.default_rng(2)
    cases = {
        "most negative": np.full(K_MAX, -128, np.int32) * 15,
        "most positive": np.full(K_MAX, 127, np.int32) * 15,
        "random int8 x kernel levels": rng.integers(-128, 128, K_MAX).astype(np.int32) * levels,
    }
    for name, products in cases.items():
        assert int32_prefix_sums_match(products), name
        total = int(products.astype(np.int64).sum())
        assert INT32_MIN <= total <= INT32_MAX, name
    assert int(cases["most negative"].astype(np.int64).sum()) == -1920 * K_MAX


@pytest.mark.lean("Q35.accum_replicate_extreme")
@pytest.mark.parametrize("n", [0, 1, 2, 1000, K_MAX, K_MAX + 1])
def test_repeated_extreme_product_sums_linearly(n):
    products = np.full(n, -128, np.int64) * 15
    assert int(products.sum()) == -1920 * n


@pytest.mark.lean("Q35.accumulator_bound_tight")
def test_int32_accumulator_overflows_at_k_plus_one():
    products = np.full(K_MAX + 1, -128, np.int32) * 15
    exact = int(products.astype(np.int64).sum())
    assert exact == -1920 * (K_MAX + 1) < INT32_MIN
    assert not int32_prefix_sums_match(products)
    assert int32_prefix_sums_match(products[:K_MAX])


# --- the input rotation (lean/Q35/Rotation.lean, FORMAT.md §9) -------------------------------


@pytest.mark.lean("Q35.butterfly_twice")
@pytest.mark.lean("Q35.butterflyPass_twice")
@pytest.mark.parametrize("group", [1, 2, 4, 8, 16, 32, 64, 128, 256])
def test_rotation_undone_by_its_inverse_for_every_group_size(group):
    """log2(n) butterfly passes, each its own inverse up to 2: the Fortran transform followed by
    its inverse returns the input (R R^T = I) for every group size, ragged tail included."""
    from q35f.kernels.fortran import rotate_rows

    k = {1: 5, 2: 6}.get(group, 3 * group + group // 2)  # a ragged tail from 4 on
    x = np.random.default_rng(group).standard_normal((4, k)).astype(np.float32)
    back = rotate_rows(rotate_rows(x, group), group, inverse=True)
    np.testing.assert_allclose(back, x, atol=8 * EPS32 * np.log2(2 * group) * np.abs(x).max())
    if group == 2:  # one pass: (a, b) -> (a + b, a - b) / sqrt(2) after the signs
        from q35f.format.rotation import column_signs

        d = x * column_signs(k)
        y = rotate_rows(x, 2)
        np.testing.assert_allclose(y[:, 0::2], (d[:, 0::2] + d[:, 1::2]) / np.sqrt(2), atol=1e-6)
        np.testing.assert_allclose(y[:, 1::2], (d[:, 0::2] - d[:, 1::2]) / np.sqrt(2), atol=1e-6)


@pytest.mark.lean("Q35.sign_mul_self")
def test_column_signs_square_to_one():
    from q35f.format.rotation import column_signs

    s = column_signs(100_000)
    assert set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(s * s, 1.0)


# --- compact group parameters (Q35/GroupParams.lean, FORMAT.md §10) ------------------------------


@pytest.mark.lean("Q35.scale_mantissa_bits")
def test_every_code_decodes_to_an_exact_float16_scale():
    codes = np.arange(256, dtype=np.uint8)[None, :].repeat(gp.EXPONENT_MAX - gp.EXPONENT_MIN + 1, 0)
    exponents = np.arange(gp.EXPONENT_MIN, gp.EXPONENT_MAX + 1, dtype=np.int8)
    got = gp.decode_scales(exponents, codes).astype(np.float64)
    c = np.arange(256)
    want = (16 + (c & 15)) * 2.0 ** ((c >> 4)[None, :] + exponents[:, None].astype(int) - 19)
    want[:, 0] = 0
    np.testing.assert_array_equal(got, want)  # no rounding anywhere: exact
    assert np.all(np.diff(got[:, 1:], axis=1) > 0)  # codes are ordered: one code per scale


@pytest.mark.lean("Q35.offset_product_exact")
@pytest.mark.lean("Q35.offset_code_zero_centres")
@pytest.mark.parametrize("top", [7, 15, 255])
def test_every_offset_code_is_one_rounding_of_its_exact_value(top):
    # all 256 offset codes against every scale code at the extreme exponents
    scales = gp.decode_scales(np.array([gp.EXPONENT_MIN, gp.EXPONENT_MAX], np.int8),
                              np.arange(256, dtype=np.uint8)[None, :].repeat(2, 0))
    codes = np.arange(-128, 128, dtype=np.int8)
    s = np.repeat(scales, 256, axis=1)
    o = np.tile(codes, 256)[None, :].repeat(2, 0)
    exact = -(o.astype(np.float64) + 64) * top * s.astype(np.float64) / 128
    product = -(o.astype(np.int64) + 64) * top * (s.astype(np.float64) / 2.0 ** np.floor(
        np.log2(np.where(s > 0, s.astype(np.float64), 1))) * 16)
    assert np.all(np.abs(product) < 2**24)  # the theorem's bound: float32 holds it exactly
    got = gp.decode_offsets(s, o, top)
    np.testing.assert_array_equal(got, exact.astype(np.float16))  # one rounding, to nearest
    centre = gp.decode_offsets(scales[:, 1:], np.zeros_like(scales[:, 1:], np.int8), top)
    np.testing.assert_array_equal(centre, (-top * scales[:, 1:].astype(np.float64) / 2).astype(
        np.float16))
