"""Decode speed of a q35f directory through transformers next to q35f's own runtime, one process.

    .venv/bin/python bench/transformers_speed.py [DIR] [--decode-tokens 64] [--runs 3] [--threads 1]

DIR is a q35f directory (default: the embedded SmolLM2-135M-Instruct quantized with the defaults
into a temporary directory). Both paths run the same Q35 kernels; they differ in everything
around them: q35f.runtime.model fuses q/k/v and gate/up into one matmul each and runs attention
in numpy, while transformers calls seven separate linear layers per block from torch and runs its
own attention, cache and `generate` loop.

Protocol, as `q35f bench model` (q35f.measure.benchmark): the first 16 tokens of the pydoc corpus
as prompt, then --decode-tokens greedy tokens, one forward pass each; decode tok/s = decode tokens /
time of those steps. transformers: `model.generate(max_new_tokens=N + 1, min_new_tokens=N + 1,
do_sample=False)`, timed from the first to the last new token by a stopping criterion that only
reads the clock, so the N decode steps include generate's own per-token work. The two paths
alternate, --runs times each after one warm-up; medians are printed with the load average before
and after (numbers from a shared machine are noise; the ratio is from one run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Python puts bench/ first on sys.path, where bench/kernels.py would stand in for the `kernels`
# package that transformers looks for when it is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SHORT_PROMPT_TOKENS = 16  # as q35f.measure.benchmark


def q35f_decode(model, prompt, n) -> float:
    import numpy as np

    logits = model.forward(prompt, 0)
    pos = len(prompt)
    began = time.perf_counter()
    for _ in range(n):
        logits = model.forward([int(np.argmax(logits))], pos)
        pos += 1
    return time.perf_counter() - began


def transformers_decode(model, prompt, n) -> float:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        """Called once per new token; never stops generation."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    clock = Clock()
    model.generate(torch.tensor([prompt]), max_new_tokens=n + 1, min_new_tokens=n + 1,
                   do_sample=False, stopping_criteria=StoppingCriteriaList([clock]))
    if len(clock.times) != n + 1:
        raise AssertionError(f"generate made {len(clock.times)} tokens, expected {n + 1}")
    return clock.times[-1] - clock.times[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", help="q35f directory (default: the embedded "
                        "model quantized with q35f's defaults)")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS/OPENBLAS_NUM_THREADS and torch's threads (default: "
                        "the libraries' own); 1 on a busy machine")
    args = parser.parse_args(argv)
    if args.threads is not None:  # before numpy, the kernels and torch start their pools
        os.environ.update(OMP_NUM_THREADS=str(args.threads),
                          OPENBLAS_NUM_THREADS=str(args.threads))

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from q35f.io import corpora
    from q35f.quantization.convert import quantize_checkpoint
    from q35f.runtime.model import load_model

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.directory) if args.directory else Path(tmp) / "q35"
        if not args.directory:
            quantize_checkpoint(None, directory, progress=False)
        began = time.perf_counter()
        ours, ckpt = load_model(directory, max_seq_len=SHORT_PROMPT_TOKENS + args.decode_tokens + 2)
        q35f_load_s = time.perf_counter() - began
        began = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
        hf_load_s = time.perf_counter() - began
        ids = ckpt.tokenizer.encode(corpora.text("pydoc")[:20_000], add_special_tokens=False).ids
        prompt = ids[:SHORT_PROMPT_TOKENS]
        with torch.inference_mode():
            q35f_decode(ours, prompt, 4)  # warm-up: first touches of weights and buffers
            transformers_decode(hf, prompt, 4)
            times = {"q35f": [], "transformers": []}
            for _ in range(args.runs):
                times["q35f"].append(q35f_decode(ours, prompt, args.decode_tokens))
                times["transformers"].append(transformers_decode(hf, prompt, args.decode_tokens))
    rates = {k: args.decode_tokens / statistics.median(v) for k, v in times.items()}
    result = {
        "model": str(args.directory or "embedded SmolLM2-135M-Instruct, q35 defaults"),
        "decode_tokens": args.decode_tokens, "runs": args.runs,
        "q35f_decode_tok_s": round(rates["q35f"], 2),
        "transformers_decode_tok_s": round(rates["transformers"], 2),
        "transformers_vs_q35f": round(rates["transformers"] / rates["q35f"], 3),
        "q35f_load_s": round(q35f_load_s, 2), "transformers_load_s": round(hf_load_s, 2),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_before": "/".join(f"{v:.1f}" for v in load_before),
        "load_avg_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    print(f"decode tok/s: q35f {rates['q35f']:.1f}, transformers {rates['transformers']:.1f} "
          f"({result['transformers_vs_q35f']:.2f}x); load average "
          f"{result['load_avg_before']} -> {result['load_avg_after']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
