"""The long fuzz run of issue 13; prints its figures.

    python bench/fuzz.py --inputs 10000 --requests 1000      # a few hours on 2 busy cores
    python bench/fuzz.py --inputs 200 --requests 100 -v      # a quick look, every failure shown
    python bench/fuzz.py --inputs 0 --requests 0 --only 17 -v   # rebuild and rerun input 17

Mutated GGUF / HF / q35f inputs and the misuse calls run in forked children (2 GiB address
space, a timeout each); the hostile requests go to a `q35f serve` subprocess on 127.0.0.1.
Failing inputs are kept under --keep for reproduction. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzing import campaign  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="mutated model inputs")
    parser.add_argument("--requests", type=int, default=1_000, help="hostile server requests")
    parser.add_argument("--no-misuse", action="store_true", help="skip the misuse calls")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="fork servers in parallel")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--only", type=int, nargs="*", help="run just these input indices")
    parser.add_argument("--keep", type=Path, default=None,
                        help="directory for failing inputs (default: none kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every failure")
    args = parser.parse_args(argv)

    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    figures = {}
    failures = 0
    with tempfile.TemporaryDirectory(prefix="q35f-fuzz-") as tmp:
        if args.inputs or args.only:
            tally = campaign.run_inputs(args.inputs, Path(tmp), args.jobs, args.seed,
                                        args.timeout, args.only, args.keep, log)
            figures["inputs"] = tally.figures()
            figures["inputs_by_kind"] = {k: dict(v) for k, v in sorted(tally.by_kind.items())}
            _report("mutated inputs", tally)
            failures += tally.failures
        if not args.no_misuse and not args.only:
            tally = campaign.run_misuse(args.jobs, log=log)
            figures["misuse"] = tally.figures()
            _report("misuse calls", tally)
            failures += tally.failures
        if args.requests and not args.only:
            from fuzzing import hostile

            attack = hostile.run_attack(Path(tmp), args.requests, seed=args.seed, log=log)
            figures["server"] = attack
            print(hostile.format_figures(attack))
            failures += hostile.failures(attack)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 1 if failures else 0


def _report(title: str, tally) -> None:
    f = tally.figures()
    print(f"{title}: {f['tried']} tried in {f['seconds']} s; ok {f['ok']}, named errors "
          f"{f['named']}; crashes {f['crash']}, hangs {f['hang']}, tracebacks {f['traceback']}, "
          f"huge allocations {f['memory']}, silent non-finite {f['nonfinite']}, unnamed errors "
          f"{f['unnamed']}, accepted misuse {f['accepted']}, refused valid calls {f['refused']}, "
          f"array copies {f['copy']}, data lost {f['data_lost']}")
    for cause, examples in sorted(tally.examples.items()):
        first = examples[0]
        what = first.get("mutation") or first.get("case", "")
        print(f"  {cause}\n      e.g. {first.get('kind')} input {first.get('input', '-')}: "
              f"{what[:150]}")


if __name__ == "__main__":
    sys.exit(main())
