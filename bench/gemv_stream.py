"""GEMV streaming rate out of cache, as decode reads the weights: the four matrices of 22
distinct TinyLlama-1.1B-shaped blocks (q/k/v fused 2560x2048, o 2048x2048, gate/up fused
11264x2048, down 2048x5632), one GEMV each in turn, in the format given, as GB/s of tile bytes.
Threads as q35f sets them (OMP_NUM_THREADS to choose), e.g.

    OMP_NUM_THREADS=1 python bench/gemv_stream.py
    OMP_NUM_THREADS=2 python bench/gemv_stream.py --bits int4
"""

import argparse
import os
import time

import numpy as np

from q35f.kernels import fortran
from q35f.kernels.tensor import QuantizedTensor, quantize

SHAPES = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", default="q35", choices=["q35", "int8", "int4", "int3"])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    one_block = [quantize(rng.standard_normal(s, dtype=np.float32), 128, args.bits)
                 for s in SHAPES]
    # distinct copies of the packed bytes, so nothing stays in cache from one block to the next
    def copy(a):  # in memory like the model's own tiles (huge pages, fortran.tile_rows)
        out = fortran.huge_page_array(a.shape, a.dtype)
        out[...] = a
        return out

    weights = [QuantizedTensor(*(copy(a) for a in qt.tile_arrays), qt.shape, qt.group_size,
                               qt.bits)
               for _ in range(args.layers) for qt in one_block]
    xs = {k: rng.standard_normal((1, k), dtype=np.float32) for k in {s[1] for s in SHAPES}}
    nbytes = sum(sum(a.nbytes for a in qt.tile_arrays) for qt in weights)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        for qt in weights:
            fortran.gemv(xs[qt.shape[1]], qt)
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"{args.bits}: {args.layers} blocks, {nbytes / 1e6:.0f} MB, best of {args.runs} "
          f"{best * 1e3:.1f} ms = {nbytes / best / 1e9:.1f} GB/s  "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load "
          f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
