"""`q35f bench kernels`: kernel speed as ratios against baselines measured in the same run.

Everything here is measured now, on this machine: the read bandwidth (numpy sum over >= 1 GiB),
OpenBLAS sgemv/sgemm on the same matrix, and each format's fused GEMV, band GEMM and quantizer.
Times are medians of several runs; each kernel's float baseline is measured just before and just
after it, so a ratio compares medians taken over the same stretch of time (on a shared machine the
load moves; the 1-minute load average is recorded next to every row). The CSV keeps the raw
medians next to each ratio.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

DEFAULT_SHAPE = (28672, 8192)  # Llama-3-70B MLP up/gate projection: (intermediate, hidden)
QUICK_SHAPE = (2048, 1024)
# TinyLlama-1.1B's matrices (q/o, gate/up, down): the prompt GEMM is also measured on these.
TINYLLAMA_SHAPES = ((2048, 2048), (5632, 2048), (2048, 5632))
KERNELS_CSV = "bench/results/kernels.csv"
PROMPT_GEMM_CSV = "bench/results/prompt_gemm.csv"  # --prompt-gemm's default
# The prompt GEMM comparison (--prompt-gemm): SmolLM2-135M's and TinyLlama-1.1B's matrices.
PROMPT_GEMM_SHAPES = ((576, 576), (1536, 576), (576, 1536)) + TINYLLAMA_SHAPES
METHODS = ("fp32", "int8", "int4", "q35", "int3")
FIELDS = [
    "benchmark", "method", "shape", "median_s", "runs", "bytes_read", "gb_per_s", "speedup_vs_fp32",
    "fraction_of_read_bandwidth", "weights_per_s", "baseline_median_s", "load_average", "model",
    "machine", "date", "q35f_version", "source", "formula", "note",
]


def median_time(fn, runs: int) -> float:
    fn()  # warm-up: page faults, thread pool start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(fn, baseline, runs: int) -> tuple[float, float]:
    """Median of fn and of its baseline measured just before and just after it (runs each).

    Calls are not interleaved one by one: OpenMP's and OpenBLAS's worker threads both spin for
    a while after a parallel region, so alternating the two pools call by call measures their
    fight for the cores rather than either kernel.
    """
    before = median_time(baseline, runs)
    seconds = median_time(fn, runs)
    after = median_time(baseline, runs)
    return seconds, (before + after) / 2


def load_average() -> float:
    return os.getloadavg()[0]


def read_bandwidth(gib: float, runs: int) -> tuple[float, int]:
    """Bytes/s of numpy summing a float32 array of `gib` GiB (too large for any cache)."""
    import numpy as np

    array = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    seconds = median_time(lambda: array.sum(), runs)
    return array.nbytes / seconds, array.nbytes


def run(shape=DEFAULT_SHAPE, group_size=128, runs=5, gemm_rows=256, bandwidth_gib=1.0,
        reference_rows=256, gemm_shapes=(), progress=True):
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
    gemm_runs = max(3, runs // 2)
    bar = tqdm(total=1 + 3 * (len(METHODS) - 1) + len(gemm_shapes), disable=not progress,
               desc="bench kernels", file=sys.stderr)

    bandwidth, nbytes = read_bandwidth(bandwidth_gib, runs)
    rows.append({"benchmark": "read_bandwidth", "method": "numpy.sum", "shape": f"{nbytes} bytes",
                 "median_s": nbytes / bandwidth, "runs": runs, "bytes_read": nbytes,
                 "gb_per_s": bandwidth / 1e9, "load_average": load_average(), **tag})
    bar.update()

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    xm = rng.standard_normal((gemm_rows, k)).astype(np.float32)
    sgemv = lambda: x @ w.T  # noqa: E731
    sgemm = lambda: xm @ w.T  # noqa: E731

    def gemv_row(method, seconds, base, nbytes, note):
        return {"benchmark": "gemv", "method": method, "shape": shape_text, "median_s": seconds,
                "runs": runs, "bytes_read": nbytes, "gb_per_s": nbytes / seconds / 1e9,
                "speedup_vs_fp32": base / seconds,
                "fraction_of_read_bandwidth": nbytes / seconds / bandwidth,
                "weights_per_s": n * k / seconds, "baseline_median_s": base,
                "load_average": load_average(), **tag, "note": note}

    def gemm_row(method, text, weights, seconds, base, note):
        return {"benchmark": f"gemm_m{gemm_rows}", "method": method, "shape": text,
                "median_s": seconds, "runs": gemm_runs, "speedup_vs_fp32": base / seconds,
                "weights_per_s": weights / seconds, "baseline_median_s": base,
                "load_average": load_average(), **tag, "note": note}

    fp32_gemv = median_time(sgemv, runs)
    rows.append(gemv_row("fp32", fp32_gemv, fp32_gemv, w.nbytes, "OpenBLAS sgemv"))
    fp32_gemm = median_time(sgemm, gemm_runs)
    rows.append(gemm_row("fp32", shape_text, n * k, fp32_gemm, fp32_gemm, "OpenBLAS sgemm"))
    for method in METHODS[1:]:
        quant_s = median_time(lambda: q35f.quantize(w, group_size, method), 3)
        rows.append({"benchmark": "quantize", "method": method, "shape": shape_text,
                     "median_s": quant_s, "runs": 3, "weights_per_s": n * k / quant_s,
                     "load_average": load_average(), **tag, "note": "Fortran kernel"})
        bar.update()
        qt = q35f.quantize(w, group_size, method)
        gemv_s, base = paired_medians(lambda: q35f.matmul(x, qt), sgemv, runs)
        rows.append(gemv_row(method, gemv_s, base, qt.nbytes, "fused dequantize-GEMV"))
        bar.update()
        gemm_s, base = paired_medians(lambda: q35f.matmul(xm, qt), sgemm, gemm_runs)
        rows.append(gemm_row(method, shape_text, n * k, gemm_s, base, _gemm_note(qt)))
        bar.update()
        del qt

    # The prompt GEMM of q35 on smaller, real model shapes (where the band overhead weighs more).
    for n2, k2 in gemm_shapes:
        w2 = np.ascontiguousarray(w[:n2, :k2]) if (n2 <= n and k2 <= k) else (
            rng.standard_normal((n2, k2)) * 0.02).astype(np.float32)
        x2 = np.ascontiguousarray(xm[:, :k2]) if k2 <= k else rng.standard_normal(
            (gemm_rows, k2)).astype(np.float32)
        qt = q35f.quantize(w2, group_size, "q35")
        gemm_s, base = paired_medians(lambda: q35f.matmul(x2, qt), lambda: x2 @ w2.T, gemm_runs)
        rows.append(gemm_row("q35", f"{n2}x{k2}", n2 * k2, gemm_s, base, _gemm_note(qt)))
        bar.update()

    # The numpy reference is slow: time it on the first reference_rows rows only.
    band = np.ascontiguousarray(w[:reference_rows])
    for method in METHODS[1:]:
        ref_s = median_time(lambda: reference.quantize(band, group_size, method), 3)
        rows.append({"benchmark": "quantize", "method": method, "shape": f"{band.shape[0]}x{k}",
                     "median_s": ref_s, "runs": 3, "weights_per_s": band.size / ref_s,
                     "load_average": load_average(), **tag,
                     "note": "numpy reference (first rows only)"})
    bar.close()
    return rows


def _gemm_note(qt) -> str:
    from q35f.kernels import tensor

    if tensor._integer_gemm(qt):
        return "integer GEMM: int8 activations per group (fortran/q35_gemm)"
    if tensor.prompt_gemm() == "bf16":
        return "bounded band dequantization + torch bf16 GEMM"
    return "bounded band dequantization + OpenBLAS sgemm"


def run_prompt_gemm(shapes=PROMPT_GEMM_SHAPES, bits="q35", group_size=128, rows=256, runs=7,
                    progress=True):
    """Per shape, in one stretch: the integer GEMM, dequantize + sgemm, dequantize + torch's bf16
    GEMM (where torch imports) and sgemm on the float weights (measured before and after the
    others, averaged), medians of `runs` runs."""
    import numpy as np
    from tqdm import tqdm

    import q35f
    from q35f.kernels import fortran as kernels
    from q35f.kernels import tensor, torch_matmul
    from q35f.measure.machine import honesty

    with_bf16 = torch_matmul.torch_available()
    bf16_note = ("hardware" if torch_matmul.hardware_bf16() else "emulated: no bf16 instructions")
    out = []
    rng = np.random.default_rng(0)
    for n, k in tqdm(shapes, disable=not progress, desc="prompt gemm", file=sys.stderr):
        tag = honesty(model=f"random normal W {n}x{k}, x {rows}x{k}", source="measured")
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        qt = q35f.quantize(w, group_size, bits)
        before = median_time(lambda: x @ w.T, runs)
        integer = median_time(lambda: kernels.gemm_int8(x, qt), runs)
        dequant = median_time(lambda: tensor._gemm_by_tiles(x, qt), runs)
        bf16 = (median_time(lambda: tensor._gemm_by_tiles(x, qt, bf16=True), runs)
                if with_bf16 else None)
        sgemm = (before + median_time(lambda: x @ w.T, runs)) / 2
        load = load_average()
        methods = [("int8", integer, f"{bits} integer GEMM (int8 activations per group)"),
                   ("dequant", dequant, f"{bits} band dequantization + OpenBLAS sgemm")]
        if bf16 is not None:
            methods.append(("bf16", bf16, f"{bits} band dequantization + torch bf16 GEMM "
                                          f"({bf16_note})"))
        methods.append(("fp32", sgemm, "OpenBLAS sgemm on the float weights (before/after mean)"))
        for method, seconds, note in methods:
            out.append({"benchmark": f"prompt_gemm_m{rows}", "method": method,
                        "shape": f"{n}x{k}", "median_s": seconds, "runs": runs,
                        "speedup_vs_fp32": sgemm / seconds, "weights_per_s": n * k / seconds,
                        "baseline_median_s": sgemm, "load_average": load, **tag, "note": note})
    return out


def print_prompt_gemm(rows, out=None):
    out = out or sys.stdout
    print(f"{'shape':<10} {'int8 ms':>8} {'deq+sgemm ms':>12} {'deq+bf16 ms':>11} {'sgemm ms':>9} "
          f"{'int8/sgemm':>10} {'deq/sgemm':>9} {'bf16/sgemm':>10} {'load':>5}  (x = sgemm time / "
          f"its time)", file=out)
    by_shape = {}
    for r in rows:
        by_shape.setdefault(r["shape"], {})[r["method"]] = r
    for shape, r in by_shape.items():
        i, d, f, b = r["int8"], r["dequant"], r["fp32"], r.get("bf16")
        b_ms = f"{b['median_s'] * 1e3:>11.2f}" if b else f"{'-':>11}"
        b_x = f"{b['speedup_vs_fp32']:>9.2f}x" if b else f"{'-':>10}"
        print(f"{shape:<10} {i['median_s'] * 1e3:>8.2f} {d['median_s'] * 1e3:>12.2f} {b_ms} "
              f"{f['median_s'] * 1e3:>9.2f} {i['speedup_vs_fp32']:>9.2f}x "
              f"{d['speedup_vs_fp32']:>8.2f}x {b_x} {i['load_average']:>5.2f}", file=out)


def print_table(rows, out=sys.stdout):
    bandwidth = next(r for r in rows if r["benchmark"] == "read_bandwidth")["gb_per_s"]
    print(f"read bandwidth (numpy sum): {bandwidth:.1f} GB/s", file=out)
    print(f"{'benchmark':<10} {'method':<6} {'shape':<12} {'median ms':>10} {'GB/s':>7} "
          f"{'x fp32':>7} {'of bw':>6} {'Gweights/s':>10} {'load':>5}  note", file=out)
    for r in rows[1:]:
        def fmt(key, spec):
            return format(r[key], spec) if r.get(key) not in (None, "") else ""
        print(f"{r['benchmark']:<10} {r['method']:<6} {r['shape']:<12} "
              f"{r['median_s'] * 1e3:>10.2f} {fmt('gb_per_s', '7.1f'):>7} "
              f"{fmt('speedup_vs_fp32', '7.2f'):>7} {fmt('fraction_of_read_bandwidth', '6.0%'):>6} "
              f"{r['weights_per_s'] / 1e9:>10.3f} {fmt('load_average', '5.1f'):>5}  "
              f"{r.get('note', '')}", file=out)


def write_csv(rows, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in FIELDS})


def handler(args) -> int:
    if args.prompt_gemm:
        rows = run_prompt_gemm(bits=args.bits, group_size=args.group_size, rows=args.gemm_rows,
                               runs=args.runs, progress=not args.no_progress)
        print_prompt_gemm(rows)
        path = PROMPT_GEMM_CSV if args.csv == KERNELS_CSV else args.csv
        if path:
            write_csv(rows, Path(path))
            print(f"wrote {path}")
        return 0
    shape = QUICK_SHAPE if args.quick else tuple(args.shape)
    rows = run(shape=shape, group_size=args.group_size, runs=args.runs,
               gemm_rows=args.gemm_rows, bandwidth_gib=0.25 if args.quick else 1.0,
               reference_rows=64 if args.quick else 256,
               gemm_shapes=() if args.quick else TINYLLAMA_SHAPES, progress=not args.no_progress)
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
        "(default: a Llama-70B MLP matrix, 28672x8192), the q35 prompt GEMM on TinyLlama-1.1B's "
        "matrices, and quantization throughput (Fortran vs the numpy reference). Medians of "
        "--runs runs, each kernel's float baseline measured just before and after it; the "
        "load average is recorded on every row.",
    )
    parser.add_argument("--shape", type=int, nargs=2, default=list(DEFAULT_SHAPE),
                        metavar=("N", "K"), help="weight matrix shape (default: %(default)s)")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per median (default 5)")
    parser.add_argument("--gemm-rows", type=int, default=256, help="M of the GEMM (default 256)")
    parser.add_argument("--csv", default=KERNELS_CSV,
                        help="CSV to write (default: %(default)s; '' to skip)")
    parser.add_argument("--quick", action="store_true", help=f"small {QUICK_SHAPE} run, for CI")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--prompt-gemm", action="store_true",
                        help="only the prompt GEMM at M = --gemm-rows on SmolLM2-135M's and "
                        "TinyLlama-1.1B's shapes: integer GEMM vs dequantize + sgemm vs dequantize + "
                        "torch bf16 GEMM (where torch imports) vs sgemm "
                        f"(CSV: {PROMPT_GEMM_CSV} unless --csv says otherwise)")
    parser.add_argument("--bits", default="q35", help="format of --prompt-gemm (default q35)")
    parser.set_defaults(func=handler)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/kernels.py")
    sub = parser.add_subparsers(dest="bench_command", required=True)
    register_bench(sub)
    return handler(parser.parse_args(["kernels", *(argv if argv is not None else sys.argv[1:])]))
