"""Symmetric group parameters: a grid centred on zero, offset = -(top/2) * scale (for q35,
top = 15: offset = -7.5 scale), for the ablation of asymmetric vs symmetric grids.

A symmetric format would store only the scale; q35 stores both, so a symmetric q35 file keeps
the offset as the float16 nearest to -(top/2) * scale (nearly, not exactly, centred). The
search over shrunken ranges weighs each column's squared error by `importance`, like the
asymmetric clip search (q35f.quantize(clip_search=True)).
"""

from __future__ import annotations

import numpy as np

from q35f.format.spec import get_format
from q35f.kernels import reference

SHRINKS = np.linspace(1.0, 0.5, 11, dtype=np.float32)  # candidate fractions of max |w|


def symmetric_scale(max_abs, top_level: int):
    """Smallest float16 scale s (as float32) with (top/2) s >= max_abs."""
    half = np.float32(top_level) / np.float32(2)
    m = np.asarray(max_abs, dtype=np.float32)
    scale = reference.f16_round_up(m / half)
    while True:
        short = half * scale < m
        if not short.any():
            return scale
        bumped = np.nextafter(scale.astype(np.float16), np.float16(np.inf)).astype(np.float32)
        scale = np.where(short, bumped, scale)


def dequantize_group(w, offset, scale, bits: str = "q35"):
    """Grid values of one group's columns w (N, g) under per-row offset, scale (N,) float32;
    column 0 is an even weight position (groups start at multiples of 16)."""
    fmt = get_format(bits)
    w = np.asarray(w, dtype=np.float32)
    offset = np.asarray(offset, dtype=np.float32)[:, None]
    scale = np.asarray(scale, dtype=np.float32)[:, None]
    out = np.empty_like(w)
    odd_step = reference.step3(scale) if fmt.name == "q35" else scale
    for cols, step, count in ((slice(0, None, 2), scale, fmt.even_levels),
                              (slice(1, None, 2), odd_step, fmt.odd_levels)):
        lv = reference.to_levels(w[:, cols], offset, step, count)
        out[:, cols] = offset + step * lv.astype(np.float32)
    return out


def symmetric_parameters(w, bits: str = "q35", search: bool = True, importance=None):
    """float16 offset, scale (N,) of one group w (N, g): the symmetric range of max |w| per row,
    or (search) the shrink in SHRINKS of least importance-weighted squared error."""
    fmt = get_format(bits)
    top = fmt.even_levels - 1
    w = np.asarray(w, dtype=np.float32)
    m = np.abs(w).max(axis=1)
    weight = (np.ones(w.shape[1], np.float32) if importance is None
              else np.asarray(importance, dtype=np.float32))
    best_scale = symmetric_scale(m, top)
    if search:
        best_err = np.full(w.shape[0], np.inf)
        for shrink in SHRINKS:
            scale = symmetric_scale(m * shrink, top)
            offset = (np.float32(-top / 2) * scale).astype(np.float16).astype(np.float32)
            err = (((w - dequantize_group(w, offset, scale, bits)) ** 2) * weight).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, scale, best_scale)
    offset = (np.float32(-top / 2) * best_scale).astype(np.float16)
    return offset, best_scale.astype(np.float16)
