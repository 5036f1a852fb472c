"""`q35f paper {data,figures,supplementary,all}`: the paper's artifacts with one command each."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RESULTS = Path("bench/results")
DEFAULT_FIGURES = Path("bench/figures")
DEFAULT_ZIP = Path("dist/supplementary.zip")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "paper",
        help="the paper's tables (CSV), figures and supplementary archive, from real runs",
        description="Produce the paper's artifacts from real runs on this machine: "
        "`data` measures and writes the four CSVs, `figures` draws the four figures from those "
        "CSVs only, `supplementary` packs a byte-reproducible zip, `all` runs the three in order.",
    )
    sub = p.add_subparsers(dest="paper_command", metavar="STEP", required=True)

    d = sub.add_parser(
        "data",
        help="measure and write performance/accuracy/scalability/ablation CSVs",
        description="Quantize the model to every format, measure memory, decode speed, first-token "
        "latency, power (RAPL, when readable) and perplexity, run the ablation, compute the "
        "scalability table, and write bench/results/{performance,accuracy,scalability,"
        "ablation}.csv. Every row says where it was measured (machine, date, version) and "
        "whether it is `measured` or an `estimate` (with its formula).",
    )
    _data_args(d)
    d.set_defaults(func=_run_data)

    f = sub.add_parser(
        "figures",
        help="draw the four figures from the CSVs",
        description="Draw bench/figures/{encoding,performance,perplexity_vs_bits,memory_vs_size}"
        ".{pdf,png} from the CSVs written by `q35f paper data` (the encoding figure from the "
        "format itself).",
    )
    _figure_args(f)
    f.set_defaults(func=_run_figures)

    s = sub.add_parser(
        "supplementary",
        help="build the byte-reproducible supplementary zip",
        description="Pack lean/, fortran/, the benchmark scripts, the CSVs, the figures, "
        "README_supplementary.md and a SHA-256 MANIFEST into a zip that rebuilds byte for byte. "
        "Refuses when lean/ contains sorry/admit/axiom/native_decide, when a CSV is missing, or "
        "when the archive would exceed 100 MB.",
    )
    _zip_args(s)
    _figure_args(s)
    s.set_defaults(func=_run_supplementary)

    a = sub.add_parser("all", help="data, figures and supplementary, in order",
                       description="Run `paper data`, `paper figures` and `paper supplementary`.")
    _data_args(a)
    _figure_args(a, with_results=False)
    _zip_args(a)
    a.set_defaults(func=_run_all)


def _data_args(p) -> None:
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS,
                   help=f"directory of the CSVs (default {DEFAULT_RESULTS})")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run: few tokens, few variants; still real measurements")
    p.add_argument("--model", action="append", default=None, metavar="PATH",
                   help="also measure this model (GGUF or HF directory); repeatable; "
                   "the embedded SmolLM2-135M is always measured")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where quantized models are written (default: a temporary directory)")
    p.add_argument("--corpus", default="prideprejudice",
                   help="evaluation text from q35f.io.corpora (default prideprejudice)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens scored for perplexity (default 6144 for the methods and 3072 for "
                   "the ablation; 1024 and 512 with --quick)")
    p.add_argument("--ablation-part", action="append", default=None,
                   choices=["rtn", "recipe"],
                   help="rerun only this half of the ablation (round-to-nearest or the default "
                   "recipe), keeping the other half's rows of the existing ablation.csv; "
                   "repeatable (default both)")
    p.add_argument("--ablation-only", action="append", default=None, metavar="VARIANT",
                   help="rerun only the ablation variant of this name (the CSV's variant "
                   "column), keeping every other row; repeatable")
    p.add_argument("--ablation-calibration", default=None, metavar="FILE|CORPUS",
                   help="longer calibration text for the default-recipe rows the built-in "
                   "generated corpus cannot hold (512/1024 sequences; a .gz file is "
                   "decompressed)")
    p.add_argument("--speed-model", action="append", default=None, metavar="PATH",
                   help="performance rows only (no perplexity) for this model, e.g. the "
                   "synthetic 1.1B GGUF of bench/synthetic.py; repeatable")
    p.add_argument("--llama-python", default=os.environ.get("Q35F_LLAMA_PYTHON"),
                   metavar="PYTHON",
                   help="interpreter with llama-cpp-python and gguf: performance.csv gains "
                   "llama.cpp rows (F32 Q8_0 Q4_K_M Q3_K_M Q4_0 requantized from each GGUF) "
                   "measured in the same run (default $Q35F_LLAMA_PYTHON; none: no llama.cpp rows)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every speed measurement, q35f and llama.cpp alike "
                   "(default $OMP_NUM_THREADS, else every CPU)")
    p.add_argument("--max-load", type=float, default=None,
                   help="each speed row first waits (up to 3 min) for the 1-minute load "
                   "average to fall to this; rows started above it are flagged published=no "
                   "and left out of the figures (default 0.75 x logical CPUs)")
    p.add_argument("--skip", action="append", default=[],
                   choices=["performance", "accuracy", "scalability", "ablation"],
                   help="do not (re)write this table; repeatable")


def _figure_args(p, with_results: bool = True) -> None:
    if with_results:
        p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                       help=f"directory of the CSVs (default {DEFAULT_RESULTS})")
    p.add_argument("--figures", type=Path, default=DEFAULT_FIGURES,
                   help=f"output directory (default {DEFAULT_FIGURES})")


def _zip_args(p) -> None:
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_ZIP,
                   help=f"zip to write (default {DEFAULT_ZIP})")
    p.add_argument("--root", type=Path, default=None,
                   help="repository root (default: found from the current directory)")


def _run_data(args) -> int:
    from .data import write_all

    import shlex
    import sys

    from .data import ABLATION_PARTS

    paths = write_all(args.out, quick=args.quick, models=args.model or [], work_dir=args.work_dir,
                      corpus=args.corpus, max_tokens=args.max_tokens, skip=args.skip,
                      ablation_parts=tuple(args.ablation_part or ABLATION_PARTS),
                      ablation_calibration=args.ablation_calibration,
                      ablation_only=tuple(args.ablation_only or ()),
                      command=shlex.join(["q35f", *sys.argv[1:]]), threads=args.threads,
                      llama_python=args.llama_python, max_load=args.max_load,
                      speed_models=args.speed_model or [])
    if args.llama_python is None and "performance" not in args.skip:
        print("performance.csv: no llama.cpp rows (pass --llama-python PYTHON)")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _run_figures(args) -> int:
    from .figures import draw_all

    results = getattr(args, "results", None) or args.out
    draw_all(results, args.figures)
    for name in ("encoding", "performance", "perplexity_vs_bits", "memory_vs_size"):
        print(f"wrote {args.figures / name}.pdf, .png")
    return 0


def _run_supplementary(args) -> int:
    from .supplementary import build, find_root

    root = args.root or find_root(Path.cwd())
    results = getattr(args, "results", None) or getattr(args, "out", None)
    # Default locations are resolved inside the repository root; explicit ones as given.
    results = None if results in (None, DEFAULT_RESULTS) else results
    figs = None if args.figures == DEFAULT_FIGURES else args.figures
    path, manifest = build(root, args.output, results_dir=results, figures_dir=figs)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, {len(manifest)} files)")
    return 0


def _run_all(args) -> int:
    for step in (_run_data, _run_figures, _run_supplementary):
        code = step(args)
        if code:
            return code
    return 0
