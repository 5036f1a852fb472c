"""The input rotation of FORMAT.md §9: which tensors can carry one, and the column signs.

A rotated tensor stores W' = W R, R block-diagonal with one D H / sqrt(n) per group of n input
columns (D the columns' signs below, H Sylvester's Hadamard matrix). Every output is unchanged,
W x = W' (R^T x), but each group's weights are spread evenly over it: a rotated group has no
outliers for its scale and offset to stretch over. The runtime rotates each input, O(K log K)
per token (fortran/q35_rotate.f90).
"""

from __future__ import annotations

import numpy as np

ROTATIONS = ("none", "hadamard")


def check_rotation(rotation: str) -> str:
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {list(ROTATIONS)}, got {rotation!r}")
    return rotation


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def can_rotate(k: int, group_size: int) -> bool:
    """Whether rows of k weights in groups of group_size take the rotation: every group, the
    shorter last one included, must have a power-of-two length (H exists for those only)."""
    tail = k % group_size
    return _power_of_two(group_size) and (tail == 0 or _power_of_two(tail))


def column_signs(k: int) -> np.ndarray:
    """float32 (k,): D's diagonal, +1 or -1 per input column c = 0..k-1, the lowest bit of
    murmur3's 32-bit finaliser of c (set: -1). Fixed, so a file stores no signs, and the same for
    every tensor with k inputs (q/k/v, and gate/up, share their input rotation)."""
    h = np.arange(k, dtype=np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & mask
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & mask
    h ^= h >> np.uint64(16)
    return np.where(h & np.uint64(1), -1.0, 1.0).astype(np.float32)
