"""The numbers of the format (docs/FORMAT.md), shared by the reference, the kernels and the files."""

from __future__ import annotations

from dataclasses import dataclass

from q35f.format.group_params import COMPACT, FLOAT16

FORMAT_VERSION = 3  # the newest version this q35f reads and writes
ROTATION_VERSION = 2  # the first version with input rotations (FORMAT.md §9)
COMPACT_VERSION = 3  # the first version with one-byte group parameters (FORMAT.md §10)
BLOCK_WEIGHTS = 16  # every format packs weights in blocks of 16 (FORMAT.md §3, §6)
FLOAT16_MAX = 65504.0
MAX_GROUP_SIZE = 1 << 30  # the kernels take int32 arguments


@dataclass(frozen=True)
class Bits:
    """One packed format: its name, the id the Fortran kernels know it by (fortran/q35_blocks.f90),
    bytes per 16-weight block and grid sizes. tests/format/test_constants.py checks that the
    Fortran constants agree with this table."""

    name: str
    format_id: int
    block_bytes: int
    even_levels: int  # levels of the grid of even weights (all weights for int formats)
    odd_levels: int  # levels of the grid of odd weights

    @property
    def payload_bits(self) -> float:
        return 8 * self.block_bytes / BLOCK_WEIGHTS


FORMATS = {
    "q35": Bits("q35", 1, 7, 16, 8),
    "int8": Bits("int8", 2, 16, 256, 256),
    "int4": Bits("int4", 3, 8, 16, 16),
    "int3": Bits("int3", 4, 6, 8, 8),
}


def get_format(bits: str) -> Bits:
    try:
        return FORMATS[bits]
    except (KeyError, TypeError):
        raise ValueError(f"bits must be one of {sorted(FORMATS)}, got {bits!r}") from None


def check_group_size(group_size: int) -> int:
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if not 0 < group_size < MAX_GROUP_SIZE or group_size % BLOCK_WEIGHTS:
        raise ValueError(f"group_size must be a positive multiple of 16 below 2^30, got "
                         f"{group_size}")
    return group_size


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k (weights per row) must be a positive integer, got {k!r}")
    return k


def n_blocks(k: int) -> int:
    return -(-k // BLOCK_WEIGHTS)


def n_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def row_bytes(k: int, bits: str = "q35") -> int:
    return get_format(bits).block_bytes * n_blocks(k)


def bits_per_weight(k: int, group_size: int = 128, bits: str = "q35",
                    group_params: str = FLOAT16) -> float:
    """Exact storage cost of one row of k weights in a file, payload plus the scale and offset
    of every group: two float16, or two bytes and one exponent byte per row ("e4m4", §10)."""
    _check_k(k)
    check_group_size(group_size)
    if group_params == COMPACT:
        return (8 * row_bytes(k, bits) + 16 * n_groups(k, group_size) + 8) / k
    return (8 * row_bytes(k, bits) + 32 * n_groups(k, group_size)) / k


def tensor_nbytes(n: int, k: int, group_size: int = 128, bits: str = "q35") -> int:
    """Bytes of an (n, k) quantized tensor: packed stream plus scales and offsets."""
    return n * (row_bytes(k, bits) + 4 * n_groups(k, group_size))
