"""The 7-bit code and the 7-byte block (FORMAT.md §2, §3): Fortran kernels vs the reference."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.kernels import reference


def test_every_pair_round_trips_through_its_code():
    pairs = np.array(list(itertools.product(range(-8, 8), range(-4, 4))), dtype=np.int8)
    codes = q35f.encode(pairs[:, 0], pairs[:, 1])
    assert codes.dtype == np.uint8 and codes.max() <= 127
    assert len(set(codes.tolist())) == 128  # 16 x 8 pairs fill all 128 codes exactly once
    assert np.array_equal(codes, reference.encode(pairs[:, 0], pairs[:, 1]))
    n1, n2 = q35f.decode(codes)
    assert np.array_equal(n1, pairs[:, 0]) and np.array_equal(n2, pairs[:, 1])


def test_every_code_round_trips_through_its_pair():
    codes = np.arange(128, dtype=np.uint8)
    n1, n2 = q35f.decode(codes)
    ref1, ref2 = reference.decode(codes)
    assert np.array_equal(n1, ref1) and np.array_equal(n2, ref2)
    assert n1.min() == -8 and n1.max() == 7 and n2.min() == -4 and n2.max() == 3
    assert np.array_equal(q35f.encode(n1, n2), codes)


@pytest.mark.parametrize("position", range(8))
@pytest.mark.parametrize("code", [1, 0x55, 0x2A, 127])
def test_every_block_position_holds_its_own_bits(position, code):
    codes = np.zeros((1, 8), dtype=np.uint8)
    codes[0, position] = code
    packed = q35f.pack_codes(codes)
    assert packed.shape == (1, 7)
    stream = int.from_bytes(packed[0].tobytes(), "little")
    assert stream == code << (7 * position)  # bits 7j .. 7j+6, nothing else
    assert np.array_equal(q35f.unpack_codes(packed), codes)


@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_unpack_inverts_pack_and_matches_reference(rows, blocks, seed):
    codes = np.random.default_rng(seed).integers(0, 128, (rows, 8 * blocks), dtype=np.uint8)
    packed = q35f.pack_codes(codes)
    assert np.array_equal(packed, reference.pack_codes(codes))
    assert np.array_equal(q35f.unpack_codes(packed), codes)


def test_bad_codes_are_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="n1"):
        q35f.encode(np.array([8]), np.array([0]))
    with pytest.raises(ValueError, match="n2"):
        q35f.encode(np.array([0]), np.array([-5]))
    with pytest.raises(ValueError, match="codes"):
        q35f.decode(np.array([128]))
    with pytest.raises(ValueError, match="multiple of 8"):
        q35f.pack_codes(np.zeros((2, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="multiple of 7"):
        q35f.unpack_codes(np.zeros((2, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="codes"):
        q35f.decode(np.array([1.5]))
