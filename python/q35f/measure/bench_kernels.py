"""`q35f bench kernels`: kernel speed as ratios against baselines measured in the same run.

Everything here is measured now, on this machine: the read bandwidth (numpy sum over >= 1 GiB),
OpenBLAS sgemv/sgemm on the same matrix, and each format's fused GEMV, band GEMM and quantizer.
Times are medians of several runs; the CSV keeps the raw median next to each ratio.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

DEFAULT_SHAPE = (28672, 8192)  # Llama-3-70B MLP up/gate projection: (intermediate, hidden)
QUICK_SHAPE = (2048, 1024)
METHODS = ("fp32", "int8", "int4", "q35", "int3")
FIELDS = [
    "benchmark", "method", "shape", "median_s", "runs", "bytes_read", "gb_per_s", "speedup_vs_fp32",
    "fraction_of_read_bandwidth", "weights_per_s", "model", "machine", "date", "q35f_version",
    "source", "formula", "note",
]


def median_time(fn, runs: int) -> float:
    fn()  # warm-up: page faults, thread pool start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(gib: float, runs: int) -> tuple[float, int]:
    """Bytes/s of numpy summing a float32 array of `gib` GiB (too large for any cache)."""
    import numpy as np

    array = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    seconds = median_time(lambda: array.sum(), runs)
    return array.nbytes / seconds, array.nbytes


def run(shape=DEFAULT_SHAPE, group_size=128, runs=5, gemm_rows=256, bandwidth_gib=1.0,
        reference_rows=256, progress=True):
    """Measure everything; returns CSV rows (dicts)."""
    import numpy as np
    from tqdm import tqdm

    import q35f
    from q35f.kernels import reference
    from q35f.measure.machine import honesty

    n, k = shape
    rows = []
    tag = honesty(model=f"random normal W {n}x{k}", source="measured")
    shape_text = f"{n}x{k}"
    bar = tqdm(total=3 + 3 * len(METHODS), disable=not progress, desc="bench kernels", file=sys.stderr)

    bandwidth, nbytes = read_bandwidth(bandwidth_gib, runs)
    rows.append({"benchmark": "read_bandwidth", "method": "numpy.sum", "shape": f"{nbytes} bytes",
                 "median_s": nbytes / bandwidth, "runs": runs, "bytes_read": nbytes,
                 "gb_per_s": bandwidth / 1e9, **tag})
    bar.update()

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    xm = rng.standard_normal((gemm_rows, k)).astype(np.float32)
    fp32_gemv = median_time(lambda: x @ w.T, runs)
    bar.update()
    fp32_gemm = median_time(lambda: xm @ w.T, max(3, runs // 2))
    bar.update()

    for method in METHODS:
        if method == "fp32":
            gemv_s, gemm_s, nbytes, quant_s = fp32_gemv, fp32_gemm, w.nbytes, None
            bar.update(3)
        else:
            quant_s = median_time(lambda: q35f.quantize(w, group_size, method), 3)
            bar.update()
            qt = q35f.quantize(w, group_size, method)
            nbytes = qt.nbytes
            gemv_s = median_time(lambda: q35f.matmul(x, qt), runs)
            bar.update()
            gemm_s = median_time(lambda: q35f.matmul(xm, qt), max(3, runs // 2))
            bar.update()
            del qt
        label = "OpenBLAS sgemv" if method == "fp32" else "fused dequantize-GEMV"
        rows.append({"benchmark": "gemv", "method": method, "shape": shape_text, "median_s": gemv_s,
                     "runs": runs, "bytes_read": nbytes, "gb_per_s": nbytes / gemv_s / 1e9,
                     "speedup_vs_fp32": fp32_gemv / gemv_s,
                     "fraction_of_read_bandwidth": nbytes / gemv_s / bandwidth,
                     "weights_per_s": n * k / gemv_s, **tag, "note": label})
        rows.append({"benchmark": f"gemm_m{gemm_rows}", "method": method, "shape": shape_text,
                     "median_s": gemm_s, "runs": max(3, runs // 2), "bytes_read": nbytes,
                     "speedup_vs_fp32": fp32_gemm / gemm_s,
                     "weights_per_s": n * k / gemm_s, **tag,
                     "note": "OpenBLAS sgemm" if method == "fp32"
                     else "bounded band dequantization + OpenBLAS sgemm"})
        if quant_s is not None:
            rows.append({"benchmark": "quantize", "method": method, "shape": shape_text,
                         "median_s": quant_s, "runs": 3, "weights_per_s": n * k / quant_s,
                         **tag, "note": "Fortran kernel"})

    # The numpy reference is slow: time it on the first reference_rows rows only.
    band = np.ascontiguousarray(w[:reference_rows])
    for method in METHODS[1:]:
        ref_s = median_time(lambda: reference.quantize(band, group_size, method), 3)
        rows.append({"benchmark": "quantize", "method": method, "shape": f"{band.shape[0]}x{k}",
                     "median_s": ref_s, "runs": 3, "weights_per_s": band.size / ref_s, **tag,
                     "note": "numpy reference (first rows only)"})
    bar.close()
    return rows


def print_table(rows, out=sys.stdout):
    bandwidth = next(r for r in rows if r["benchmark"] == "read_bandwidth")["gb_per_s"]
    print(f"read bandwidth (numpy sum): {bandwidth:.1f} GB/s", file=out)
    print(f"{'benchmark':<10} {'method':<6} {'shape':<12} {'median ms':>10} {'GB/s':>7} "
          f"{'x fp32':>7} {'of bw':>6} {'Gweights/s':>10}  note", file=out)
    for r in rows[1:]:
        def fmt(key, spec):
            return format(r[key], spec) if r.get(key) not in (None, "") else ""
        print(f"{r['benchmark']:<10} {r['method']:<6} {r['shape']:<12} "
              f"{r['median_s'] * 1e3:>10.2f} {fmt('gb_per_s', '7.1f'):>7} "
              f"{fmt('speedup_vs_fp32', '7.2f'):>7} {fmt('fraction_of_read_bandwidth', '6.0%'):>6} "
              f"{r['weights_per_s'] / 1e9:>10.3f}  {r.get('note', '')}", file=out)


def write_csv(rows, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in FIELDS})


def handler(args) -> int:
    shape = QUICK_SHAPE if args.quick else tuple(args.shape)
    rows = run(shape=shape, group_size=args.group_size, runs=args.runs,
               gemm_rows=args.gemm_rows, bandwidth_gib=0.25 if args.quick else 1.0,
               reference_rows=64 if args.quick else 256, progress=not args.no_progress)
    print_table(rows)
    if args.csv:
        write_csv(rows, Path(args.csv))
        print(f"wrote {args.csv}")
    return 0


def register_bench(sub) -> None:
    parser = sub.add_parser(
        "kernels",
        help="GEMV/GEMM/quantize speed of every format vs OpenBLAS and the memory bandwidth",
        description="Measure, in one run: the read bandwidth (numpy sum over 1 GiB), fp32 "
        "OpenBLAS sgemv/sgemm and the fused q35/int8/int4/int3 kernels on one weight matrix "
        "(default: a Llama-70B MLP matrix, 28672x8192), and quantization throughput (Fortran "
        "vs the numpy reference). Medians of --runs runs; ratios are against baselines of the "
        "same run.",
    )
    parser.add_argument("--shape", type=int, nargs=2, default=list(DEFAULT_SHAPE),
                        metavar=("N", "K"), help="weight matrix shape (default: %(default)s)")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per median (default 5)")
    parser.add_argument("--gemm-rows", type=int, default=256, help="M of the GEMM (default 256)")
    parser.add_argument("--csv", default="bench/results/kernels.csv",
                        help="CSV to write (default: %(default)s; '' to skip)")
    parser.add_argument("--quick", action="store_true", help=f"small {QUICK_SHAPE} run, for CI")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=handler)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/kernels.py")
    sub = parser.add_subparsers(dest="bench_command", required=True)
    register_bench(sub)
    return handler(parser.parse_args(["kernels", *(argv if argv is not None else sys.argv[1:])]))
