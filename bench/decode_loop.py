"""Decode speed of one model in this process: an 8-token prompt, then 64 tokens one at a time
through Model.forward (no sampling, no tokenizer), as tok/s. Used to compare OpenMP settings,
which libgomp reads at start-up, so each setting is a fresh process, e.g.

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=30000 python bench/decode_loop.py models/smol-q35
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python bench/decode_loop.py models/smol-q35

--numpy-blocks runs each block through numpy (one GEMV call per linear layer) instead of the
one-call Fortran decode step, to measure what that step saves.
"""

import argparse
import os
import time

import numpy as np

from q35f.runtime.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="q35f directory, GGUF file or HF directory")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--numpy-blocks", action="store_true",
                        help="decode through the numpy blocks, not the fused Fortran step")
    args = parser.parse_args()
    model = load_model(args.model, max_seq_len=args.tokens + 16)[0]
    model.fused_decode = not args.numpy_blocks
    model.forward(np.arange(1, 9), 0)
    start = time.perf_counter()
    for i in range(args.tokens):
        model.forward(np.array([100 + i]), 8 + i)
    seconds = time.perf_counter() - start
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # as q35f left them
    settings = {k: os.environ.get(k) for k in names}
    step = "numpy blocks" if args.numpy_blocks else "fused step"
    print(f"decode {args.tokens / seconds:.1f} tok/s  {step}  {settings}  "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
