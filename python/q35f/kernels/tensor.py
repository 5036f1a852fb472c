"""Quantized tensors: the object a quantized linear layer owns, and the public quantize/matmul.

A QuantizedTensor keeps its bytes in the kernels' tiled layout (FORMAT.md §7) only, so memory is
the format's size; `.packed`, `.scale`, `.offset` give the canonical file layout back on demand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from q35f.kernels import fortran as kernels
from q35f.kernels import torch_matmul
from q35f.format.group_params import COMPACT, FLOAT16, check_group_params, row_exponents
from q35f.format.group_params import encode as encode_group_params
from q35f.format.group_params import snap as snap_group_params
from q35f.format.rotation import can_rotate, check_rotation
from q35f.format.spec import (
    FLOAT16_MAX,
    bits_per_weight,
    check_group_size,
    get_format,
    n_groups,
    row_bytes,
    tensor_nbytes,
)

# Above this many activation rows, dequantize tiles of W into a bounded buffer and use BLAS.
GEMM_MIN_ROWS = 8
# The dequantized tile of W used by the GEMM path never exceeds this many float32 values.
GEMM_BUFFER_FLOATS = 4 * 1024 * 1024
# Formats whose prompt GEMM can run in integers (activations to int8 per group,
# fortran/q35_gemm): at M = 256 1.02-1.20x dequantize + sgemm where K >= 1536, 0.80-0.86x at
# K = 576 (bench/results/prompt_gemm.csv; int3's unpacking made it 0.9x). Opt-in only: with int8
# activations per group of 128 the embedded model's
# perplexity rose by 1.0 % (8 windows, RTN q35; the limit set was 0.5 %) and its prompts ran
# at 269 instead of 293 tok/s (docs/RESULTS.md, "Integer prompt GEMM").
INT8_GEMM_BITS = ("q35", "int8", "int4")
# How prompt GEMMs multiply a dequantized band (q35f.kernels.torch_matmul): "bf16" (torch's bf16
# GEMM), "float32" (OpenBLAS sgemm), "int8" (INT8_GEMM_BITS in integers); unset: bf16 where the
# CPU has bf16 hardware and torch imports, else float32.
PROMPT_GEMMS = ("bf16", "float32", "int8")
PROMPT_GEMM_ENV = "Q35F_PROMPT_GEMM"


@dataclass(frozen=True)
class QuantConfig:
    """How a tensor was quantized; written into a q35f file's metadata per tensor and read back
    (q35f.io.directory). Tensors of equal configs and widths can be stacked row-wise."""

    bits: str = "q35"
    group_size: int = 128
    rotation: str = "none"  # the input rotation (FORMAT.md §9)
    group_params: str = FLOAT16  # how the file stores scales/offsets (FORMAT.md §10)

    def __post_init__(self):
        get_format(self.bits)
        check_group_size(self.group_size)
        check_rotation(self.rotation)
        check_group_params(self.group_params)


class QuantizedTensor:
    """An (N, K) weight matrix in one of the packed formats, with float16 group parameters.

    rotation "hadamard" (FORMAT.md §9): the packed matrix is W' = W R; matmul feeds it R^T x and
    dequantize / take_rows return W's rows, so the tensor still stands for W."""

    def __init__(self, tiles, scale_tiles, offset_tiles, shape, group_size, bits,
                 rotation="none", group_params=FLOAT16):
        """From the kernels' tiled arrays (see tile_arrays); each is checked against shape,
        group_size and bits, since the kernels read exactly what these imply."""
        get_format(bits)
        check_group_size(group_size)
        n, k = _check_shape(shape)
        _check_rotation(rotation, k, group_size)
        n_tiles = -(-n // kernels.TILE_ROWS)
        groups = n_groups(k, group_size)
        _expect(tiles, "tiles", np.uint8, (n_tiles, row_bytes(k, bits), kernels.TILE_ROWS))
        _expect(scale_tiles, "scale_tiles", np.int16, (n_tiles, groups, kernels.TILE_ROWS))
        _expect(offset_tiles, "offset_tiles", np.int16, (n_tiles, groups, kernels.TILE_ROWS))
        for name, array in (("tiles", tiles), ("scale_tiles", scale_tiles),
                            ("offset_tiles", offset_tiles)):
            if not (array.flags.c_contiguous and array.flags.aligned):
                raise ValueError(f"{name} must be C-contiguous and aligned (the kernels read it "
                                 "in place)")
        self._tiles = tiles  # uint8 (n_tiles, row_bytes, TILE_ROWS), C order
        self._scale_tiles = scale_tiles  # int16 bits of float16 (n_tiles, groups, TILE_ROWS)
        self._offset_tiles = offset_tiles
        self.shape = (n, k)
        self.group_size = group_size
        self.bits = bits
        self.rotation = rotation
        # "e4m4": every scale/offset pair has one-byte codes (FORMAT.md §10), so a file can
        # store it so; in memory the kernels read float16 either way.
        self.group_params = check_group_params(group_params)

    # construction

    @classmethod
    def from_packed(cls, packed, scale, offset, shape, group_size=128, bits="q35",
                    rotation="none", group_params=FLOAT16):
        """Wrap the canonical file layout (e.g. read from safetensors); checks every shape."""
        fmt = get_format(bits)
        check_group_size(group_size)
        n, k = _check_shape(shape)
        _check_rotation(rotation, k, group_size)
        _expect(packed, "packed", np.uint8, (n, row_bytes(k, bits)))
        _expect(scale, "scale", np.float16, (n, n_groups(k, group_size)))
        _expect(offset, "offset", np.float16, (n, n_groups(k, group_size)))
        for name, params in (("scale", scale), ("offset", offset)):
            bad = ~np.isfinite(params) | ((params < 0) if name == "scale" else False)
            if bad.any():
                index = [int(i) for i in np.unravel_index(np.flatnonzero(bad)[0], params.shape)]
                raise ValueError(f"{name} holds {params[tuple(index)]} at index {index}: "
                                 f"{name}s must be finite{' and >= 0' if name == 'scale' else ''}")
        del fmt
        return cls(
            kernels.packed_to_tiles(packed, bits),
            kernels.tile_rows(scale.view(np.int16)),
            kernels.tile_rows(offset.view(np.int16)),
            (n, k),
            group_size,
            bits,
            rotation,
            group_params,
        )

    def as_rotated(self, rotation: str = "hadamard") -> "QuantizedTensor":
        """The same packed arrays (no copy) declared as W' = W R of that rotation: for a
        quantizer that rotated W itself (q35f.quantization.recipe)."""
        return QuantizedTensor(self._tiles, self._scale_tiles, self._offset_tiles, self.shape,
                               self.group_size, self.bits, rotation, self.group_params)

    def with_group_params(self, group_params: str) -> "QuantizedTensor":
        """The same arrays (no copy) declared storable with those group parameters; "e4m4"
        is checked: every pair must have its codes (FORMAT.md §10)."""
        if check_group_params(group_params) == COMPACT:
            # raises where a pair has no codes
            encode_group_params(self.offset, self.scale, get_format(self.bits).even_levels - 1)
        return QuantizedTensor(self._tiles, self._scale_tiles, self._offset_tiles, self.shape,
                               self.group_size, self.bits, self.rotation, group_params)

    @property
    def rotated(self) -> bool:
        return self.rotation != "none"

    @property
    def tile_arrays(self):
        """What the kernels read (FORMAT.md §7), C order: packed bytes uint8 (n_tiles, row_bytes,
        TILE_ROWS) and the float16 bits of scales and offsets int16 (n_tiles, groups, TILE_ROWS)."""
        return self._tiles, self._scale_tiles, self._offset_tiles

    # canonical views

    @property
    def packed(self) -> np.ndarray:
        return kernels.tiles_to_packed(self._tiles, self.shape[0], bits=self.bits)

    @property
    def scale(self) -> np.ndarray:
        return kernels.untile_rows(self._scale_tiles, self.shape[0]).view(np.float16)

    @property
    def offset(self) -> np.ndarray:
        return kernels.untile_rows(self._offset_tiles, self.shape[0]).view(np.float16)

    @property
    def config(self) -> QuantConfig:
        return QuantConfig(self.bits, self.group_size, self.rotation, self.group_params)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight as a file stores it (with its group parameters)."""
        return bits_per_weight(self.shape[1], self.group_size, self.bits, self.group_params)

    @property
    def nbytes(self) -> int:
        """Bytes in memory: packed stream plus float16 scales and offsets (compact group
        parameters are decoded at load)."""
        return tensor_nbytes(*self.shape, self.group_size, self.bits)

    def __repr__(self):
        n, k = self.shape
        return (
            f"QuantizedTensor(shape=({n}, {k}), bits={self.bits!r}, group_size={self.group_size}, "
            + (f"rotation={self.rotation!r}, " if self.rotated else "")
            + f"bits_per_weight={self.bits_per_weight:.4f})"
        )

    # operations

    def dequantize(self) -> np.ndarray:
        """float32 (N, K); materialises the whole matrix, so meant for tests and export."""
        n, k = self.shape
        out = kernels.dequantize_tiles(self, 0, self._tiles.shape[0])
        return self._unrotated(np.ascontiguousarray(out[:n, :k]))

    def _unrotated(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows (of W R) back to W's."""
        if not self.rotated:
            return rows
        return kernels.rotate_rows(rows, self.group_size, inverse=True)

    def take_rows(self, ids) -> np.ndarray:
        """float32 (len(ids), K): selected rows only (an embedding lookup), via their tiles."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be a 1-D integer array, got {ids.dtype.name} {ids.shape}")
        n, k = self.shape
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"ids must lie in [0, {n}), got {ids.min()}..{ids.max()}")
        out = np.empty((ids.size, k), dtype=np.float32)
        tiles, where = np.unique(ids // kernels.TILE_ROWS, return_inverse=True)
        for i, tile in enumerate(tiles):
            band = kernels.dequantize_tiles(self, int(tile), 1)
            mine = where == i
            out[mine] = band[ids[mine] % kernels.TILE_ROWS, :k]
        return self._unrotated(out)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return matmul(x, self)


def _check_shape(shape) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape):
        raise TypeError(f"shape must be two integers (N, K), got {shape!r}")
    n, k = (int(v) for v in shape)
    if n <= 0 or k <= 0:
        raise ValueError(f"shape must be positive, got {(n, k)}")
    return n, k


def _check_rotation(rotation, k: int, group_size: int) -> None:
    check_rotation(rotation)
    if rotation != "none" and not can_rotate(k, group_size):
        raise ValueError(f"rotation {rotation!r} needs power-of-two group lengths; rows of {k} "
                         f"weights in groups of {group_size} have others")


def _expect(array, name, dtype, shape):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {array.dtype.name}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")


def _check_float32(array, name: str) -> None:
    """A native-endian, aligned float32 ndarray: what the kernels read without a copy."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise TypeError(f"{name} must be float32, got {array.dtype.name} (convert explicitly)")
    if not array.dtype.isnative:
        raise TypeError(f"{name} must be native-endian float32, got byte-swapped "
                        f"{array.dtype.str} (convert with {name}.astype(np.float32))")
    if not array.flags.aligned:
        raise ValueError(f"{name} is not aligned to 4 bytes (a view at an odd byte offset); "
                         f"pass an aligned copy, np.array({name})")


def quantize(w: np.ndarray, group_size: int = 128, bits: str = "q35", clip_search: bool = False,
             params=None, importance=None, rotation: str = "none",
             group_params: str = FLOAT16) -> QuantizedTensor:
    """Quantize a float32 (N, K) matrix row by row in groups of `group_size` (FORMAT.md §4, §6).

    clip_search: choose each group's parameters among shrunken ranges by least squared error
    (q35_clip) instead of raw min/max. params: (offset, scale) float16 (N, groups) to use as
    given; levels are then computed per §4 from them, clamped (for error feedback, q35f.quantization.gptq).
    importance: (K,) non-negative weights of each column's squared error in the clip search
    (e.g. E[x^2] of the layer's inputs on calibration text); default all 1.
    rotation: "hadamard" quantizes W R instead (FORMAT.md §9); params and importance then
    belong to the rotated columns.
    group_params: "e4m4" (FORMAT.md §10) snaps the parameters chosen (or given) to one-byte
    codes and computes the levels from the snapped ones.
    """
    get_format(bits)
    check_group_size(group_size)
    _check_float32(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {w.shape}")
    _check_rotation(rotation, w.shape[1], group_size)
    if w.size == 0:
        raise ValueError(f"w must not be empty, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("w contains NaN or Inf")
    if rotation != "none":
        w = kernels.rotate_rows(w, group_size)
    if np.abs(w).max() > FLOAT16_MAX:
        raise ValueError(f"w has |values| above {FLOAT16_MAX}, the float16 range of offsets")
    if params is not None:
        if not isinstance(params, tuple) or len(params) != 2:
            raise TypeError("params must be a tuple (offset, scale) of float16 arrays")
        offset, scale = params
        groups = (w.shape[0], n_groups(w.shape[1], group_size))
        _expect(offset, "params offset", np.float16, groups)
        _expect(scale, "params scale", np.float16, groups)
        if not (np.isfinite(offset).all() and np.isfinite(scale).all()) or (scale < 0).any():
            raise ValueError("params must be finite, with scales >= 0")
        tiles, scales, offsets = kernels.quantize_rows_clip(
            w, group_size, bits, False, scale=scale, offset=offset)
    elif clip_search:
        if importance is not None:
            importance = np.asarray(importance)
            if importance.shape != (w.shape[1],):
                raise ValueError(f"importance must have shape ({w.shape[1]},), got "
                                 f"{importance.shape}")
            if not (np.isfinite(importance).all() and (importance >= 0).all()):
                raise ValueError("importance must be finite and non-negative")
        tiles, scales, offsets = kernels.quantize_rows_clip(w, group_size, bits, True,
                                                            importance=importance)
    elif importance is not None:
        raise ValueError("importance is used only by the clip search (clip_search=True)")
    else:
        tiles, scales, offsets = kernels.quantize_rows(w, group_size, bits)
    qt = QuantizedTensor(tiles, scales, offsets, w.shape, group_size, bits, rotation)
    if check_group_params(group_params) == FLOAT16:
        return qt
    top = get_format(bits).even_levels - 1
    offset, scale = snap_group_params(qt.offset, qt.scale, row_exponents(w, top), top)
    tiles, scales, offsets = kernels.quantize_rows_clip(w, group_size, bits, False, scale=scale,
                                                        offset=offset)
    return QuantizedTensor(tiles, scales, offsets, w.shape, group_size, bits, rotation,
                           group_params)


def matmul(x: np.ndarray, qt: QuantizedTensor) -> np.ndarray:
    """y = x @ W.T for x of shape (M, K) (or (K,)), float32; W never materialised whole."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    _check_float32(x, "x")
    vector = x.ndim == 1
    x2 = x[None, :] if vector else x
    if x2.ndim != 2:
        raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
    n, k = qt.shape
    if x2.shape[1] != k:
        raise ValueError(f"x has {x2.shape[1]} features but the weight expects {k}")
    if x2.shape[0] == 0:
        raise ValueError("x must have at least one row")
    if qt.rotated:  # W x = (W R)(R^T x): the stored matrix takes the rotated input
        x2 = kernels.rotate_rows(x2, qt.group_size)
    if x2.shape[0] < GEMM_MIN_ROWS:
        y = kernels.gemv(x2, qt)
    else:
        # The integer path returns None when x holds a NaN or an infinity (no int8 carries it).
        y = kernels.gemm_int8(x2, qt) if _integer_gemm(qt) else None
        if y is None:
            y = _gemm_by_tiles(x2, qt, bf16=prompt_gemm() == "bf16")
    return y[0] if vector else y


def prompt_gemm() -> str:
    """The prompt GEMM in use (PROMPT_GEMMS), from PROMPT_GEMM_ENV or the machine's default."""
    chosen = os.environ.get(PROMPT_GEMM_ENV, "")
    if chosen:
        if chosen not in PROMPT_GEMMS:
            raise ValueError(f"{PROMPT_GEMM_ENV} must be one of {list(PROMPT_GEMMS)}, got "
                             f"{chosen!r}")
        return chosen
    return "bf16" if torch_matmul.default_on() else "float32"


def _integer_gemm(qt) -> bool:
    """Whether qt's prompt GEMM runs in integers (asked for, INT8_GEMM_BITS, int32-safe groups)."""
    return (prompt_gemm() == "int8" and qt.bits in INT8_GEMM_BITS
            and qt.group_size <= kernels.max_group_weights(qt.bits))


def _gemm_by_tiles(x, qt, bf16: bool = False):
    """Prefill: dequantize a bounded band of rows at a time and let a BLAS multiply it (bf16:
    torch's bf16 GEMM, q35f.kernels.torch_matmul; else OpenBLAS sgemm)."""
    n, k = qt.shape
    tile_rows = kernels.TILE_ROWS
    n_tiles = qt._tiles.shape[0]
    tiles_per_band = max(1, GEMM_BUFFER_FLOATS // (tile_rows * k))
    y = np.empty((x.shape[0], n), dtype=np.float32)
    xb = torch_matmul.to_bf16(x) if bf16 else None
    buffer = None
    for first in range(0, n_tiles, tiles_per_band):
        count = min(tiles_per_band, n_tiles - first)
        buffer = kernels.dequantize_tiles(qt, first, count, out=buffer)
        rows = slice(first * tile_rows, min(n, (first + count) * tile_rows))
        band = buffer[: rows.stop - rows.start, :k]
        if bf16:
            torch_matmul.gemm_bf16(xb, band, y[:, rows])
        else:
            np.matmul(x, band.T, out=y[:, rows])
    return y
