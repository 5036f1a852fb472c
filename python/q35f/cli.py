"""The `q35f` command line: one sub-command per job, each defined next to the code it runs.

A command module exposes `register(subparsers)`; a `q35f bench X` module exposes
`register_bench(subparsers)`. Modules keep heavy imports inside their handlers so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Add a module here when it defines a command.
COMMAND_MODULES: tuple[str, ...] = (
    "q35f.format.sizing", "q35f.paper", "q35f.serve.server", "q35f.quantization.convert",
    "q35f.io.info", "q35f.runtime.generate", "q35f.measure.perplexity", "q35f.measure.compare",
    "q35f.io.remote_code",
)
BENCH_MODULES: tuple[str, ...] = ("q35f.measure.bench_kernels", "q35f.serve.bench",
                                  "q35f.measure.benchmark")


def build_parser() -> argparse.ArgumentParser:
    from q35f import __version__

    parser = argparse.ArgumentParser(
        prog="q35f",
        description="3.5-bit weight quantization of LLMs: quantize checkpoints, run them on the CPU "
        "with Fortran kernels, measure them, serve them.",
    )
    parser.add_argument("--version", action="version", version=f"q35f {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    if BENCH_MODULES:
        bench = sub.add_parser("bench", help="benchmarks: kernels, a model, a served endpoint")
        bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
        for name in BENCH_MODULES:
            importlib.import_module(name).register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which has closed: not an error of ours.
        sys.stdout = open(os.devnull, "w")
        return 0
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # Expected user errors: one clear line, no traceback.
        print(f"q35f {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
