"""The q35 GEMV of the default file layout against the version 1 layout, in one run.

Version 1 (and 2) files hold float16 scales and offsets per group of 128; the default since
session 11 is groups of 64 with one-byte "e4m4" parameters (docs/FORMAT.md §10), which a reader
decodes at load to float16, so the kernel reads twice as many (float16) parameters. This times
`QuantizedTensor.matmul` on one token (the decode GEMV) for both, interleaved, on random weights
of real shapes (TinyLlama-1.1B's MLP and SmolLM2-135M's), medians of --runs rounds, with the load
average before and after. Usage:

    python bench/gemv_group_params.py [--runs 15] [--threads 2] [--out bench/results/gemv_group_params.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = [(5632, 2048), (2048, 5632), (1536, 576), (576, 1536), (16384, 8192)]
LAYOUTS = {"v1 G=128 float16": (128, "float16"), "v3 G=64 e4m4": (64, "e4m4")}


def _tensor(w, group_size, group_params):
    from q35f.kernels.tensor import quantize

    return quantize(w, group_size, "q35", group_params=group_params)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: q35f's)")
    p.add_argument("--out", default="bench/results/gemv_group_params.csv")
    args = p.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        x = rng.standard_normal((1, k)).astype(np.float32)
        tensors = {name: _tensor(w, *layout) for name, layout in LAYOUTS.items()}
        reps = max(3, int(2e8 / (n * k)))
        times = {name: [] for name in tensors}
        load_before = os.getloadavg()[0]
        for _ in range(args.runs):
            for name, qt in tensors.items():
                started = time.perf_counter()
                for _ in range(reps):
                    qt.matmul(x)
                times[name].append((time.perf_counter() - started) / reps)
        load_after = os.getloadavg()[0]
        base = float(np.median(times["v1 G=128 float16"]))
        for name, qt in tensors.items():
            median = float(np.median(times[name]))
            rows.append({"shape": f"{n}x{k}", "layout": name,
                         "file_bits_per_weight": round(qt.bits_per_weight, 4),
                         "median_ms": round(median * 1e3, 4), "speed_vs_v1": round(base / median, 3),
                         "runs": args.runs, "calls_per_run": reps,
                         "load_avg_1m": f"{load_before:.2f} -> {load_after:.2f}"})
            print(rows[-1], file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
