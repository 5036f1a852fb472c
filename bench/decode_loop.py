"""Decode speed of one model in this process: an 8-token prompt, then 64 tokens one at a time
through Model.forward (no sampling, no tokenizer), as tok/s. Used to compare OpenMP settings,
which libgomp reads at start-up, so each setting is a fresh process, e.g.

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=30000 python bench/decode_loop.py models/smol-q35
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python bench/decode_loop.py models/smol-q35

--numpy-blocks runs each block through numpy (one GEMV call per linear layer) instead of the
one-call Fortran decode step, to measure what that step saves. Several models with --rounds R
are loaded together and decoded in turn, R times each, in this one process (the machine's drift
then hits them alike); each model's median tok/s and its ratio to the first model's are printed:

    OMP_NUM_THREADS=2 python bench/decode_loop.py M_BASE M_OTHER --rounds 9
"""

import argparse
import os
import time

import numpy as np

from q35f.runtime.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="model",
                        help="q35f directory, GGUF file or HF directory")
    parser.add_argument("--rounds", type=int, default=1,
                        help="decode each model this many times, in turn")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--numpy-blocks", action="store_true",
                        help="decode through the numpy blocks, not the fused Fortran step")
    args = parser.parse_args()
    models = []
    for path in args.models:
        model = load_model(path, max_seq_len=args.tokens + 16)[0]
        model.fused_decode = not args.numpy_blocks
        models.append(model)
    speeds = [[] for _ in models]
    for _ in range(args.rounds):
        for model, speed in zip(models, speeds):
            model.forward(np.arange(1, 9), 0)
            start = time.perf_counter()
            for i in range(args.tokens):
                model.forward(np.array([100 + i]), 8 + i)
            speed.append(args.tokens / (time.perf_counter() - start))
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # as q35f left them
    settings = {k: os.environ.get(k) for k in names}
    step = "numpy blocks" if args.numpy_blocks else "fused step"
    first = float(np.median(speeds[0]))
    for path, speed in zip(args.models, speeds):
        median = float(np.median(speed))
        runs = "" if len(speed) == 1 else f" (median of {len(speed)}: " + \
            " ".join(f"{v:.1f}" for v in speed) + f"; {median / first:.3f}x the first)"
        print(f"{path}: decode {median:.1f} tok/s{runs}  {step}  {settings}  "
              f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
