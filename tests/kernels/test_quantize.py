"""Group quantization (FORMAT.md §4-§6): Fortran kernels bit-identical to the numpy reference."""

import numpy as np
import pytest
from conftest import BITS, weight_matrices
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.kernels import reference
from q35f.format.spec import bits_per_weight, n_groups, row_bytes


def _assert_matches_reference(w, group_size, bits):
    qt = q35f.quantize(w, group_size, bits)
    packed, scale, offset = reference.quantize(w, group_size, bits)
    n, k = w.shape
    assert qt.packed.shape == (n, row_bytes(k, bits)) and qt.packed.dtype == np.uint8
    assert qt.scale.shape == (n, n_groups(k, group_size)) and qt.scale.dtype == np.float16
    assert np.array_equal(qt.packed, packed)
    assert np.array_equal(qt.scale.view(np.uint16), scale.view(np.uint16))
    assert np.array_equal(qt.offset.view(np.uint16), offset.view(np.uint16))
    expected = reference.dequantize(packed, scale, offset, k, group_size, bits)
    assert np.array_equal(qt.dequantize(), expected)
    return qt


@pytest.mark.parametrize("bits", BITS)
@given(data=weight_matrices())
def test_kernels_are_bit_identical_to_the_reference(bits, data, no_array_copies):
    w, group_size = data
    _assert_matches_reference(w, group_size, bits)


@pytest.mark.parametrize("bits", BITS)
@given(data=weight_matrices(), which=st.sampled_from(["even", "odd"]))
def test_in_range_weights_land_within_half_a_step(bits, data, which):
    w, group_size = data
    qt = q35f.quantize(w, group_size, bits)
    n, k = w.shape
    scale = np.repeat(qt.scale.astype(np.float32), group_size, axis=1)[:, :k]
    step = reference.step3(scale) if (bits == "q35" and which == "odd") else scale
    cols = slice(0, k, 2) if which == "even" else slice(1, k, 2)
    error = np.abs(qt.dequantize() - w)[:, cols].astype(np.float64)
    # Half a step of the element's own grid, plus float32 rounding of w, offset and the grid.
    offset = np.repeat(qt.offset.astype(np.float32), group_size, axis=1)[:, :k][:, cols]
    slack = 1e-6 * (np.abs(w[:, cols]) + np.abs(qt.dequantize()[:, cols]) + np.abs(offset))
    excess = error - (step[:, cols] / 2 + slack)
    if excess.size == 0:  # k = 1 has no odd weight
        return
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 0, (w[:, cols][worst], qt.dequantize()[:, cols][worst], step[:, cols][worst])


def test_the_stored_grid_covers_every_group_range():
    w = np.random.default_rng(3).standard_normal((64, 200)).astype(np.float32) * 7
    qt = q35f.quantize(w, 32)
    lo = np.array([w[:, g * 32 : (g + 1) * 32].min(axis=1) for g in range(7)]).T
    hi = np.array([w[:, g * 32 : (g + 1) * 32].max(axis=1) for g in range(7)]).T
    offset = qt.offset.astype(np.float32)
    scale = qt.scale.astype(np.float32)
    assert np.all(offset <= lo)
    assert np.all(offset + np.float32(15) * scale >= hi)


def test_a_constant_group_dequantizes_to_its_float16_value():
    w = np.full((3, 48), 0.1, dtype=np.float32)
    qt = q35f.quantize(w, 16)
    exact16 = np.float32(np.float16(0.0999755859375))  # largest float16 <= 0.1
    assert np.all(qt.offset == np.float16(exact16))
    assert np.allclose(qt.dequantize(), 0.1, rtol=0, atol=float(qt.scale.max()) / 2 + 1e-9)
    w16 = np.full((2, 32), 0.5, dtype=np.float32)  # exactly a float16: scale 0, exact result
    assert np.array_equal(q35f.quantize(w16, 16).dequantize(), w16)


@pytest.mark.parametrize(
    "k, group_size, expected",
    [(4096, 128, 3.75), (4096, 64, 4.0), (576, 128, (56 * 36 + 32 * 5) / 576), (17, 16, (56 * 2 + 32 * 2) / 17)],
)
def test_bits_per_weight_is_exactly_the_stored_bits(k, group_size, expected):
    qt = q35f.quantize(np.ones((2, k), dtype=np.float32), group_size)
    assert qt.bits_per_weight == pytest.approx(expected)
    assert bits_per_weight(k, group_size) == pytest.approx(expected)
    stored = qt.packed.nbytes + qt.scale.nbytes + qt.offset.nbytes
    assert qt.nbytes == stored
    assert 8 * stored / (2 * k) == pytest.approx(expected)


@pytest.mark.parametrize(
    "w, kwargs, error, match",
    [
        (np.ones((2, 32), np.float64), {}, TypeError, "float32"),
        (np.ones(32, np.float32), {}, ValueError, "2-D"),
        (np.ones((0, 32), np.float32), {}, ValueError, "empty"),
        (np.array([[np.nan] * 32], np.float32), {}, ValueError, "NaN"),
        (np.array([[np.inf] * 32], np.float32), {}, ValueError, "NaN or Inf"),
        (np.full((1, 32), 7e4, np.float32), {}, ValueError, "float16 range"),
        (np.ones((2, 32), np.float32), {"group_size": 24}, ValueError, "multiple of 16"),
        (np.ones((2, 32), np.float32), {"group_size": 0}, ValueError, "group_size"),
        (np.ones((2, 32), np.float32), {"bits": "q2"}, ValueError, "bits"),
        ([[1.0] * 32], {}, TypeError, "numpy array"),
    ],
)
def test_bad_input_gets_a_clear_error(w, kwargs, error, match):
    with pytest.raises(error, match=match):
        q35f.quantize(w, **kwargs)


def test_from_packed_round_trips_and_checks_shapes():
    w = np.random.default_rng(0).standard_normal((20, 100)).astype(np.float32)
    qt = q35f.quantize(w, 32)
    again = q35f.QuantizedTensor.from_packed(qt.packed, qt.scale, qt.offset, qt.shape, 32, "q35")
    assert np.array_equal(again.dequantize(), qt.dequantize())
    with pytest.raises(ValueError, match="packed"):
        q35f.QuantizedTensor.from_packed(qt.packed[:, :-1], qt.scale, qt.offset, qt.shape, 32)
    with pytest.raises(TypeError, match="scale"):
        q35f.QuantizedTensor.from_packed(qt.packed, qt.offset.astype(np.float32), qt.offset,
                                         qt.shape, 32)


def test_take_rows_equals_the_dequantized_rows():
    w = np.random.default_rng(1).standard_normal((50, 40)).astype(np.float32)
    qt = q35f.quantize(w, 16, "int8")
    ids = np.array([49, 0, 17, 17, 33])
    assert np.array_equal(qt.take_rows(ids), qt.dequantize()[ids])
    with pytest.raises(ValueError, match="ids"):
        qt.take_rows(np.array([50]))


def test_the_cli_recipes_and_their_overrides():
    import argparse

    from q35f.quantization.convert import recipe_options, register
    from q35f.quantization.recipe import RECIPES

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def options(*flags):
        return recipe_options(parser.parse_args(["quantize", "-o", "x", *flags]))

    default = options()
    assert {k: default[k] for k in RECIPES["calibrated"]} == RECIPES["calibrated"]
    assert default["gptq"] and default["importance"] == "activation"
    assert default["propagation"] == 0.5
    assert options("--propagation", "0")["propagation"] == 0
    assert "propagation" not in options("--no-gptq")  # nothing to correct without GPTQ
    assert default["gptq_order"] == "coarse-first"
    assert options("--gptq-order", "natural")["gptq_order"] == "natural"
    assert "gptq_order" not in options("--no-gptq")  # no columns to order without GPTQ
    assert options("--mix", "none")["mix"] == "none"
    assert options("--round-to-nearest", "--mix", "kv4-q3")["mix"] == "kv4-q3"
    free = options("--no-calibration")
    assert {k: free[k] for k in RECIPES["data-free"]} == RECIPES["data-free"]
    assert "propagation" not in free
    rtn = options("--round-to-nearest")
    assert not rtn["clip_search"] and rtn["pairing"] == "none" and not rtn["gptq"]
    assert options("--no-gptq", "--damping", "0.1")["gptq"] is False
    assert options("--no-clip-search")["importance"] == "none"  # nothing left to weigh
    assert options("--pairing", "weight", "--importance-prior", "0.5")["importance_prior"] == 0.5
    with pytest.raises(SystemExit):
        options("--no-calibration", "--round-to-nearest")


def test_mixed_importance_has_mean_one_and_a_floor():
    from q35f.quantization.recipe import mixed_importance

    ms = np.array([0.0, 1.0, 3.0, 100.0])
    imp = mixed_importance(ms, 0.2)
    assert imp.dtype == np.float32
    assert imp.mean() == pytest.approx(1.0)
    assert imp.min() == pytest.approx(0.2)
    np.testing.assert_allclose(mixed_importance(ms, 1.0), 1.0)
    np.testing.assert_allclose(mixed_importance(np.zeros(3), 0.1), 1.0)  # silent input: uniform
