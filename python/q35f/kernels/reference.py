"""Pure-numpy reference of every kernel: the oracle the Fortran kernels are tested against.

Written to be obviously right, never optimized. Section numbers refer to docs/FORMAT.md.
"""

from __future__ import annotations

import numpy as np

from q35f.format.spec import BLOCK_WEIGHTS, check_group_size, get_format, n_blocks, n_groups

# §2 -- the 7-bit code


def encode(n1, n2):
    """(n1 in [-8, 7], n2 in [-4, 3]) -> 7-bit code."""
    n1 = np.asarray(n1, dtype=np.int64)
    n2 = np.asarray(n2, dtype=np.int64)
    if np.any((n1 < -8) | (n1 > 7)):
        raise ValueError("n1 must lie in [-8, 7]")
    if np.any((n2 < -4) | (n2 > 3)):
        raise ValueError("n2 must lie in [-4, 3]")
    return (((n1 & 0xF) << 3) | (n2 & 0x7)).astype(np.uint8)


def decode(code):
    """7-bit code -> (n1, n2), both sign-extended."""
    code = np.asarray(code, dtype=np.int64)
    if np.any((code < 0) | (code > 127)):
        raise ValueError("code must lie in [0, 127]")
    f1 = code >> 3
    f2 = code & 7
    n1 = np.where(f1 >= 8, f1 - 16, f1)
    n2 = np.where(f2 >= 4, f2 - 8, f2)
    return n1.astype(np.int8), n2.astype(np.int8)


# §3, §6 -- little-endian bit streams of fixed-width fields


def pack_fields(values, width: int):
    """(rows, m) fields of `width` bits -> (rows, m*width/8) bytes, field j at bits j*width..."""
    values = np.asarray(values, dtype=np.uint64)
    rows, m = values.shape
    if (m * width) % 8:
        raise ValueError("fields must fill whole bytes")
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((values[:, :, None] >> shifts) & 1).astype(np.uint8)  # (rows, m, width)
    return np.packbits(bits.reshape(rows, m * width), axis=1, bitorder="little")


def unpack_fields(packed, width: int):
    """Inverse of pack_fields."""
    packed = np.asarray(packed, dtype=np.uint8)
    rows, nbytes = packed.shape
    bits = np.unpackbits(packed, axis=1, bitorder="little").reshape(rows, -1, width)
    weights = np.uint64(1) << np.arange(width, dtype=np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=2).astype(np.int64)


def pack_codes(codes):
    """(rows, 8*b) codes -> (rows, 7*b) bytes (§3)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] % 8:
        raise ValueError("codes must be 2-D with a multiple of 8 codes per row")
    return pack_fields(codes, 7)


def unpack_codes(packed):
    """(rows, 7*b) bytes -> (rows, 8*b) codes (§3)."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.shape[1] % 7:
        raise ValueError("packed must be 2-D with a multiple of 7 bytes per row")
    return unpack_fields(packed, 7).astype(np.uint8)


# §4 -- float16 parameters


def f16_round_down(x):
    """Largest float16 <= x, returned as float32; a zero result is +0."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):  # the unselected branch may step past +-65504
        h = x.astype(np.float16)
        h = np.where(h.astype(np.float32) > x, np.nextafter(h, np.float16(-np.inf)), h)
    return h.astype(np.float32) + np.float32(0)  # -0 + 0 = +0


def f16_round_up(x):
    """Smallest float16 >= x, returned as float32; a zero result is +0."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
        h = np.where(h.astype(np.float32) < x, np.nextafter(h, np.float16(np.inf)), h)
    return h.astype(np.float32) + np.float32(0)


def group_params(lo, hi, top_level: int):
    """offset, scale (float32 values that are exact float16) whose grid covers [lo, hi]."""
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    top = np.float32(top_level)
    offset = f16_round_down(lo)
    scale = f16_round_up((hi - offset) / top)
    while True:
        short = (offset + top * scale) < hi
        if not short.any():
            return offset, scale
        bumped = np.nextafter(scale.astype(np.float16), np.float16(np.inf)).astype(np.float32)
        scale = np.where(short, bumped, scale)


def step3(scale):
    """The 3-bit step of a q35 group, in float32 exactly as FORMAT.md §4 writes it."""
    return (np.float32(15) * np.asarray(scale, dtype=np.float32)) / np.float32(7)


def to_levels(w, offset, step, levels: int):
    """clamp(floor((w - offset)/step + 1/2), 0, levels-1) in float32; 0 where step == 0."""
    w = np.asarray(w, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.floor((w - offset) / step + np.float32(0.5))
    t = np.where(step == 0, 0, t)
    return np.clip(t, 0, levels - 1).astype(np.int64)


# whole tensors


def _grid_steps(scale, fmt, n_weights: int):
    """Per weight position parity: step and level count of its grid."""
    odd = (np.arange(n_weights) % 2) == 1
    if fmt.name == "q35":
        step = np.where(odd, step3(scale), scale)
        levels = np.where(odd, fmt.odd_levels, fmt.even_levels)
    else:
        step = scale
        levels = np.full(n_weights, fmt.even_levels)
    return step, levels


def _expand_groups(per_group, k: int, group_size: int):
    """(rows, groups) -> (rows, k): each weight gets its group's value."""
    return np.repeat(per_group, group_size, axis=1)[:, :k]


def quantize(w, group_size: int = 128, bits: str = "q35"):
    """float32 (N, K) -> packed uint8 (N, row_bytes), scale, offset float16 (N, groups)."""
    fmt = get_format(bits)
    check_group_size(group_size)
    w = np.asarray(w, dtype=np.float32)
    rows, k = w.shape
    groups = n_groups(k, group_size)
    padded_g = np.full((rows, groups * group_size), np.nan, dtype=np.float32)
    padded_g[:, :k] = w
    blocks = padded_g.reshape(rows, groups, group_size)
    lo = np.nanmin(blocks, axis=2)
    hi = np.nanmax(blocks, axis=2)
    offset, scale = group_params(lo, hi, fmt.even_levels - 1)

    step, level_counts = _grid_steps(_expand_groups(scale, k, group_size), fmt, k)
    off = _expand_groups(offset, k, group_size)
    levels = np.zeros((rows, n_blocks(k) * BLOCK_WEIGHTS), dtype=np.int64)
    for count in np.unique(level_counts):
        cols = np.flatnonzero(level_counts == count)
        levels[:, cols] = to_levels(w[:, cols], off[:, cols], step[:, cols], int(count))
    return pack_levels(levels, k, bits), scale.astype(np.float16), offset.astype(np.float16)


def pack_levels(levels, k: int, bits: str):
    """Unsigned grid levels (rows, >= k) -> the packed stream; positions >= k become 0 bits."""
    fmt = get_format(bits)
    rows = levels.shape[0]
    padded = np.zeros((rows, n_blocks(k) * BLOCK_WEIGHTS), dtype=np.int64)
    padded[:, :k] = levels[:, :k]
    if fmt.name != "q35":
        width = {"int8": 8, "int4": 4, "int3": 3}[fmt.name]
        return pack_fields(padded, width)
    n1 = padded[:, 0::2] - 8
    n2 = padded[:, 1::2] - 4
    codes = encode(n1, n2).astype(np.int64)
    if k % 2:  # the last pair is half padding: its odd field holds 0 bits
        codes[:, k // 2] &= ~0x7
    codes[:, -(-k // 2):] = 0
    return pack_codes(codes)


def unpack_levels(packed, k: int, bits: str):
    """Packed stream -> unsigned grid levels (rows, k)."""
    fmt = get_format(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    if fmt.name != "q35":
        width = {"int8": 8, "int4": 4, "int3": 3}[fmt.name]
        return unpack_fields(packed, width)[:, :k]
    n1, n2 = decode(unpack_codes(packed))
    levels = np.empty((packed.shape[0], 2 * n1.shape[1]), dtype=np.int64)
    levels[:, 0::2] = n1.astype(np.int64) + 8
    levels[:, 1::2] = n2.astype(np.int64) + 4
    return levels[:, :k]


def dequantize(packed, scale, offset, k: int, group_size: int = 128, bits: str = "q35"):
    """Packed stream + float16 parameters -> float32 (N, K), in float32 arithmetic (§4)."""
    fmt = get_format(bits)
    levels = unpack_levels(packed, k, bits).astype(np.float32)
    scale32 = _expand_groups(np.asarray(scale, dtype=np.float32), k, group_size)
    off = _expand_groups(np.asarray(offset, dtype=np.float32), k, group_size)
    step, _ = _grid_steps(scale32, fmt, k)
    return (off + step * levels).astype(np.float32)


def matmul(x, packed, scale, offset, k: int, group_size: int = 128, bits: str = "q35"):
    """y = x @ W.T computed in float64 from the dequantized matrix: the accuracy yardstick."""
    w = dequantize(packed, scale, offset, k, group_size, bits).astype(np.float64)
    return np.asarray(x, dtype=np.float64) @ w.T


# Clip search and given parameters (fortran/q35_clip.f90)


def quantize_with_params(w, offset, scale, group_size: int = 128, bits: str = "q35"):
    """Packed stream of w on the given float16 (N, groups) parameters; levels clamped (§4)."""
    fmt = get_format(bits)
    w = np.asarray(w, dtype=np.float32)
    rows, k = w.shape
    off = _expand_groups(np.asarray(offset, dtype=np.float32), k, group_size)
    step, level_counts = _grid_steps(
        _expand_groups(np.asarray(scale, dtype=np.float32), k, group_size), fmt, k)
    levels = np.zeros((rows, k), dtype=np.int64)
    for count in np.unique(level_counts):
        cols = np.flatnonzero(level_counts == count)
        levels[:, cols] = to_levels(w[:, cols], off[:, cols], step[:, cols], int(count))
    return pack_levels(levels, k, bits)


ERR_LANES = 8  # partial sums of the clip search's error (fortran/q35_clip.f90 err_lanes)


def group_error(w, offset, scale, bits: str = "q35", importance=None):
    """Squared error of each group w[..., :] (first weight even) on its grid, each weight's term
    times importance[i] (float32, default 1), float64. Weight i's term is added to partial sum
    i mod ERR_LANES, then the partial sums in order: the kernel's order, so both pick the same
    candidate."""
    fmt = get_format(bits)
    w = np.asarray(w, dtype=np.float32)
    imp = (np.ones(w.shape[-1]) if importance is None
           else np.asarray(importance, dtype=np.float32).astype(np.float64))
    offset = np.asarray(offset, dtype=np.float32)[..., None]
    scale = np.asarray(scale, dtype=np.float32)[..., None]
    odd_step = step3(scale) if fmt.name == "q35" else scale
    k = w.shape[-1]
    even = np.arange(k) % 2 == 0
    q_even = offset + scale * to_levels(w, offset, scale, fmt.even_levels).astype(np.float32)
    q_odd = offset + odd_step * to_levels(w, offset, odd_step, fmt.odd_levels).astype(np.float32)
    q = np.where(even, q_even, q_odd)
    diff = q.astype(np.float64) - w.astype(np.float64)
    terms = imp * (diff * diff)
    lanes = np.zeros(w.shape[:-1] + (ERR_LANES,), dtype=np.float64)
    for c in range(0, k, ERR_LANES):
        chunk = terms[..., c:c + ERR_LANES]
        lanes[..., :chunk.shape[-1]] += chunk
    err = np.zeros(w.shape[:-1], dtype=np.float64)
    for lane in range(ERR_LANES):
        err += lanes[..., lane]
    return err


def clip_params(w, group_size: int = 128, bits: str = "q35", n_grid: int = 32, n_steps: int = 8,
                importance=None):
    """Per group, the §4 parameters of the shrunken range [lo + i*d, hi - j*d], d = (hi-lo)/n_grid,
    0 <= i, j < n_steps, with the least group_error weighted by importance (K,) (default: all
    ones); (0, 0) = min/max wins ties. Returns offset, scale float32 (N, groups), exact float16
    values."""
    fmt = get_format(bits)
    w = np.asarray(w, dtype=np.float32)
    rows, k = w.shape
    imp = np.ones(k, np.float32) if importance is None else np.asarray(importance, np.float32)
    top = fmt.even_levels - 1
    offset = np.empty((rows, n_groups(k, group_size)), dtype=np.float32)
    scale = np.empty_like(offset)
    for g in range(offset.shape[1]):
        block = w[:, g * group_size:(g + 1) * group_size]
        block_imp = imp[g * group_size:(g + 1) * group_size]
        lo, hi = block.min(axis=1), block.max(axis=1)
        best_off, best_scale = group_params(lo, hi, top)
        best = group_error(block, best_off, best_scale, bits, block_imp)
        delta = (hi - lo) / np.float32(n_grid)
        for i in range(n_steps):
            low = lo + np.float32(i) * delta
            for j in range(n_steps):
                if i == 0 and j == 0:
                    continue
                high = hi - np.float32(j) * delta
                valid = high > low
                cand_off, cand_scale = group_params(np.where(valid, low, lo),
                                                    np.where(valid, high, hi), top)
                err = group_error(block, cand_off, cand_scale, bits, block_imp)
                better = valid & (err < best)
                best = np.where(better, err, best)
                best_off = np.where(better, cand_off, best_off)
                best_scale = np.where(better, cand_scale, best_scale)
        offset[:, g], scale[:, g] = best_off, best_scale
    return offset, scale


# The integer prompt GEMM (fortran/q35_gemm.f90): int8 activations, integer levels

ACTIVATION_LEVEL = 127
# Per format: integer multipliers of the even and odd levels (u = multiplier * level) and the
# divisor of the group scale (a = scale / divisor), so that a * u = step * level (FORMAT.md §4:
# q35's odd step is 15 * scale / 7, so 7 * l1 and 15 * l2 share one sum, both <= 105).
INTEGER_LEVELS = {"q35": (7, 15, 7), "int8": (1, 1, 1), "int4": (1, 1, 1), "int3": (1, 1, 1)}


def quantize_activations(x, group_size: int):
    """x (M, K) float32 -> xq int8 (M, K_pad), scale float32 (M, groups), sum int64 (M, groups):
    per token and group, scale = max|x| / 127 and xq = clamp(floor(x / scale + 1/2), -127, 127)
    in float32; where scale is 0 (a zero group, or max|x| < 127 * the smallest subnormal) xq = 0;
    a group holding a NaN or an infinity gets scale NaN and xq 0 (the float path's case)."""
    x = np.asarray(x, dtype=np.float32)
    m, k = x.shape
    k_pad = n_blocks(k) * BLOCK_WEIGHTS
    groups = n_groups(k, group_size)
    padded = np.zeros((m, k_pad), dtype=np.float32)
    padded[:, :k] = x
    xq = np.zeros((m, k_pad), dtype=np.int8)
    scale = np.zeros((m, groups), dtype=np.float32)
    for g in range(groups):
        cols = slice(g * group_size, min((g + 1) * group_size, k_pad))
        block = padded[:, cols]
        finite = np.isfinite(block).all(axis=1)
        s = (np.abs(np.where(finite[:, None], block, 0)).max(axis=1)
             / np.float32(ACTIVATION_LEVEL)).astype(np.float32)
        s = np.where(finite, s, np.float32(np.nan)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.floor(block / s[:, None] + np.float32(0.5))
        zero = (s[:, None] == 0) | ~finite[:, None]
        q = np.where(zero, 0, np.clip(np.nan_to_num(q), -ACTIVATION_LEVEL, ACTIVATION_LEVEL))
        xq[:, cols] = q.astype(np.int8)
        scale[:, g] = s
    total = np.stack([xq[:, g * group_size:(g + 1) * group_size].astype(np.int64).sum(axis=1)
                      for g in range(groups)], axis=1)
    return xq, scale, total


def integer_levels(packed, k: int, bits: str):
    """(N, K_pad) int64: each weight's integer level u = multiplier * level, the padding of K
    included as its zero bits decode (q35: levels 8 and 4; it meets zero activations)."""
    even, odd, _ = INTEGER_LEVELS[bits]
    k_pad = n_blocks(k) * BLOCK_WEIGHTS
    levels = unpack_levels(packed, k_pad, bits)
    return levels * np.where(np.arange(k_pad) % 2 == 0, even, odd)


def group_sums(u, xq, group_size: int):
    """int64 (N, M, groups): S = sum over each group of u * xq (exact integers)."""
    u = np.asarray(u, dtype=np.int64)
    xq = np.asarray(xq, dtype=np.int64)
    groups = -(-u.shape[1] // group_size)
    return np.stack([u[:, g * group_size:(g + 1) * group_size]
                     @ xq[:, g * group_size:(g + 1) * group_size].T
                     for g in range(groups)], axis=2)


def matmul_int8(x, packed, scale, offset, k: int, group_size: int = 128, bits: str = "q35"):
    """The integer GEMM's result in float64: y = sum over groups of
    sx * (scale / divisor) * S + offset * sx * sum(xq); returns (y, xq, sx, x_sum, S)."""
    xq, sx, total = quantize_activations(x, group_size)
    u = integer_levels(packed, k, bits)
    s = group_sums(u, xq, group_size)
    a = np.asarray(scale, dtype=np.float32).astype(np.float64) / INTEGER_LEVELS[bits][2]
    o = np.asarray(offset, dtype=np.float32).astype(np.float64)
    sx64 = sx.astype(np.float64)
    y = (np.einsum("nmg,mg,ng->mn", s.astype(np.float64), sx64, a)
         + np.einsum("ng,mg->mn", o, sx64 * total))
    return y, xq, sx, total, s


# §9 -- the input rotation, as explicit matrices


def hadamard(n: int) -> np.ndarray:
    """Sylvester's n x n Hadamard matrix (n a power of two), float64."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"block size {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def rotation_matrix(k: int, group_size: int) -> np.ndarray:
    """R (k, k) float64: one D H / sqrt(n) per group of input columns (FORMAT.md §9)."""
    from q35f.format.rotation import column_signs

    signs = column_signs(k).astype(np.float64)
    r = np.zeros((k, k))
    for first in range(0, k, group_size):
        n = min(group_size, k - first)
        block = slice(first, first + n)
        r[block, block] = signs[block, None] * hadamard(n) / np.sqrt(n)
    return r


def rotate(x, group_size: int, inverse: bool = False):
    """Rows of x (M, K) times R (x R: a weight's rows W -> W R, or an input's R^T x), or times R^T
    (inverse: stored rows back to W's), float64."""
    x = np.asarray(x, dtype=np.float64)
    r = rotation_matrix(x.shape[-1], group_size)
    return x @ (r.T if inverse else r)
