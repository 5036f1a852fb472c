"""Error feedback (GPTQ, Frantar et al. 2022) on the mixed 4/3-bit q35 grid.

Columns of W (N, K) are quantized in order; the error of column k, divided by the k-th diagonal
of the upper Cholesky factor U of H^-1 (H = X^T X + damping, from calibration), is pushed onto
the not yet quantized columns through row k of U, which minimises the layer's output error
||X (W - Q)||^2 column by column. The grid of column k is the 4-bit one for even k and the 3-bit
one for odd k (FORMAT.md §2, §4). A group's float16 parameters are chosen when the group is
reached, from its current (already updated) weights: by min/max (§4) or by the clip search.

The result is an ordinary QuantizedTensor: the levels are those of §4 computed from the stored
parameters on the updated weights (`q35f.quantize(..., params=...)`). With compact group
parameters (§10) each group's parameters are snapped to their one-byte codes before its columns
are rounded. Rows are independent, so a layer can be processed a band of rows at a time; memory
is O(N K + K^2).
"""

from __future__ import annotations

import numpy as np

from q35f.format.group_params import COMPACT, FLOAT16, check_group_params, row_exponents, snap
from q35f.format.spec import get_format, n_groups
from q35f.kernels import reference

# 0.01 until session 9, 0.05 until session 11 (measured better with and without the rotation);
# 0.1 with groups of 64 and e4m4 parameters: KL 0.187 / 0.169 -> 0.185 / 0.166 over 64 windows,
# 0.186 / 0.163 -> 0.184 / 0.157 over 16 (P&P / pydoc; docs/RESULTS.md "Session 11");
# 0.2 with the coarse-first order and the kv4-q3 mix: KL 0.164 / 0.151 (0.05), 0.161 / 0.149
# (0.1), 0.159 / 0.149 (0.2) over 64 windows (docs/RESULTS.md "Session 12")
DEFAULT_DAMPING = 0.2


ORDERS = ("natural", "coarse-first")


def column_order(k: int, bits: str, order: str = "natural"):
    """The order GPTQ quantizes the K columns in, or None for 0..K-1.

    "coarse-first" on q35: every odd (3-bit) column, then every even (4-bit) one, so the finer
    grid's columns, quantized last, absorb the coarser grid's errors and not the other way
    round (layer output error -14 % on the embedded model's layers, docs/RESULTS.md "Session
    12"); the int formats have one grid, so their order stays natural."""
    if order not in ORDERS:
        raise ValueError(f"GPTQ order must be one of {list(ORDERS)}, got {order!r}")
    if order == "natural" or get_format(bits).name != "q35":
        return None
    cols = np.arange(k)
    return np.concatenate([cols[1::2], cols[0::2]])


def inverse_hessian_factor(hessian: np.ndarray, damping: float = DEFAULT_DAMPING,
                           order=None) -> np.ndarray:
    """Upper Cholesky factor U (float64) of (H + damping * mean(diag H) * I)^-1, U^T U = H^-1,
    with H's rows and columns taken in `order` (column_order) if given.

    Channels never active in calibration get a unit diagonal (their error costs nothing)."""
    h = np.array(hessian, dtype=np.float64, copy=True)
    if order is not None:
        h = h[np.ix_(order, order)]
    k = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    diag = np.diag(h)
    h[np.diag_indices(k)] += damping * diag.mean()
    # One Cholesky: reversing the order (J H J = M M^T) gives H = R R^T with R = J M J upper,
    # so U = R^-1 is upper and U^T U = R^-T R^-1 = H^-1.
    r = np.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1]
    return np.ascontiguousarray(np.triu(np.linalg.inv(r)))


def _group_parameters(block: np.ndarray, group_size: int, bits: str, clip_search: bool,
                      importance=None, symmetric: bool = False):
    """float16 offset, scale (N,) of one group's current weights."""
    from q35f.kernels.tensor import quantize

    if symmetric:
        from q35f.quantization.symmetric import symmetric_parameters

        return symmetric_parameters(block, bits, search=clip_search, importance=importance)
    qt = quantize(np.ascontiguousarray(block), group_size, bits, clip_search=clip_search,
                  importance=importance)
    return qt.offset[:, 0], qt.scale[:, 0]


def gptq_quantize(w: np.ndarray, factor: np.ndarray, group_size: int = 128, bits: str = "q35",
                  clip_search: bool = False, importance=None, symmetric: bool = False,
                  group_params: str = FLOAT16, order=None):
    """QuantizedTensor of w (N, K) float32 by error feedback with U = inverse_hessian_factor(H,
    order=order), the columns taken in `order` (column_order; None = 0..K-1);
    importance (K,): the clip search's column weights (see q35f.quantize); symmetric: group
    ranges centred on zero (q35f.quantization.symmetric, the ablation's symmetric grid);
    group_params "e4m4": each group's parameters snapped to one-byte codes (FORMAT.md §10)
    before its columns are rounded, so the error feedback also absorbs the snapping.

    A group's parameters are chosen when the first of its columns is reached, from all its
    columns' current (already updated) weights; in the natural order that is the group's start."""
    from q35f.kernels.tensor import quantize

    fmt = get_format(bits)
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    if factor.shape != (k, k):
        raise ValueError(f"the Hessian factor must be ({k}, {k}), got {factor.shape}")
    order = np.arange(k) if order is None else np.asarray(order)
    if order.shape != (k,) or not np.array_equal(np.sort(order), np.arange(k)):
        raise ValueError(f"order must be a permutation of the {k} columns")
    position = np.empty(k, dtype=np.int64)
    position[order] = np.arange(k)
    u = factor.astype(np.float32)
    work = w[:, order]  # in GPTQ's order, updated by the errors of the columns before them
    rounded_input = np.empty_like(work)  # each column as it was when quantized
    groups = n_groups(k, group_size)
    check_group_params(group_params)
    exponents = row_exponents(w, fmt.even_levels - 1) if group_params == COMPACT else None
    offsets = np.empty((n, groups), dtype=np.float16)
    scales = np.empty((n, groups), dtype=np.float16)
    chosen = np.zeros(groups, dtype=bool)
    # per group, as float32 once: the offset, the even and the odd grid's step
    offsets32 = np.empty((n, groups), dtype=np.float32)
    steps = np.empty((n, groups, 2), dtype=np.float32)

    def choose(g):
        first, last = g * group_size, min((g + 1) * group_size, k)
        current = np.ascontiguousarray(work[:, position[first:last]])  # in column order
        off16, scale16 = _group_parameters(
            current, group_size, bits, clip_search,
            None if importance is None else importance[first:last], symmetric)
        if exponents is not None:
            off16, scale16 = snap(off16[:, None], scale16[:, None], exponents,
                                  fmt.even_levels - 1)
            off16, scale16 = off16[:, 0], scale16[:, 0]
        offsets[:, g], scales[:, g] = off16, scale16
        offsets32[:, g] = off16
        scale = scale16.astype(np.float32)
        steps[:, g, 0] = scale
        steps[:, g, 1] = reference.step3(scale) if fmt.name == "q35" else scale
        chosen[g] = True

    # The errors reach the columns of the same chunk one by one, later chunks at once (GEMM).
    for first in range(0, k, group_size):
        last = min(first + group_size, k)
        block = work[:, first:last]  # a view: updated in place below
        errors = np.empty((n, last - first), dtype=np.float32)
        for i in range(last - first):
            c = int(order[first + i])
            g = c // group_size
            if not chosen[g]:
                choose(g)
            odd = c % 2
            step, offset = steps[:, g, odd], offsets32[:, g]
            col = block[:, i]
            count = fmt.odd_levels if odd else fmt.even_levels
            q = offset + step * reference.to_levels(col, offset, step, count).astype(np.float32)
            rounded_input[:, first + i] = col
            err = (col - q) / u[first + i, first + i]
            errors[:, i] = err
            block[:, i + 1:] -= np.outer(err, u[first + i, first + i + 1:last])
        if last < k:
            work[:, last:] -= errors @ u[first:last, last:]
    qt = quantize(rounded_input[:, position], group_size, bits, params=(offsets, scales))
    return qt if group_params == FLOAT16 else qt.with_group_params(group_params)


def output_error(w: np.ndarray, q: np.ndarray, hessian: np.ndarray) -> float:
    """||X (W - Q)^T||_F^2 = trace((W - Q) H (W - Q)^T) with H = X^T X."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", d, hessian, d))
