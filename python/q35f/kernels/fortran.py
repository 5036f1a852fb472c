"""Validated wrappers around the Fortran kernels (q35f._kernels, built by meson from fortran/).

Every function checks dtype, shape and memory order and then hands the kernels views of the
caller's memory: f2py would otherwise copy silently (FORMAT.md §7 describes the tiled layout).
"""

from __future__ import annotations

import functools
import os

import numpy as np



SPIN_COUNT = 30000  # libgomp's spin iterations before a waiting thread sleeps (~tens of µs)


def default_threads(cpus: int, busy: float) -> int:
    """Kernel threads for `cpus` usable cores of which `busy` are in use by other work: the idle
    ones, at least 1. On a busy 2-core machine a second thread that has to wait for a core makes
    every parallel region wait for it: 2 threads decoded the embedded model at 0.5-0.85x one
    thread's speed with both cores taken by other processes (measured; docs/RESULTS.md)."""
    return max(1, min(cpus, cpus - int(busy + 0.5)))


def busy_cores(seconds: float = 0.05) -> float | None:
    """Cores busy right now (Linux /proc/stat over `seconds`), None where it cannot be read. The
    load average would lag: after a minute of work it still counts the user's previous command."""
    import time

    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all jiffies, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def _configure_openmp(environ) -> None:
    """Thread count and wait policy of the kernels' OpenMP runtime, unless the user set them;
    libgomp reads them once when it starts, so this runs before the kernels are loaded."""
    if "OMP_NUM_THREADS" not in environ:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        busy = busy_cores()
        if busy is not None:
            environ["OMP_NUM_THREADS"] = str(default_threads(cpus or 1, busy))
    # Waiting threads spin briefly, then sleep. Spinning for good (libgomp's default when the
    # threads fit the cores) stalls every parallel region whenever another process holds a core
    # (2-thread decode ~45 -> ~9 tok/s at load 3), sleeping at once costs each region a wake-up
    # (quiet machine: 42-58 tok/s passive vs 67-80 spinning); a short spin kept 72-74 (measured).
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


_configure_openmp(os.environ)

from q35f import _kernels  # noqa: E402  (after the wait policy)
from q35f.format.spec import BLOCK_WEIGHTS, FORMATS, get_format, n_blocks, n_groups, row_bytes

TILE_ROWS = 16  # rows interleaved per tile (FORMAT.md §7); fortran/q35_blocks.f90 tile_rows
FORMAT_IDS = {name: bits.format_id for name, bits in FORMATS.items()}


def _as_array(value, name, dtype):
    array = np.asarray(value)
    if array.dtype != dtype:
        if array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise ValueError(f"{name} has values outside {np.dtype(dtype).name}")
            return np.ascontiguousarray(array, dtype=dtype)
        raise TypeError(f"{name} must be an integer array, got {array.dtype.name}")
    return np.ascontiguousarray(array)


# §2 -- pairs and codes


def encode(n1, n2) -> np.ndarray:
    """7-bit codes of pairs (n1 in [-8, 7], n2 in [-4, 3]); any matching shapes."""
    a = _as_array(n1, "n1", np.int8)
    b = _as_array(n2, "n2", np.int8)
    if a.shape != b.shape:
        raise ValueError(f"n1 and n2 must have the same shape, got {a.shape} and {b.shape}")
    if a.size and (a.min() < -8 or a.max() > 7):
        raise ValueError("n1 must lie in [-8, 7]")
    if b.size and (b.min() < -4 or b.max() > 3):
        raise ValueError("n2 must lie in [-4, 3]")
    codes = _kernels.encode_pairs(a.ravel(), b.ravel())
    return codes.view(np.uint8).reshape(a.shape)


def decode(codes):
    """(n1, n2) int8 arrays, sign-extended, from 7-bit codes."""
    c = _as_array(codes, "codes", np.uint8)
    if c.size and c.max() > 127:
        raise ValueError("codes must lie in [0, 127]")
    n1, n2 = _kernels.decode_pairs(c.ravel().view(np.int8))
    return n1.reshape(c.shape), n2.reshape(c.shape)


# §3 -- the bit stream


def pack_codes(codes) -> np.ndarray:
    """(rows, 8*b) codes -> (rows, 7*b) bytes: eight codes per 7-byte block."""
    c = _as_array(codes, "codes", np.uint8)
    if c.ndim != 2 or c.shape[1] % 8:
        raise ValueError(f"codes must be 2-D with a multiple of 8 per row, got shape {c.shape}")
    if c.size and c.max() > 127:
        raise ValueError("codes must lie in [0, 127]")
    packed = _kernels.pack_code_rows(c.view(np.int8).T)
    return packed.T.view(np.uint8)


def unpack_codes(packed) -> np.ndarray:
    """(rows, 7*b) bytes -> (rows, 8*b) codes."""
    p = _as_array(packed, "packed", np.uint8)
    if p.ndim != 2 or p.shape[1] % 7:
        raise ValueError(f"packed must be 2-D with a multiple of 7 per row, got shape {p.shape}")
    codes = _kernels.unpack_code_rows(p.view(np.int8).T)
    return codes.T.view(np.uint8)


# tiled layout (§7)


# Arrays of at least this many bytes are placed in memory advised for transparent huge pages.
HUGE_PAGE_BYTES = 2 * 1024 * 1024


def huge_page_array(shape, dtype) -> np.ndarray:
    """An uninitialised C-ordered array, in anonymous memory advised for 2 MiB pages when it is
    that large and the system offers it (Linux THP, "madvise" or "always"). The GEMV streams the
    weights once per token: with 4 KiB pages the hardware prefetchers stop at every page boundary
    (one core 6.0 -> 6.9 GB/s, two 10.6 -> 13.4 GB/s over 454 MB of tiles, bench/gemv_stream.py)."""
    import mmap

    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if nbytes < HUGE_PAGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype=dtype)
    size = -(-nbytes // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        memory.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP "never" or not built in: ordinary pages, same contents
        pass
    return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)


def tile_rows(rows: np.ndarray) -> np.ndarray:
    """(n, c) C-ordered -> (n_tiles, c, TILE_ROWS) C-ordered, zero rows padding the last tile."""
    n, c = rows.shape
    n_tiles = -(-n // TILE_ROWS)
    padded = np.zeros((n_tiles * TILE_ROWS, c), dtype=rows.dtype)
    padded[:n] = rows
    tiles = huge_page_array((n_tiles, c, TILE_ROWS), rows.dtype)
    tiles[...] = padded.reshape(n_tiles, TILE_ROWS, c).transpose(0, 2, 1)
    return tiles


def untile_rows(tiles: np.ndarray, n: int) -> np.ndarray:
    """Inverse of tile_rows."""
    n_tiles, c, _ = tiles.shape
    return np.ascontiguousarray(tiles.transpose(0, 2, 1).reshape(n_tiles * TILE_ROWS, c)[:n])


def packed_to_tiles(packed: np.ndarray, bits: str) -> np.ndarray:
    """Canonical packed rows (file layout) -> the kernels' tiles (FORMAT.md §7): q35 blocks go
    planar (4-bit levels as nibbles, then 3-bit levels), then rows interleave in tiles of 16."""
    if bits == "q35":
        n, nbytes = packed.shape
        stream = np.ascontiguousarray(packed).view(np.int8).reshape(n, nbytes // 7, 7)
        packed = _kernels.q35_rows_to_planar(stream.T).T.reshape(n, nbytes).view(np.uint8)
    return tile_rows(packed)


def tiles_to_packed(tiles: np.ndarray, n: int, bits: str) -> np.ndarray:
    """Inverse of packed_to_tiles: the canonical bit stream of the first n rows."""
    rows = untile_rows(tiles, n)
    if bits == "q35":
        nbytes = rows.shape[1]
        planar = rows.view(np.int8).reshape(n, nbytes // 7, 7)
        rows = _kernels.q35_rows_from_planar(planar.T).T.reshape(n, nbytes).view(np.uint8)
    return rows


# quantize / dequantize / matmul


def quantize_rows(w: np.ndarray, group_size: int, bits: str):
    """float32 C-ordered (N, K) -> tiled packed bytes, float16 scale and offset bits."""
    fmt = get_format(bits)
    n, k = w.shape
    w = np.ascontiguousarray(w)
    packed, scales, offsets = _kernels.quantize_rows(
        FORMAT_IDS[fmt.name], group_size, row_bytes(k, bits), n_groups(k, group_size), w.T
    )
    # The kernels return float32 values that are exact float16 numbers (§4).
    scale16 = scales.T.astype(np.float16)
    offset16 = offsets.T.astype(np.float16)
    return (
        packed_to_tiles(packed.T.view(np.uint8), bits),
        tile_rows(scale16.view(np.int16)),
        tile_rows(offset16.view(np.int16)),
    )


def tile_args(qt):
    """(format id, group size, tiles, scales, offsets) of a QuantizedTensor as the kernels read
    them: Fortran-ordered views of its tile arrays, no copies."""
    tiles, scales, offsets = qt.tile_arrays
    return FORMAT_IDS[qt.bits], qt.group_size, tiles.view(np.int8).T, scales.T, offsets.T


_NO_SIGNS = np.ones(1, dtype=np.float32)


def kv_args(qt=None):
    """decode_block's separate k/v layer: (rows,) + tile_args + rotation_args of qt, or a
    dummy with 0 rows when k and v are stacked with q (f2py passes no zero-size arrays)."""
    if qt is not None:
        return (qt.shape[0],) + tile_args(qt) + rotation_args(qt)
    return (0, 0, 16, np.zeros((TILE_ROWS, 1, 1), np.int8, order="F"),
            np.zeros((TILE_ROWS, 1, 1), np.int16, order="F"),
            np.zeros((TILE_ROWS, 1, 1), np.int16, order="F"), 0, _NO_SIGNS)


def rotation_args(qt):
    """(rotation block, signs) of a QuantizedTensor for decode_block: (0, a dummy) without a
    rotation, else its group size and the signs of its inputs (FORMAT.md §9)."""
    if not qt.rotated:
        return 0, _NO_SIGNS
    return qt.group_size, rotation_signs(qt.shape[1])


def decode_block(n_heads, intermediate, pos, eps, scale, x, attn_norm, mlp_norm, cos_pos,
                 sin_pos, k_cache, v_cache, weights):
    """One decoder block for one token, in place (fortran/q35_decode.f90): x (hidden,) float32
    becomes the block's output, the token's key and value go into k_cache and v_cache (kv heads,
    positions, head_dim) at pos. weights: tile_args + rotation_args of the fused q/k/v (or q
    alone), kv_args of the separate k/v, then of o, fused gate/up and down layers,
    concatenated."""
    _kernels.decode_block(intermediate, n_heads, pos, eps, scale, x, attn_norm, mlp_norm,
                          cos_pos, sin_pos, k_cache.T, v_cache.T, *weights)


def padded_width(k: int) -> int:
    return n_blocks(k) * BLOCK_WEIGHTS


def gemv(x: np.ndarray, qt) -> np.ndarray:
    """x (M, K) float32 -> (M, N) with the fused kernel; for small M (decode)."""
    n, k = qt.shape
    m = x.shape[0]
    k_pad = padded_width(k)
    if k_pad == k and x.flags.c_contiguous:
        xp = x
    else:
        xp = np.zeros((m, k_pad), dtype=np.float32)
        xp[:, :k] = x
    fmt, group_size, tiles, scales, offsets = tile_args(qt)
    y = _kernels.gemv(fmt, group_size, tiles, scales, offsets, xp.T)
    # y is Fortran (TILE_ROWS, n_tiles, m): as (M, n_pad) it is C-ordered.
    return y.reshape(-1, m, order="F").T[:, :n]


def dequantize_tiles(qt, first: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """Tiles [first, first+count) -> float32 (count*TILE_ROWS, K padded) rows."""
    k_pad = padded_width(qt.shape[1])
    if out is None or out.shape[0] < count * TILE_ROWS or out.shape[1] != k_pad:
        out = np.empty((count * TILE_ROWS, k_pad), dtype=np.float32)
    band = out[: count * TILE_ROWS]
    fmt, group_size, tiles, scales, offsets = tile_args(qt)
    _kernels.dequantize(
        fmt,
        group_size,
        tiles[:, :, first : first + count],
        scales[:, :, first : first + count],
        offsets[:, :, first : first + count],
        band.T,
    )
    return band




def quantize_rows_clip(w: np.ndarray, group_size: int, bits: str, search: bool,
                       n_grid: int = 32, n_steps: int = 8, scale=None, offset=None,
                       importance=None):
    """Like quantize_rows, with clip-searched (search) or given float16 parameters (q35_clip);
    importance (K,) float32 weighs each column's squared error in the search (default 1)."""
    fmt = get_format(bits)
    n, k = w.shape
    w = np.ascontiguousarray(w)
    importance = (np.ones(k, dtype=np.float32) if importance is None
                  else np.ascontiguousarray(importance, dtype=np.float32))
    groups = n_groups(k, group_size)
    if search:
        scales = np.zeros((groups, n), dtype=np.float32, order="F")
        offsets = np.zeros((groups, n), dtype=np.float32, order="F")
    else:
        scales = np.asfortranarray(np.asarray(scale, dtype=np.float32).T)
        offsets = np.asfortranarray(np.asarray(offset, dtype=np.float32).T)
    packed = _kernels.quantize_rows_clip(
        FORMAT_IDS[fmt.name], group_size, row_bytes(k, bits), int(bool(search)),
        n_grid, n_steps, w.T, importance, scales, offsets,
    )
    return (
        packed_to_tiles(packed.T.view(np.uint8), bits),
        tile_rows(scales.T.astype(np.float16).view(np.int16)),
        tile_rows(offsets.T.astype(np.float16).view(np.int16)),
    )


# the input rotation (FORMAT.md §9, fortran/q35_rotate.f90)


@functools.lru_cache(maxsize=None)
def rotation_signs(k: int) -> np.ndarray:
    """The column signs of a rotated tensor's k inputs (read-only, one array per k)."""
    from q35f.format.rotation import column_signs

    signs = column_signs(k)
    signs.flags.writeable = False
    return signs


def rotate_rows(x: np.ndarray, group_size: int, inverse: bool = False) -> np.ndarray:
    """A new float32 (M, K) array: each row of x times R (a weight's rows W -> W R, an input's
    R^T x), or times R^T (inverse: stored rows back to W's). Every group length a power of two
    (q35f.format.rotation.can_rotate)."""
    from q35f.format.rotation import can_rotate

    x = np.asarray(x)
    if x.ndim != 2 or x.dtype != np.float32:
        raise TypeError(f"x must be a 2-D float32 array, got {x.dtype.name} {x.shape}")
    k = x.shape[1]
    if not can_rotate(k, group_size):
        raise ValueError(f"rows of {k} weights in groups of {group_size} cannot be rotated: "
                         "every group length must be a power of two")
    out = np.array(x, dtype=np.float32, order="C")
    if out.size:
        _kernels.rotate_columns(group_size, int(bool(inverse)), rotation_signs(k), out.T)
    return out


# the integer prompt GEMM (fortran/q35_gemm.f90)

ACTIVATION_LEVEL = 127  # activations are quantized to [-127, 127] per group
# Largest unsigned integer level per format (q35: 7*l1 and 15*l2 share one reduction).
MAX_LEVEL = {"q35": 105, "int8": 255, "int4": 15, "int3": 7}


def max_group_weights(bits: str) -> int:
    """Largest group whose integer sums |S| <= G * MAX_LEVEL * 127 fit in int32."""
    return (2**31 - 1) // (MAX_LEVEL[bits] * ACTIVATION_LEVEL)


def quantize_activations(x: np.ndarray, group_size: int):
    """x (M, K_pad) float32 C-ordered -> xq int8 (M, K_pad), scale float32 and sum int32
    (M, groups): per token and group, scale = max|x| / 127, xq = floor(x / scale + 1/2)."""
    m, k_pad = x.shape
    groups = n_groups(k_pad, group_size)
    xq, scale, total = _kernels.quantize_activations(group_size, groups, x.T)
    return xq.T, scale.T, total.T


def _padded_x(x, k_pad):
    if x.shape[1] == k_pad and x.flags.c_contiguous:
        return x
    xp = np.zeros((x.shape[0], k_pad), dtype=np.float32)
    xp[:, : x.shape[1]] = x
    return xp


def gemm_int8(x: np.ndarray, qt) -> np.ndarray | None:
    """x (M, K) float32 -> (M, N): activations to int8 per group, integer products (VNNI);
    None when x holds a NaN or an infinity (no int8 value carries it)."""
    n, k = qt.shape
    if qt.group_size > max_group_weights(qt.bits):
        raise ValueError(f"group size {qt.group_size} exceeds {max_group_weights(qt.bits)}, "
                         f"the largest whose int32 sums cannot overflow for {qt.bits}")
    xq, scale, total = quantize_activations(_padded_x(x, padded_width(k)), qt.group_size)
    if not np.isfinite(scale).all():
        return None
    fmt, group_size, tiles, scales, offsets = tile_args(qt)
    y = _kernels.gemm_int8(fmt, group_size, tiles, scales, offsets, xq.T, scale.T, total.T)
    # y is Fortran (n_pad, m): as (M, n_pad) it is C-ordered.
    return y.T[:, :n]


def unpack_levels(qt) -> np.ndarray:
    """(N_pad, K_pad) uint8: each row's integer levels as the integer GEMM reads them."""
    fmt, _, tiles, _, _ = tile_args(qt)
    u = _kernels.unpack_levels(fmt, padded_width(qt.shape[1]), tiles)
    return u.T.view(np.uint8)


def group_sums(qt, xq: np.ndarray) -> np.ndarray:
    """int32 (N_pad, M, groups): the integer sums S of the GEMM for int8 xq (M, K_pad), M a
    multiple of 4."""
    fmt, group_size, tiles, _, _ = tile_args(qt)
    s = _kernels.group_sums(fmt, group_size, n_groups(qt.shape[1], group_size), tiles, xq.T)
    return s.T
