"""Machine-checked arithmetic of the Lean theorems (lean/Q35), with the z3 SMT solver.

The Lean proofs cannot be compiled on our build machines (no Lean toolchain can be fetched), so
every statement about unbounded integers (rounding, error bounds, clamping, the fused formula,
the accumulator bound) and every bit-level identity behind the code and block definitions is
also discharged here: each test asserts the negation of the statement and requires z3 to answer
`unsat` (no counterexample exists). `unknown` or `sat` fails the test.

The z3 formulas transcribe the Lean definitions one to one. z3's integer `/` and `%` are
Euclidean (remainder in [0, |d|)), like Lean's `Int` `/` and `%`; division by zero is left
unspecified by SMT-LIB, so where Lean's `x / 0 = 0` matters it is written out explicitly.
Statements proven by induction in Lean (over lists of codes, pairs or products) are checked
here as their base case and their induction step, which together are the same proof.
"""

from __future__ import annotations

import pytest

z3 = pytest.importorskip("z3")

TIMEOUT_MS = 60_000


def assert_proved(claim, *hypotheses):
    """z3 finds no assignment of the free variables that satisfies the hypotheses but not the claim."""
    solver = z3.Solver()
    solver.set("timeout", TIMEOUT_MS)
    solver.add(*hypotheses)
    solver.add(z3.Not(claim))
    result = solver.check()
    if result == z3.sat:
        raise AssertionError(f"counterexample: {solver.model()}")
    assert result == z3.unsat, f"z3 could not decide the claim ({result})"


# --- transcriptions of the Lean definitions -------------------------------------------------


def ediv(a, b):
    """Lean's Int division: Euclidean, and a / 0 = 0."""
    return z3.If(b == 0, 0, a / b)


def round_level(x, d):  # Q35.roundLevel
    return ediv(2 * x + d, 2 * d)


def clamp_level(t, top):  # Q35.clampLevel: max 0 (min top t)
    low = z3.If(top <= t, top, t)
    return z3.If(0 >= low, 0, low)


def level4(x, s):  # Q35.level4
    return clamp_level(round_level(x, s), 15)


def level3(x, s):  # Q35.level3
    return clamp_level(round_level(7 * x, 15 * s), 7)


def encode_int(n1, n2):  # Q35.encode over z3 integers
    return (n1 % 16) * 8 + (n2 % 8)


def sign_extend(field, bits):  # Q35.signExtend4 / signExtend3
    half = 1 << (bits - 1)
    return z3.If(field >= half, field - (1 << bits), field)


def decode_int(code):  # Q35.decode
    return sign_extend(code / 8, 4), sign_extend(code % 8, 3)


# --- §2 codes: the arithmetic definitions are the spec's bit operations ------------------------


@pytest.mark.lean("Q35.encode_lt_128")
def test_smt_encode_lt_128_for_all_integers():
    n1, n2 = z3.Ints("n1 n2")
    assert_proved(z3.And(encode_int(n1, n2) >= 0, encode_int(n1, n2) < 128))


@pytest.mark.lean("Q35.decode_ranges")
def test_smt_decode_ranges():
    c = z3.Int("c")
    d1, d2 = decode_int(c)
    assert_proved(
        z3.And(-8 <= d1, d1 <= 7, -4 <= d2, d2 <= 3), c >= 0, c < 128
    )


@pytest.mark.lean("Q35.decode_encode")
def test_smt_decode_encode_and_bitwise_spec():
    n1, n2 = z3.Ints("n1 n2")
    code = encode_int(n1, n2)
    d1, d2 = decode_int(code)
    in_range = [-8 <= n1, n1 <= 7, -4 <= n2, n2 <= 3]
    assert_proved(z3.And(d1 == n1, d2 == n2), *in_range)
    # FORMAT.md §2 literally: ((n1 & 0xF) << 3) | (n2 & 0x7) on two's-complement bytes.
    b1, b2 = z3.BitVecs("b1 b2", 8)
    spec = ((b1 & 0xF) << 3) | (b2 & 0x7)
    arith = encode_int(z3.BV2Int(b1, is_signed=True), z3.BV2Int(b2, is_signed=True))
    assert_proved(
        z3.BV2Int(spec) == arith,
        z3.BV2Int(b1, is_signed=True) >= -8,
        z3.BV2Int(b1, is_signed=True) <= 7,
        z3.BV2Int(b2, is_signed=True) >= -4,
        z3.BV2Int(b2, is_signed=True) <= 3,
    )


@pytest.mark.lean("Q35.encode_decode")
def test_smt_encode_decode_and_sign_extension_spec():
    c = z3.Int("c")
    d1, d2 = decode_int(c)
    assert_proved(encode_int(d1, d2) == c, c >= 0, c < 128)
    # Sign extension as the spec's bit fields: code >> 3 and code & 7, sign-extended.
    bc = z3.BitVec("bc", 7)
    f1 = z3.Extract(6, 3, bc)
    f2 = z3.Extract(2, 0, bc)
    c_int = z3.BV2Int(bc)
    assert_proved(
        z3.And(
            decode_int(c_int)[0] == z3.BV2Int(z3.SignExt(4, f1), is_signed=True),
            decode_int(c_int)[1] == z3.BV2Int(z3.SignExt(5, f2), is_signed=True),
        )
    )


@pytest.mark.lean("Q35.levels_of_code")
def test_smt_levels_are_fields_xor_sign_bit():
    bc = z3.BitVec("bc", 7)
    c = z3.BV2Int(bc)
    d1, d2 = decode_int(c)
    l1_xor = z3.BV2Int(z3.Extract(6, 3, bc) ^ 8)
    l2_xor = z3.BV2Int(z3.Extract(2, 0, bc) ^ 4)
    assert_proved(
        z3.And(
            d1 + 8 == (c / 8 + 8) % 16,
            d2 + 4 == (c % 8 + 4) % 8,
            (c / 8 + 8) % 16 == l1_xor,
            (c % 8 + 4) % 8 == l2_xor,
        )
    )


# --- §3 blocks: Σ c_j·128^j is the spec's bit layout -------------------------------------------


def _block_codes():
    return [z3.BitVec(f"c{j}", 7) for j in range(8)]


@pytest.mark.lean("Q35.unpack_pack")
def test_smt_unpack_pack_induction_and_bit_layout():
    c, p = z3.Ints("c p")
    # Induction step of Q35.unpack_pack: position 0 is c, later positions are those of p.
    assert_proved(
        z3.And((c + 128 * p) % 128 == c, (c + 128 * p) / 128 == p), c >= 0, c < 128, p >= 0
    )
    # The integer Σ c_j·128^j has code j at bits 7j … 7j+6 of a 56-bit word (FORMAT.md §3).
    # It is below 2^56 (test_smt_block_fits_56_bits), so 56-bit arithmetic computes it exactly.
    codes = _block_codes()
    word = z3.Concat(*reversed(codes))  # code 0 in the low bits
    value = sum(z3.ZeroExt(49, cj) * 128**j for j, cj in enumerate(codes))
    claims = [value == word]
    for j, cj in enumerate(codes):
        claims.append(z3.Extract(7 * j + 6, 7 * j, word) == cj)
        claims.append(z3.URem(z3.UDiv(value, 128**j), 128) == z3.ZeroExt(49, cj))
    assert_proved(z3.And(*claims))


@pytest.mark.lean("Q35.pack_lt")
def test_smt_pack_lt_induction_step():
    c, p, m = z3.Ints("c p m")
    # pack (c :: cs) = c + 128·pack cs < 128 · 128^len when c < 128 and pack cs < 128^len.
    assert_proved(c + 128 * p < m * 128, c >= 0, c < 128, p >= 0, p < m)
    assert_proved(z3.BoolVal(0 < 128**0))


@pytest.mark.lean("Q35.block_fits_56_bits")
def test_smt_block_fits_56_bits():
    codes = _block_codes()
    value = sum(z3.BV2Int(cj) * 128**j for j, cj in enumerate(codes))
    assert_proved(z3.And(value >= 0, value < 2**56))
    assert 128**8 == 2**56 == 256**7


# --- §4 grids: rounding, half-step error, clamping ----------------------------------------------


@pytest.mark.lean("Q35.round_bounds")
def test_smt_round_bounds():
    x, d = z3.Ints("x d")
    t = round_level(x, d)
    assert_proved(z3.And(2 * (d * t) <= 2 * x + d, 2 * x + d < 2 * (d * t) + 2 * d), d > 0)


@pytest.mark.lean("Q35.even_error_half_step")
def test_smt_even_error_half_step():
    x, s = z3.Ints("x s")
    err2 = 2 * (x - s * level4(x, s))
    assert_proved(z3.And(-s <= err2, err2 <= s), s > 0, x >= 0, x <= 15 * s)


@pytest.mark.lean("Q35.odd_error_half_step")
def test_smt_odd_error_half_step():
    x, s = z3.Ints("x s")
    err2 = 2 * (7 * x - 15 * s * level3(x, s))
    assert_proved(z3.And(-(15 * s) <= err2, err2 <= 15 * s), s > 0, x >= 0, x <= 15 * s)


@pytest.mark.lean("Q35.even_clamp")
def test_smt_even_clamp():
    x, s = z3.Ints("x s")
    assert_proved(
        z3.And(z3.Implies(x < 0, level4(x, s) == 0), z3.Implies(15 * s < x, level4(x, s) == 15)),
        s > 0,
    )


@pytest.mark.lean("Q35.odd_clamp")
def test_smt_odd_clamp():
    x, s = z3.Ints("x s")
    assert_proved(
        z3.And(z3.Implies(x < 0, level3(x, s) == 0), z3.Implies(15 * s < x, level3(x, s) == 7)),
        s > 0,
    )


@pytest.mark.lean("Q35.zero_step_level")
def test_smt_zero_step_level():
    x = z3.Int("x")
    assert_proved(z3.And(level4(x, 0) == 0, level3(x, 0) == 0))


# --- fused group dot product -------------------------------------------------------------------


@pytest.mark.lean("Q35.fused_eq_dot")
def test_smt_fused_formula_induction():
    o, s, xe, xo, n1, n2, sum_even, sum_odd, sum_x, dot_rest = z3.Ints(
        "o s xe xo n1 n2 sum_even sum_odd sum_x dot_rest"
    )

    def fused7(e, od, sx):
        return 7 * s * e + 15 * s * od + 7 * o * sx

    # Base case: the empty group.
    assert_proved(fused7(0, 0, 0) == 0)
    # Induction step: one more pair (xe, xo, n1, n2) in front of a group where the identity holds.
    head = xe * (7 * o + 7 * s * (n1 + 8)) + xo * (7 * o + 15 * s * (n2 + 4))
    assert_proved(
        fused7(xe * (n1 + 8) + sum_even, xo * (n2 + 4) + sum_odd, xe + xo + sum_x)
        == head + dot_rest,
        fused7(sum_even, sum_odd, sum_x) == dot_rest,
    )


# --- accumulator bound --------------------------------------------------------------------------

INT8 = (-128, 127)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
K_MAX = 1118481


@pytest.mark.lean("Q35.term_bound")
def test_smt_term_bound():
    x, level = z3.Ints("x level")
    assert_proved(
        z3.And(-1920 <= x * level, x * level <= 1905),
        x >= INT8[0], x <= INT8[1], level >= 0, level <= 15,
    )


@pytest.mark.lean("Q35.accum_bound")
def test_smt_accum_bound_induction():
    n, t, rest = z3.Ints("n t rest")
    assert_proved(z3.And(-1920 * 0 <= 0, 0 <= 1905 * 0))
    assert_proved(
        z3.And(-1920 * (n + 1) <= t + rest, t + rest <= 1905 * (n + 1)),
        n >= 0, -1920 <= t, t <= 1905, -1920 * n <= rest, rest <= 1905 * n,
    )


@pytest.mark.lean("Q35.accumulator_fits_int32")
def test_smt_accumulator_fits_int32():
    k, total = z3.Ints("k total")
    assert_proved(
        z3.And(INT32_MIN <= total, total <= INT32_MAX),
        k >= 0, k <= K_MAX, -1920 * k <= total, total <= 1905 * k,
    )


@pytest.mark.lean("Q35.accum_replicate_extreme")
def test_smt_accum_replicate_extreme_induction():
    n, rest = z3.Ints("n rest")
    assert_proved(-128 * 15 + rest == -1920 * (n + 1), rest == -1920 * n)


@pytest.mark.lean("Q35.accumulator_bound_tight")
def test_smt_accumulator_bound_tight():
    k = z3.Int("k")
    # K_MAX is the largest K whose worst case stays in int32, and one more term leaves it.
    assert_proved(-1920 * k >= INT32_MIN, k >= 0, k <= K_MAX)
    assert_proved(-1920 * (K_MAX + 1) < INT32_MIN)
    assert_proved(z3.Not(-1920 * k >= INT32_MIN), k == K_MAX + 1)


# --- the input rotation (Q35/Rotation.lean) ---------------------------------------------------


def butterfly(a, b):  # Q35.butterfly
    return a + b, a - b


@pytest.mark.lean("Q35.butterfly_twice")
def test_smt_butterfly_twice():
    a, b = z3.Ints("a b")
    u, v = butterfly(*butterfly(a, b))
    assert_proved(z3.And(u == 2 * a, v == 2 * b))


@pytest.mark.lean("Q35.butterflyPass_twice")
def test_smt_butterfly_pass_twice_induction_step():
    # nil: both sides are []; cons: the head is butterfly_twice, the tail the hypothesis
    a, b, tail_lhs, tail_rhs = z3.Ints("a b tail_lhs tail_rhs")
    u, v = butterfly(*butterfly(a, b))
    assert_proved(z3.And(u == 2 * a, v == 2 * b, tail_lhs == tail_rhs), tail_lhs == tail_rhs)


@pytest.mark.lean("Q35.sign_mul_self")
def test_smt_sign_mul_self():
    s = z3.Int("s")
    assert_proved(s * s == 1, z3.Or(s == 1, s == -1))
