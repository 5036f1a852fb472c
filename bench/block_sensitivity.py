"""Where a quantized model's error sits: its perplexity with one block at a time kept float.

    python bench/block_sensitivity.py MODEL_DIR [--corpus generated --start 12000 --windows 4]

MODEL_DIR must be a q35f directory quantized from the embedded model *without* pairing (the
pairing permutes channels, so the source's float blocks would not fit between its blocks). For
every block l it prints the perplexity with block l float and the rest quantized, and the share
of the float-to-quantized gap that this recovers. Scored on `--windows` windows of 512 tokens of
`--corpus` from token `--start` on (the default: generated text past the 8,192 calibration
tokens, so no evaluation text is used to choose anything).
"""

import argparse
import copy

from q35f.io import corpora
from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.measure.perplexity import perplexity, tokenize
from q35f.runtime.model import LlamaConfig, Model, Weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="q35f directory (quantized without pairing)")
    parser.add_argument("--corpus", default="generated")
    parser.add_argument("--start", type=int, default=12000)
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()
    source, quantized = open_checkpoint(default_model_path()), open_checkpoint(args.model)
    if (quantized.quant_config or {}).get("pairing", "none") != "none":
        parser.error(f"{args.model} was quantized with pairing; quantize with --pairing none")
    config = LlamaConfig.from_hf(source.config)
    floats = Weights.from_checkpoint(source, config)
    packed = Weights.from_checkpoint(quantized, config)
    ids = tokenize(source.tokenizer, corpora.text(args.corpus))
    ids = ids[args.start:args.start + 512 * args.windows]

    def ppl(layers):  # Model fuses (and clears) a layer's matrices: give it shallow copies
        weights = Weights(embed=packed.embed, layers=[copy.copy(lw) for lw in layers],
                          norm=packed.norm, lm_head=packed.lm_head)
        return perplexity(Model(config, weights, max_seq_len=512), ids, ctx=512)["ppl"]

    all_float, all_quantized = ppl(floats.layers), ppl(packed.layers)
    print(f"float blocks {all_float:.3f}, all quantized {all_quantized:.3f} "
          f"({len(ids)} tokens of {args.corpus})", flush=True)
    for layer in range(config.num_hidden_layers):
        mixed = list(packed.layers)
        mixed[layer] = floats.layers[layer]
        p = ppl(mixed)
        share = 100 * (all_quantized - p) / (all_quantized - all_float)
        print(f"block {layer:2d} float: {p:.3f}  recovers {share:5.1f} % of the gap", flush=True)


if __name__ == "__main__":
    main()
