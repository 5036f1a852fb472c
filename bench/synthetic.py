"""A random-weight Llama of a named shape as a GGUF file, for speed measurements at scale.

Both q35f (`q35f quantize FILE.gguf -o DIR`, `q35f bench model FILE.gguf`) and llama.cpp load
the file, so decode and prompt speed can be compared on models larger than the embedded one
without downloading anything. Weights are what a trained model's look like to a kernel: normal
with standard deviation 0.02 (embedding, head and every linear layer), RMSNorm weights 1.
They are deterministic: tensor i is drawn from numpy's default generator seeded [seed, i].
The tokenizer (49152 tokens, byte-level BPE, chat template) is copied from the embedded
SmolLM2-135M GGUF, so prompts tokenize the same way in both tools.

Run it with q35f's interpreter (it reads GGUF metadata through q35f.io):

    .venv/bin/python bench/synthetic.py tinyllama-1.1b            # -> ~/.cache/q35f/synthetic/
    .venv/bin/python bench/synthetic.py llama2-7b-layers --layers 8 --dtype f32 -o x.gguf

Tensors are written one at a time, each filled in bands of at most 16 MiB of float32, so
memory stays near the largest tensor however large the model is. The file is written next to
its destination under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHT_STD = 0.02
BAND_BYTES = 16 * 2**20  # float32 bytes drawn at a time
DTYPES = {"f16": np.float16, "f32": np.float32}


@dataclass(frozen=True)
class Shape:
    """The dimensions of a Llama-family model (names as in llama.cpp's GGUF metadata)."""

    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool  # output head shares the token embedding
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    context: int = 2048


SHAPES = {
    # the embedded SmolLM2-135M-Instruct
    "smollm2-135m": Shape(hidden=576, layers=30, ffn=1536, heads=9, kv_heads=3, head_dim=64,
                          tied=True, rope_theta=100000.0, context=8192),
    # TinyLlama-1.1B's layers; the head is tied to the embedding as in issue 11's measurement
    # (q35 536 MB, llama.cpp Q4_0 630 MB: the byte ratio 1.17 of its targets); --no-tied unties
    "tinyllama-1.1b": Shape(hidden=2048, layers=22, ffn=5632, heads=32, kv_heads=4, head_dim=64,
                            tied=True),
    # Llama-2-7B's layers (the full model has 32; a few are enough to measure per-layer speed)
    "llama2-7b-layers": Shape(hidden=4096, layers=4, ffn=11008, heads=32, kv_heads=32,
                              head_dim=128, tied=False, context=4096),
}


def tensor_shapes(shape: Shape, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """(llama.cpp name, numpy shape rows x columns) of every tensor, in file order."""
    q_rows, kv_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    tensors = [("token_embd.weight", (vocab, shape.hidden))]
    for i in range(shape.layers):
        tensors += [
            (f"blk.{i}.attn_norm.weight", (shape.hidden,)),
            (f"blk.{i}.attn_q.weight", (q_rows, shape.hidden)),
            (f"blk.{i}.attn_k.weight", (kv_rows, shape.hidden)),
            (f"blk.{i}.attn_v.weight", (kv_rows, shape.hidden)),
            (f"blk.{i}.attn_output.weight", (shape.hidden, q_rows)),
            (f"blk.{i}.ffn_norm.weight", (shape.hidden,)),
            (f"blk.{i}.ffn_gate.weight", (shape.ffn, shape.hidden)),
            (f"blk.{i}.ffn_up.weight", (shape.ffn, shape.hidden)),
            (f"blk.{i}.ffn_down.weight", (shape.hidden, shape.ffn)),
        ]
    tensors.append(("output_norm.weight", (shape.hidden,)))
    if not shape.tied:
        tensors.append(("output.weight", (vocab, shape.hidden)))
    return tensors


def fill_tensor(out: np.ndarray, seed: int, index: int, band_bytes: int = BAND_BYTES) -> None:
    """Fill a matrix with N(0, WEIGHT_STD²) from generator [seed, index], band by band.

    The generator continues its stream from band to band, so the values do not depend on
    band_bytes (tests/test_synthetic.py checks it).
    """
    rng = np.random.default_rng([seed, index])
    rows_per_band = max(1, band_bytes // (4 * out.shape[1]))
    for start in range(0, out.shape[0], rows_per_band):
        band = rng.standard_normal((min(rows_per_band, out.shape[0] - start), out.shape[1]),
                                   dtype=np.float32)
        band *= WEIGHT_STD
        out[start:start + band.shape[0]] = band  # rounds to out's dtype


@functools.lru_cache(maxsize=4)
def gguf_fields(source: Path) -> tuple:
    """(key, value, type, array item type) of every metadata field of a GGUF file."""
    import gguf

    from q35f.io.gguf import _gguf_reader_class  # parses the 100k token fields 10x faster

    reader = _gguf_reader_class()(str(source), "r")
    return tuple((key, field.contents(), field.types[0],
                  field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
                 for key, field in reader.fields.items())


def tokenizer_fields(source: Path) -> tuple:
    """The tokenizer.* fields of gguf_fields(source): vocabulary, merges, ids, chat template."""
    fields = tuple(f for f in gguf_fields(Path(source)) if f[0].startswith("tokenizer."))
    if not any(key == "tokenizer.ggml.tokens" for key, *_ in fields):
        raise ValueError(f"--tokenizer-from {source}: no tokenizer.ggml.tokens in this GGUF")
    return fields


def default_tokenizer_source() -> Path:
    """The embedded SmolLM2-135M GGUF."""
    from q35f.io.checkpoint import default_model_path

    return default_model_path()


def write_synthetic(path, shape: Shape, seed: int = 0, dtype: str = "f16",
                    tokenizer_from=None, name: str = "synthetic",
                    band_bytes: int = BAND_BYTES) -> dict:
    """Write the model to `path` (a .gguf file); returns a summary (params, bytes, seconds)."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if shape.layers < 1:
        raise ValueError(f"layers must be at least 1, got {shape.layers}")
    began = time.perf_counter()
    source = Path(tokenizer_from) if tokenizer_from is not None else default_tokenizer_source()
    fields = tokenizer_fields(source)
    vocab = len(next(value for key, value, *_ in fields if key == "tokenizer.ggml.tokens"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")

    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(f"q35f {name} (random weights, seed {seed})")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16"
                         else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(vocab)
    for key, value, vtype, sub_type in fields:
        writer.add_key_value(key, value, vtype, sub_type)

    tensors = tensor_shapes(shape, vocab)
    weight_dtype = DTYPES[dtype]
    for tensor_name, dims in tensors:
        kind = np.float32 if len(dims) == 1 else weight_dtype  # norms stay float32
        nbytes = int(np.prod(dims)) * np.dtype(kind).itemsize
        writer.add_tensor_info(tensor_name, dims, np.dtype(kind), nbytes)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (tensor_name, dims) in enumerate(tensors):
            if len(dims) == 1:
                data = np.ones(dims, dtype=np.float32)
            else:
                data = np.empty(dims, dtype=weight_dtype)
                fill_tensor(data, seed, index, band_bytes)
            writer.write_tensor_data(data)
            del data
        writer.close()
        partial.replace(path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    params = sum(int(np.prod(dims)) for _, dims in tensors)
    return {"path": str(path), "shape": name, "params": params, "file_bytes": path.stat().st_size,
            "dtype": dtype, "seed": seed, "vocab": vocab, "tokenizer_from": str(source),
            "seconds": time.perf_counter() - began, **dataclasses.asdict(shape)}


def default_output(name: str, shape: Shape, dtype: str, seed: int) -> Path:
    root = os.environ.get("Q35F_CACHE")
    cache = Path(root) if root else Path.home() / ".cache" / "q35f"
    tied = "tied" if shape.tied else "untied"
    return cache / "synthetic" / f"{name}-{shape.layers}l-{tied}-{dtype}-seed{seed}.gguf"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=list(SHAPES), help="named model shape")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="GGUF file to write (default ~/.cache/q35f/synthetic/NAME-...gguf)")
    p.add_argument("--layers", type=int, default=None, help="number of layers (default: the "
                   "shape's: " + ", ".join(f"{k} {v.layers}" for k, v in SHAPES.items()) + ")")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="output head tied to the token embedding (default: the shape's: "
                   + ", ".join(f"{k} {'tied' if v.tied else 'untied'}"
                               for k, v in SHAPES.items()) + ")")
    p.add_argument("--dtype", choices=list(DTYPES), default="f16",
                   help="storage of the matrices (default f16; norms are always f32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-from", type=Path, default=None, metavar="FILE.gguf",
                   help="GGUF whose tokenizer is copied (default: the embedded SmolLM2-135M)")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = p.parse_args(argv)

    shape = SHAPES[args.shape]
    if args.layers is not None:
        shape = dataclasses.replace(shape, layers=args.layers)
    if args.tied is not None:
        shape = dataclasses.replace(shape, tied=args.tied)
    out = args.output or default_output(args.shape, shape, args.dtype, args.seed)
    if out.exists() and not args.force:
        print(f"{out} exists (pass --force to overwrite)", file=sys.stderr)
        summary = {"path": str(out), "shape": args.shape, "file_bytes": out.stat().st_size,
                   "existing": True}
    else:
        summary = write_synthetic(out, shape, args.seed, args.dtype, args.tokenizer_from,
                                  args.shape)
    if args.json:
        print(json.dumps(summary))
    elif summary.get("existing"):
        print(out)
    else:
        print(f"{out}: {summary['shape']}, {summary['params'] / 1e6:.1f} M parameters, "
              f"{summary['file_bytes'] / 2**20:.0f} MiB ({args.dtype}), "
              f"{summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
