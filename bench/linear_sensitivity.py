"""Which linears a quantized model's error comes from: its KL divergence to the float model with
only one class of linears (q_proj, ..., down_proj) or one range of blocks quantized, the rest
float (what chose the default mix, q35f.quantization.mix). Usage:

    python bench/linear_sensitivity.py MODEL_DIR [--corpus generated --start 16384 --windows 4]
        [--out bench/results/linear_sensitivity.csv]

MODEL_DIR: a q35f directory quantized from the embedded model without pairing and without a mix
(q35 everywhere; e.g. `q35f quantize -o M --mix none`). Scored on `--windows` windows of 512
tokens of `--corpus` from token `--start` on: by default the built-in generated text past the
16,384 calibration tokens, so no evaluation text chooses anything. One CSV row per variant:
its KL divergence, top-1 agreement, perplexity, and the variant's weights in block 0 (per block
for a class of linears; 0 for a range of blocks without block 0).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from q35f.io import corpora
from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.paper.data import write_csv
from q35f.measure.perplexity import perplexity, tokenize
from q35f.runtime.model import LlamaConfig, Model, Weights

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Mixed:
    """A checkpoint view: tensors `pick(name)` from the quantized file, the rest float."""

    def __init__(self, source, quantized, pick):
        self.source, self.quantized, self.pick = source, quantized, pick

    def get(self, name):
        return (self.quantized if self.pick(name) else self.source).get(name)

    def names(self):
        return self.source.names()


def _linear(name: str) -> bool:
    return ".layers." in name and name.endswith("_proj.weight")


def _block(name: str) -> int:
    return int(name.split(".")[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="q35f directory (quantized without pairing or a mix)")
    parser.add_argument("--corpus", default="generated")
    parser.add_argument("--start", type=int, default=16384)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--blocks", default="0-2,3-9,10-19,20-26,27-29",
                        help="block ranges to measure (inclusive)")
    parser.add_argument("--out", default="bench/results/linear_sensitivity.csv")
    args = parser.parse_args()
    source, quantized = open_checkpoint(default_model_path()), open_checkpoint(args.model)
    qc = quantized.quant_config or {}
    if qc.get("pairing", "none") != "none" or qc.get("mix", "none") != "none":
        parser.error(f"{args.model}: quantize it with --pairing none --mix none")
    config = LlamaConfig.from_hf(source.config)
    ids = tokenize(source.tokenizer, corpora.text(args.corpus))
    ids = ids[args.start:args.start + 512 * args.windows]
    if len(ids) < 512 * args.windows:
        parser.error(f"{args.corpus} has {args.start + len(ids)} tokens: fewer windows or an "
                     "earlier --start")
    reference = Model(config, Weights.from_checkpoint(source, config), max_seq_len=512)
    shapes = {n: source.info(n).shape for n in source.names() if _linear(n)}

    variants = [("all", _linear)]
    variants += [(p, lambda n, p=p: _linear(n) and n.endswith(f".{p}.weight")) for p in PROJS]
    for span in args.blocks.split(","):
        lo, hi = (int(v) for v in span.split("-"))
        variants.append((f"blocks {lo}-{hi}",
                         lambda n, lo=lo, hi=hi: _linear(n) and lo <= _block(n) <= hi))
    rows = []
    for label, pick in variants:
        weights = Weights.from_checkpoint(_Mixed(source, quantized, pick), config)
        r = perplexity(Model(config, weights, max_seq_len=512), ids, ctx=512, progress=False,
                       reference=reference)
        per_block = sum(shapes[n][0] * shapes[n][1] for n in shapes if pick(n) and _block(n) == 0)
        rows.append({"variant": label, "kl_divergence": round(r["kl_divergence"], 5),
                     "top1_agreement": round(r["top1_agreement"], 4), "ppl": round(r["ppl"], 4),
                     "block0_weights": per_block, "tokens": r["tokens"], "corpus": args.corpus,
                     "start": args.start, "model": str(args.model),
                     "note": f"load avg {os.getloadavg()[0]:.1f}"})
        print(rows[-1], flush=True)
    write_csv(Path(args.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
