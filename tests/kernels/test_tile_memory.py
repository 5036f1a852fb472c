"""The tiled arrays the kernels read: layout and the huge-page memory they live in."""

import mmap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from q35f.kernels import fortran as kernels


def reference_tiles(rows):
    """FORMAT.md §7 by index: tiles[t, j, r] = rows[16 t + r, j], zero past the last row."""
    n, c = rows.shape
    out = np.zeros((-(-n // 16), c, 16), dtype=rows.dtype)
    for i in range(n):
        out[i // 16, :, i % 16] = rows[i]
    return out


def backing(array):
    """The object that owns an array's memory."""
    while isinstance(array, np.ndarray):
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 70), c=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_tile_rows_is_the_documented_interleave(n, c, seed):
    rows = np.random.default_rng(seed).integers(0, 256, (n, c), dtype=np.uint8)
    tiles = kernels.tile_rows(rows)
    np.testing.assert_array_equal(tiles, reference_tiles(rows))
    np.testing.assert_array_equal(kernels.untile_rows(tiles, n), rows)


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE on this OS")
def test_large_tiles_live_in_huge_page_memory_and_stay_correct():
    rows = np.random.default_rng(0).integers(-2**15, 2**15, (4099, 300), dtype=np.int16)
    assert rows.nbytes >= kernels.HUGE_PAGE_BYTES
    tiles = kernels.tile_rows(rows)
    assert isinstance(backing(tiles), mmap.mmap)
    assert tiles.flags.c_contiguous and tiles.flags.aligned and tiles.flags.writeable
    np.testing.assert_array_equal(tiles, reference_tiles(rows))


def test_small_arrays_stay_ordinary():
    a = kernels.huge_page_array((3, 5), np.float32)
    assert a.shape == (3, 5) and a.dtype == np.float32 and not isinstance(backing(a), mmap.mmap)
