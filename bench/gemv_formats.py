"""Decode GEMV time per call of each block-linear format, one token, in this process:

    OMP_NUM_THREADS=1 python bench/gemv_formats.py [--runs 9 --calls 200]
        [--out bench/results/gemv_formats.csv]

Random standard-normal weights of the embedded model's shapes, quantized as the default recipe
stores them (groups of 64, one-byte e4m4 parameters, rotated inputs), x of one row; the formats
of one shape are timed one after another in the same process (q35, int4, int3: what a mix puts
side by side), each checked against its dequantized matrix first. Per format the median over
`--runs` of the mean time of `--calls` calls of QuantizedTensor.matmul, in microseconds, and
that over q35's in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from q35f.kernels.tensor import quantize
from q35f.paper.data import write_csv

SHAPES = ((576, 576), (1536, 576), (576, 1536), (3072, 576))
FORMATS = ("q35", "int4", "int3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default="bench/results/gemv_formats.csv")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((1, k)).astype(np.float32)
        times = {}
        for bits in FORMATS:
            qt = quantize(w, 64, bits, rotation="hadamard", group_params="e4m4")
            expect = x @ qt.dequantize().T
            np.testing.assert_allclose(qt.matmul(x), expect, rtol=1e-4,
                                       atol=1e-4 * np.abs(expect).max())
            runs = []
            for _ in range(args.runs):
                started = time.perf_counter()
                for _ in range(args.calls):
                    qt.matmul(x)
                runs.append((time.perf_counter() - started) / args.calls * 1e6)
            times[bits] = float(np.median(runs))
            rows.append({"rows": n, "cols": k, "format": bits, "us_per_call": round(times[bits], 2),
                         "vs_q35": round(times[bits] / times["q35"], 3),
                         "threads": os.environ.get("OMP_NUM_THREADS", ""),
                         "note": f"load avg {os.getloadavg()[0]:.1f}; medians of {args.runs} x "
                                 f"{args.calls} calls, G = 64 e4m4, rotated"})
            print(f"{n:5d} x {k:5d} {bits:5s} {times[bits]:8.1f} us  "
                  f"{times[bits] / times['q35']:.2f}x q35", flush=True)
    write_csv(Path(args.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
