"""Compact group parameters, "e4m4" (format version 3, docs/FORMAT.md §10).

A group's float16 scale and offset cost 32 bits, a quarter of a bit per weight at G = 128. Stored
as one byte each, groups of 64 cost what groups of 128 did (3.5 + 16/64 = 3.75 bits per weight
plus one byte per row), and smaller groups follow the weights more closely. Every code decodes
to an exact float16 pair, so the kernels, which read float16 parameters, are unchanged: a reader
decodes the codes once, at load.

* scale: code c in 0..255, c = 0 the zero scale, else
  `(16 + (c & 15)) * 2^((c >> 4) + E - 19)`: four exponent and four mantissa bits below the
  row's exponent E (one signed byte per row, -5..15), steps of 1/16 of an octave (at most
  3.1 % from any scale the searches ask for).
* offset: signed code o in -128..127, `float16(-(o + 64) * T * scale / 128)` with T the top
  level of the tensor's (even) grid, so `T * scale` is the group's range R (the product exact
  in float32, rounded to nearest float16): the grid's low end in 128ths of R, from 0.5 R above
  zero to 1.49 R below, so every group whose range straddles zero (all of them, once rotated)
  is representable, at 15/128 of a step for q35 and int4.
"""

from __future__ import annotations

import numpy as np

FLOAT16 = "float16"
COMPACT = "e4m4"
GROUP_PARAMS = (FLOAT16, COMPACT)
EXPONENT_MIN, EXPONENT_MAX = -5, 15  # every code's scale is then an exact float16
OFFSET_DIVISOR = 128  # offsets in 128ths of the group's range, centred (code 0: -range / 2)
OFFSET_CENTRE = 64
OFFSET_MIN, OFFSET_MAX = -128, 127
ROW_MARGIN = 1.25  # room above the row's min/max scale: GPTQ's updates widen groups


def check_group_params(group_params: str) -> str:
    if group_params not in GROUP_PARAMS:
        raise ValueError(f"group_params must be one of {list(GROUP_PARAMS)}, got "
                         f"{group_params!r}")
    return group_params


def row_exponents(w: np.ndarray, top_level: int = 15) -> np.ndarray:
    """int8 (N,): each row's E, so that ROW_MARGIN times its widest min/max scale
    (max - min) / top_level is at most the largest code's scale 31/16 * 2^E."""
    w = np.asarray(w, dtype=np.float64)
    widest = ROW_MARGIN * (w.max(axis=1) - w.min(axis=1)) / top_level
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(widest / (31 / 16)))
    e = np.where(np.isfinite(e), e, EXPONENT_MIN)
    return np.clip(e, EXPONENT_MIN, EXPONENT_MAX).astype(np.int8)


def decode_scales(exponents: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """float16 (N, G) scales of uint8 codes (N, G) under int8 row exponents (N,)."""
    c = np.asarray(codes, dtype=np.int64)
    e = np.asarray(exponents, dtype=np.int64)[:, None]
    value = (16 + (c & 15)) * np.exp2((c >> 4) + e - 19)
    return np.where(c == 0, 0.0, value).astype(np.float16)


def decode_offsets(scales16: np.ndarray, codes: np.ndarray, top_level: int) -> np.ndarray:
    """float16 (N, G) offsets of int8 codes: float16(-(o + 64) * T * scale / 128), the product
    in float32 (at most 8 + 8 + 5 significant bits: exact)."""
    # negate the integer, not the float: a zero product must be +0, not -0
    negated = (-(np.asarray(codes, dtype=np.int32) + OFFSET_CENTRE) * int(top_level))
    product = negated.astype(np.float32) * np.asarray(scales16, dtype=np.float32)
    return (product / np.float32(OFFSET_DIVISOR)).astype(np.float16)


def _offset_code(offset, scale, top_level):
    """Nearest offset code (float64, unclamped) of offsets for these scales (> 0)."""
    return np.round(-offset * OFFSET_DIVISOR / (top_level * scale)) - OFFSET_CENTRE


def decode(exponents, scale_codes, offset_codes, top_level: int):
    """(offset, scale) float16 (N, G) of a tensor's stored codes; top_level: its grid's.
    ValueError for a row exponent outside -5..15 (a corrupt file: its scales would not be
    exact float16 numbers, or not finite)."""
    exponents = np.asarray(exponents)
    bad = (exponents < EXPONENT_MIN) | (exponents > EXPONENT_MAX)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {row} has scale exponent {int(exponents[row])}, outside "
                         f"{EXPONENT_MIN}..{EXPONENT_MAX} (FORMAT.md §10)")
    scales = decode_scales(exponents, scale_codes)
    return decode_offsets(scales, offset_codes, top_level), scales


def _scale_code(scale, exponents):
    """The code (int64) of the representable scale nearest `scale` (float64 (N, G) > 0),
    clamped to the row's codes 1..255."""
    e = np.asarray(exponents, dtype=np.int64)[:, None]
    x = np.floor(np.log2(scale))  # scale = (1 + f) * 2^x, f in [0, 1)
    mant = np.floor((scale / np.exp2(x) - 1) * 16 + 0.5)
    carry = mant >= 16
    x, mant = np.where(carry, x + 1, x), np.where(carry, 0, mant)
    code = (x - e + 15) * 16 + mant
    return np.clip(code, 1, 255).astype(np.int64)


def snap(offset16, scale16, exponents, top_level: int):
    """(offset, scale) float16 (N, G) representable under `exponents`, near the given ones.

    The scale is the nearest code's; the offset the nearest 128th of the range. A group the
    offset codes cannot reach (its low end more than half its range above zero or 1.49 ranges
    below) gets the smallest larger scale that can; a zero scale (a constant group) becomes the
    smallest scale whose grid holds the constant at its low end, or stays zero for a zero
    group."""
    off = np.asarray(offset16, dtype=np.float64)
    s = np.asarray(scale16, dtype=np.float64)
    zero_group = (s == 0) & (off == 0)
    reach = (OFFSET_MAX + OFFSET_CENTRE) / OFFSET_DIVISOR  # the deepest low end, in ranges
    s = np.where(s == 0, np.abs(off) / (reach * top_level), s)
    s = np.where(s > 0, s, 1.0)
    code = _scale_code(s, exponents)
    for _ in range(256):  # widen the scale of groups whose offset is out of reach
        scale = decode_scales(exponents, code).astype(np.float64)
        o = _offset_code(off, scale, top_level)
        far = ((o < OFFSET_MIN) | (o > OFFSET_MAX)) & (code < 255) & ~zero_group
        if not far.any():
            break
        code = np.where(far, code + 1, code)
    o = np.clip(_offset_code(off, scale, top_level), OFFSET_MIN, OFFSET_MAX)
    code = np.where(zero_group, 0, code)
    o = np.where(zero_group, -OFFSET_CENTRE, o).astype(np.int8)
    scales = decode_scales(exponents, code)
    return decode_offsets(scales, o, top_level), scales


def encode(offset16, scale16, top_level: int):
    """(exponents int8 (N,), scale codes uint8 (N, G), offset codes int8 (N, G)) that decode to
    exactly these float16 parameters; ValueError where no codes do (parameters not made by
    `snap`)."""
    off = np.asarray(offset16, dtype=np.float16)
    scale = np.asarray(scale16, dtype=np.float16)
    s = scale.astype(np.float64)
    nonzero = s > 0
    with np.errstate(divide="ignore"):
        x = np.where(nonzero, np.floor(np.log2(np.where(nonzero, s, 1))), -np.inf)
    top = x.max(axis=1) if x.shape[1] else np.full(x.shape[0], -np.inf)
    exponents = np.clip(np.where(np.isfinite(top), top, EXPONENT_MIN), EXPONENT_MIN,
                        EXPONENT_MAX).astype(np.int8)
    code = np.where(nonzero, _scale_code(np.where(nonzero, s, 1.0), exponents), 0)
    decoded = decode_scales(exponents, code)
    o = _offset_code(off.astype(np.float64), np.where(nonzero, s, 1.0), top_level)
    o = np.where(nonzero, o, -OFFSET_CENTRE)
    in_range = (o >= OFFSET_MIN) & (o <= OFFSET_MAX)
    o = np.clip(o, OFFSET_MIN, OFFSET_MAX).astype(np.int8)
    bad = ((decoded.view(np.uint16) != scale.view(np.uint16)) | ~in_range
           | (decode_offsets(decoded, o, top_level).view(np.uint16) != off.view(np.uint16)))
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"group parameters (offset {float(off[i])}, scale {float(scale[i])}) at "
                         f"{list(i)} have no {COMPACT} codes (FORMAT.md §10)")
    return exponents, code.astype(np.uint8), o
