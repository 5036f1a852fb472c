"""Prompt (prefill) matrix products through torch, for CPUs that multiply bfloat16 in hardware.

The Fortran kernels still dequantize each band of W (fortran/q35_dequantize.f90); only the
multiplication of many activation rows by a dequantized band moves from OpenBLAS's sgemm to
torch's bf16 GEMM (oneDNN), which on AVX512_BF16 (vdpbf16ps) or AMX-BF16 hardware runs about
2.3x sgemm on one core (205 vs 88 GFLOP/s, M = 256, 2048 x 2048, AMD EPYC; docs/RESULTS.md).
bf16 keeps 8 significant bits of every activation and weight and sums in float32; the
perplexity cost is measured in docs/RESULTS.md and the error bound tested in
tests/kernels/test_prompt_gemm_bf16.py.

The attention products of a prompt go through torch too (float32) while this path is on: numpy's
OpenBLAS threads busy-wait for a while after each call and would hold a core that torch's
threads need (measured: 2-thread prefill of the embedded model 236-322 tok/s with attention in
numpy, 465-528 with OpenBLAS kept idle). torch shares the kernels' libgomp (one thread pool).

torch is optional: without it, or without bf16 hardware, prompts use dequantize + sgemm.
`Q35F_PROMPT_GEMM` (q35f.kernels.tensor.PROMPT_GEMM_ENV) chooses: "bf16" (on any CPU; an error
if torch is missing), "float32" (dequantize + sgemm), "int8" (the integer GEMM); unset: bf16
where the CPU has bf16 hardware and torch imports, else float32.
"""

from __future__ import annotations

import functools
import os

import numpy as np

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def hardware_bf16() -> bool:
    """Whether the CPU has bf16 dot-product instructions (AVX512_BF16 or AMX-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


@functools.cache
def _torch():
    """torch with as many intra-op threads as the kernels use, or None where it is missing."""
    try:
        import torch
    except ImportError:
        return None
    threads = os.environ.get("OMP_NUM_THREADS", "")  # set by q35f.kernels.fortran
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    return torch


def torch_available() -> bool:
    """Whether torch imports (the bf16 path can run, with or without bf16 hardware)."""
    return _torch() is not None


def require_torch():
    torch = _torch()
    if torch is None:
        raise RuntimeError("Q35F_PROMPT_GEMM=bf16 needs torch (pip install torch); unset it or "
                           "set Q35F_PROMPT_GEMM=float32 to multiply prompts with sgemm")
    return torch


@functools.cache
def default_on() -> bool:
    """The bf16 path's default: bf16 hardware and an importable torch."""
    return hardware_bf16() and torch_available()


def to_bf16(x: np.ndarray):
    """x (float32) as a torch bf16 tensor (round to nearest even), for gemm_bf16."""
    torch = require_torch()
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)


def gemm_bf16(xb, band: np.ndarray, out: np.ndarray) -> None:
    """out = xb @ band.T with the band rounded to bf16 and float32 sums: xb (M, K) from to_bf16
    (converted once for all bands), band (N, K) float32 (a view is fine), out (M, N) float32
    (may be a column view), written from the bf16 result in one converting copy."""
    torch = require_torch()
    wb = torch.from_numpy(band).to(torch.bfloat16)
    torch.from_numpy(out).copy_(torch.mm(xb, wb.T))


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in float32 through torch (numpy's broadcasting rules for stacked matrices)."""
    torch = require_torch()
    return torch.matmul(torch.from_numpy(np.ascontiguousarray(a)),
                        torch.from_numpy(np.ascontiguousarray(b))).numpy()
