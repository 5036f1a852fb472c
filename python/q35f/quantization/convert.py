"""Quantize a checkpoint into a q35f directory, tensor by tensor; describe any checkpoint.

What is quantized (the default, configurable):
- every linear layer of the transformer blocks (q, k, v, o, gate, up, down projections) with
  `bits` (q35 by default, FORMAT.md §2-4);
- the token embedding and, when not tied to it, the output head with `head_bits`: int8 by
  default (8.25 bits/weight at G = 128). On SmolLM2-135M the tied embedding/head is 21% of the
  parameters and the head's GEMV is the largest of every decoded token, so it is worth shrinking,
  but it sees every token, so it gets 8 bits rather than 3.5. "fp16"/"fp32" keep it float;
  q35/int4/int3 are allowed too;
- everything else (RMSNorm weights, biases if any) stays float32.

Memory stays bounded independent of model size: a matrix is read, quantized and written one band
of rows at a time (at most BAND_FLOATS floats), straight to its place in the output file, whose
safetensors header is computed beforehand from the shapes alone. The output is built in a
temporary sibling directory and renamed into place at the end, so an interrupted run never
leaves a complete-looking model behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from q35f.format.group_params import COMPACT, FLOAT16, GROUP_PARAMS, check_group_params
from q35f.format.group_params import encode as encode_group_params
from q35f.format.rotation import ROTATIONS, can_rotate, check_rotation
from q35f.format.spec import FORMATS, check_group_size, n_groups, row_bytes
from q35f.io import directory
from q35f.io.checkpoint import open_checkpoint
from q35f.io.llama import HEAD_NAMES, LINEAR
from q35f.io.info import format_bytes
from q35f.io.safetensors import SafetensorsWriter
from q35f.quantization.mix import BY_DEPTH, MIXES, applicable, tensor_bits

HEAD_CHOICES = tuple(FORMATS) + ("fp16", "fp32")
# One band of a matrix read and quantized at a time: 4 Mi float32 values = 16 MiB.
BAND_FLOATS = 4 * 1024 * 1024
DEFAULT_SHARD_BYTES = 2 * 1024**3
_FLOAT_STORE = {"fp16": ("F16", np.float16), "fp32": ("F32", np.float32)}


@dataclass
class _Planned:
    """One tensor of the output: how it is stored and where its pieces go."""

    name: str
    shape: tuple
    bits: str | None  # quantized with these bits, or None for float
    store: str = "F32"  # dtype of a float tensor
    entries: list = field(default_factory=list)  # (raw name, dtype, shape, nbytes)
    rotation: str = "none"  # the input rotation of a quantized linear weight (FORMAT.md §9)
    group_params: str = FLOAT16  # how its scales/offsets are stored (FORMAT.md §10)

    @property
    def nbytes(self):
        return sum(e[3] for e in self.entries)

    @property
    def n_params(self):
        return int(np.prod(self.shape, dtype=np.int64))


def planned_rotation(name: str, k: int, rotation: str, group_size: int) -> str:
    """The rotation tensor `name` with k inputs is stored with: only the block linears are
    rotated, and only where every group is a power of two (FORMAT.md §9). The plan and the
    quantizer (q35f.quantization.recipe.Improver) both ask here."""
    linear = LINEAR.fullmatch(name) is not None
    return rotation if linear and can_rotate(k, group_size) else "none"


def _plan_tensor(name, shape, bits, group_size, head_bits, rotation="none",
                 group_params=FLOAT16, mix="none", n_layers=None):
    """Only the block linears get `group_params` and `mix` (q35f.quantization.mix): the
    embedding/head keep float16 parameters (as llama.cpp's Q8_0 does)."""
    treatment = None
    linear = len(shape) == 2 and LINEAR.fullmatch(name)
    if linear:
        treatment = tensor_bits(name, bits, mix, n_layers)
    elif len(shape) == 2 and name in HEAD_NAMES:
        treatment = head_bits
    if treatment in FORMATS:
        params = group_params if linear else FLOAT16
        entries = directory.quantized_entries(name, shape, treatment, group_size, params)
        return _Planned(name, tuple(shape), treatment, "", entries=entries,
                        rotation=planned_rotation(name, shape[1], rotation, group_size),
                        group_params=params)
    store, dtype = _FLOAT_STORE[treatment] if treatment in _FLOAT_STORE else _FLOAT_STORE["fp32"]
    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
    return _Planned(name, tuple(shape), None, store, [(name, store, tuple(shape), nbytes)])


def _band_rows(k: int) -> int:
    return max(1, BAND_FLOATS // max(1, k))


def _write_tensor(src, p: _Planned, writer: SafetensorsWriter, group_size, bar, quantizer=None):
    """Read, convert and write one tensor, a band of rows at a time."""
    from q35f.kernels.tensor import quantize

    if p.bits is None and len(p.shape) != 2:
        w = src.get(p.name)
        writer.write(p.name, w.astype(np.float16 if p.store == "F16" else np.float32))
        bar.update(p.n_params)
        return
    n, k = p.shape
    rows = _band_rows(k)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        w = src.get_rows(p.name, start, stop)
        if p.bits is None:
            out = w.astype(np.float16 if p.store == "F16" else np.float32)
            if p.store == "F16" and not np.isfinite(out).all() and np.isfinite(w).all():
                raise ValueError(f"{src.path}: tensor {p.name} overflows float16; use fp32")
            itemsize = out.dtype.itemsize
            writer.write(p.name, out, start * k * itemsize)
        else:
            try:
                qt = (quantize(w, group_size, p.bits) if quantizer is None
                      else quantizer(p.name, w, group_size, p.bits))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{src.path}: tensor {p.name} (rows {start}:{stop}): {err}") from None
            if qt.rotation != p.rotation:  # the metadata is written before the data
                raise RuntimeError(f"tensor {p.name}: quantized with rotation {qt.rotation!r}, "
                                   f"planned {p.rotation!r}")
            if qt.group_params != p.group_params:
                raise RuntimeError(f"tensor {p.name}: quantized with {qt.group_params} group "
                                   f"parameters, planned {p.group_params}")
            names = [e[0] for e in p.entries]
            writer.write(names[0], qt.packed, start * row_bytes(k, p.bits))
            groups = n_groups(k, group_size)
            if p.group_params == COMPACT:
                exponents, scale_codes, offset_codes = encode_group_params(
                    qt.offset, qt.scale, FORMATS[p.bits].even_levels - 1)
                writer.write(names[1], scale_codes, start * groups)
                writer.write(names[2], offset_codes, start * groups)
                writer.write(names[3], exponents, start)
            else:
                writer.write(names[1], qt.scale, start * groups * 2)
                writer.write(names[2], qt.offset, start * groups * 2)
            del qt
        del w
        bar.update((stop - start) * k)


def quantize_checkpoint(src, out, bits="q35", group_size=128, head_bits="int8", force=False,
                        progress=True, max_shard_bytes=DEFAULT_SHARD_BYTES, clip_search=False,
                        pairing="none", gptq=False, calibration=None,
                        calibration_tokens=None, importance="none", importance_prior=None,
                        damping=None, sequential=True, symmetric=False, refit=False,
                        tune_steps=0, tune_target="float-block", tune_lr=None,
                        rotation="none", propagation=0.0, group_params=FLOAT16,
                        gptq_order="natural", mix="none") -> dict:
    """Quantize checkpoint `src` (GGUF file, HF or q35f directory; None = embedded model) into
    the q35f directory `out`. Returns a summary with sizes and bits/weight.

    The keyword defaults are plain round-to-nearest; `q35f quantize` without options uses
    q35f.improve.RECIPES["calibrated"] (pass **RECIPES[...] for the same here)."""
    from tqdm import tqdm

    if bits not in FORMATS:
        _bad("bits", bits, tuple(FORMATS))
    if head_bits not in HEAD_CHOICES:
        _bad("head_bits", head_bits, HEAD_CHOICES)
    check_group_size(group_size)
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: already exists; pass --force (force=True) to overwrite")
    started = time.perf_counter()
    with open_checkpoint(src) as ck:
        if ck.path.resolve() == out.resolve() or out.resolve() in ck.path.resolve().parents:
            raise ValueError(f"{out}: the output must not be the source checkpoint {ck.path}")
        if ck.quant_config is not None:
            raise ValueError(f"{ck.path}: already quantized by q35f; quantize the original")
        check_rotation(rotation)
        check_group_params(group_params)
        if not applicable(mix, ck.config):
            print(f"q35f quantize: --mix {mix} not used: k and v are larger than half of q (no "
                  "grouped-query attention), so it would cost bits", file=sys.stderr)
            mix = "none"
        planned = [
            _plan_tensor(info.name, info.shape, bits, group_size, head_bits, rotation,
                         group_params, mix, ck.config.get("num_hidden_layers"))
            for info in ck.infos()
        ]
        config = dict(ck.config)
        config["quantization_config"] = {
            "quant_method": directory.QUANT_METHOD,
            "format_version": directory.required_version([p.rotation for p in planned],
                                                         [p.group_params for p in planned]),
            "bits": bits,
            "group_size": group_size,
            "head_bits": head_bits,
        }
        if group_params != FLOAT16:
            config["quantization_config"]["group_params"] = group_params
        if mix != "none":
            config["quantization_config"]["mix"] = mix
        improver = None  # clip search, pairing, error feedback (q35f.quantization.recipe)
        if (clip_search or gptq or pairing != "none" or importance != "none"
                or calibration is not None or refit or tune_steps or rotation != "none"
                or propagation or group_params != FLOAT16 or gptq_order != "natural"):
            from q35f.quantization.recipe import (DEFAULT_CALIBRATION_TOKENS, DEFAULT_IMPORTANCE_PRIOR,
                                  Improver)

            improver = Improver(ck, clip_search, pairing, gptq, calibration,
                                calibration_tokens or DEFAULT_CALIBRATION_TOKENS,
                                progress=progress, importance=importance,
                                importance_prior=(DEFAULT_IMPORTANCE_PRIOR
                                                  if importance_prior is None
                                                  else importance_prior),
                                damping=damping, sequential=sequential,
                                symmetric=symmetric, refit=refit, tune_steps=tune_steps,
                                tune_target=tune_target, tune_lr=tune_lr,
                                rotation=rotation, group_size=group_size,
                                propagation=propagation, group_params=group_params,
                                gptq_order=gptq_order,
                                tensor_bits={p.name: p.bits for p in planned if p.bits})
            config["quantization_config"].update(improver.describe())
        tmp = directory.partial_directory(out)
        try:
            shards = directory.shard_plan(planned, max_shard_bytes)
            names = directory.shard_names(len(shards))
            total = sum(p.n_params for p in planned)
            with tqdm(total=total, unit="w", unit_scale=True, desc=f"quantize {bits}",
                      disable=not progress, file=sys.stderr) as bar:
                for file, shard in zip(names, shards):
                    writer = SafetensorsWriter(tmp / file, shard,
                                               directory.tensor_metadata(shard, group_size))
                    try:
                        for p in shard:
                            _write_tensor(improver.source if improver else ck, p, writer,
                                          group_size, bar, improver and improver.quantize)
                    except BaseException:
                        writer.abort()
                        raise
                    writer.close()
            if len(shards) > 1:
                directory.write_index(tmp, names, shards)
            directory.write_side_files(ck, tmp, config)
            source = {"path": str(ck.path), "kind": ck.kind, "file_bytes": ck.file_bytes}
        except BaseException:
            directory.discard_partial(tmp)
            raise
    directory.replace_directory(tmp, out)
    summary = _summary(planned, out, names)
    summary.update(source=source, bits=bits, group_size=group_size, head_bits=head_bits,
                   group_params=group_params, mix=mix,
                   seconds=round(time.perf_counter() - started, 3))
    return summary


def _bad(what, value, choices):
    raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


def _summary(planned, out: Path, names) -> dict:
    quantized = [p for p in planned if p.bits is not None and LINEAR.fullmatch(p.name)]
    q_params = sum(p.n_params for p in quantized)
    q_bytes = sum(p.nbytes for p in quantized)
    total_params = sum(p.n_params for p in planned)
    file_bytes = sum((out / n).stat().st_size for n in names)
    return {
        "output": str(out),
        "tensors": len(planned),
        "params": total_params,
        "linear_params": q_params,
        "linear_bytes": q_bytes,
        "linear_bits_per_weight": 8 * q_bytes / q_params if q_params else None,
        "file_bytes": file_bytes,
        "bits_per_weight": 8 * file_bytes / total_params,
        "files": list(names),
    }


# ---------------------------------------------------------------------------------------------
# command line


def register(subparsers):
    p = subparsers.add_parser(
        "quantize",
        help="quantize a checkpoint (GGUF, HF directory) into a q35f directory",
        description="Quantize every linear layer of the transformer blocks with --bits, the token "
        "embedding / output head with --head-bits, keep norms float32; stream tensor by tensor "
        "and write an HF-style directory (config.json with quantization_config, tokenizer.json, "
        "safetensors with packed bytes, scales and offsets; docs/FORMAT.md §8).",
    )
    p.add_argument("src", nargs="?", default="default",
                   help="GGUF file or HF checkpoint directory; omitted or 'default': the "
                   "embedded SmolLM2-135M-Instruct")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--bits", default="q35", choices=list(FORMATS),
                   help="format of the transformer blocks' linear layers (default q35)")
    p.add_argument("--group-size", type=int, default=None,
                   help="weights per scale/offset group, a multiple of 16 (default 64 with e4m4 "
                   "group parameters, as in the calibrated default, else 128)")
    p.add_argument("--group-params", default=None, choices=list(GROUP_PARAMS),
                   help="how the file stores each group's scale and offset: e4m4 = one byte "
                   "each (format version 3, docs/FORMAT.md §10), "
                   "float16 = two bytes each (default e4m4; float16 with --round-to-nearest)")
    p.add_argument("--head-bits", default="int8", choices=list(HEAD_CHOICES),
                   help="format of the token embedding and output head (default int8; fp16/fp32 "
                   "keep them float)")
    recipe = p.add_mutually_exclusive_group()
    recipe.add_argument("--no-calibration", dest="recipe", action="store_const",
                        const="data-free", default="calibrated",
                        help="data-free: clip search, weight-norm pairing and the input rotation, "
                        "no calibration text (default: GPTQ error feedback, 3-bit columns first, "
                        "+ importance-weighted clip search + the input rotation + error "
                        "propagation 0.5 in groups of 64 with one-byte parameters, calibrated on "
                        "16384 tokens of the built-in generated text; both with k/v in int4, "
                        "q in int3 and o/gate/up/down in int4 at both ends of the stack and "
                        "int3 in the middle, --mix)")
    recipe.add_argument("--round-to-nearest", dest="recipe", action="store_const",
                        const="round-to-nearest",
                        help="plain per-group min/max rounding, nothing searched, calibrated or "
                        "rotated")
    p.add_argument("--clip-search", action=argparse.BooleanOptionalAction, default=None,
                   help="per group, float16 offset/scale of the shrunken range with the least "
                   "(importance-weighted) squared error instead of raw min/max")
    p.add_argument("--pairing", default=None, choices=["none", "weight", "activation"],
                   help="order input channels so the important half gets the 4-bit positions: "
                   "by weight column norms or by calibration activations (folded into the "
                   "model; the file format does not change)")
    p.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="error feedback: push each column's rounding error onto later columns "
                   "with the inverse Hessian of the calibration inputs")
    p.add_argument("--importance", default=None, choices=["none", "activation"],
                   help="weigh the clip search's squared error by each input column's E[x^2] "
                   "on the calibration text (llama.cpp's importance matrix)")
    p.add_argument("--importance-prior", type=float, default=None, metavar="P",
                   help="uniform prior mixed into the importance, (1-P) E[x^2]/mean + P "
                   "(default 0.1; 1 = unweighted)")
    p.add_argument("--damping", type=float, default=None, metavar="D",
                   help="GPTQ damping: D * mean(diag H) added to the Hessian's diagonal "
                   "(default 0.2)")
    p.add_argument("--mix", default=None, choices=list(MIXES),
                   help="q35 only: store some linears in another format within the same budget; "
                   "kv4-q3 = k_proj and v_proj in int4, q_proj in int3 (the most and the least "
                   "sensitive per weight); kv4-q3-ends = kv4-q3, and o/gate/up/down in int4 "
                   "in the first and last eighth of the blocks, in int3 in as many at the "
                   "middle (the default, but for --round-to-nearest); none = q35 everywhere")
    p.add_argument("--gptq-order", default=None, choices=["natural", "coarse-first"],
                   help="the order GPTQ rounds the columns in: coarse-first = every 3-bit "
                   "(odd) column of q35 before every 4-bit one, so the finer grid absorbs the "
                   "coarser one's errors (default with GPTQ); natural = left to right")
    p.add_argument("--propagation", type=float, default=None, metavar="A",
                   help="with GPTQ, quantize W + A W (X_float - X)^T X (X^T X)^-1 instead of W: "
                   "the weight that undoes the error of the layers before (QEP); 0 = off, "
                   "1 = the full least-squares correction (default 0.5 with GPTQ)")
    p.add_argument("--refit-scales", action="store_true",
                   help="after GPTQ, refit each row's float16 scales/offsets to its final levels "
                   "by least squares in the Hessian metric (kept only where better; implies "
                   "--rotation none --group-params float16)")
    p.add_argument("--tune-scales", action="store_true",
                   help="after GPTQ has fixed a block's levels, tune the block's float16 "
                   "scales/offsets by Adam to match the float block's output on the "
                   "calibration text (needs torch; kept only where better; implies "
                   "--rotation none)")
    p.add_argument("--tune-steps", type=int, default=None, metavar="N",
                   help="Adam steps per block of --tune-scales (default 100)")
    p.add_argument("--tune-target", default="float-block", choices=["float-block",
                   "float-stream"],
                   help="what --tune-scales matches: the float block on the quantized inputs "
                   "(default) or the float model's own hidden states")
    p.add_argument("--rotation", default=None, choices=list(ROTATIONS),
                   help="hadamard: store each linear weight as W R, R a random-sign Hadamard "
                   "rotation per group of input columns, and rotate the inputs at run time "
                   "(O(K log K) per token): no group has outliers to stretch its range over "
                   "(format version 2, docs/FORMAT.md §9)")
    p.add_argument("--calibration", default=None, metavar="FILE|CORPUS",
                   help="calibration text: a text file or a corpus name (generated, pydoc, "
                   "emma, ...; default generated: text the embedded model wrote itself)")
    p.add_argument("--calibration-tokens", type=int, default=None, metavar="N",
                   help="calibration tokens, in sequences of 128 (default 16384)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.add_argument("--max-shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 1024**3,
                   help="largest safetensors file before sharding (default 2)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_quantize_command)



def recipe_options(args) -> dict:
    """quantize_checkpoint options of the chosen recipe, overridden by the flags given."""
    from q35f.quantization.recipe import RECIPES

    options = dict(RECIPES[args.recipe])
    for key in ("clip_search", "pairing", "gptq", "importance", "rotation", "gptq_order", "mix"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if not options["clip_search"] and args.importance is None:
        options["importance"] = "none"  # --no-clip-search: nothing left to weigh
    options.update(calibration=args.calibration, calibration_tokens=args.calibration_tokens,
                   importance_prior=args.importance_prior, damping=args.damping)
    if args.group_params is not None:
        options["group_params"] = args.group_params
    if args.propagation is not None:
        options["propagation"] = args.propagation
    elif not options["gptq"]:
        options.pop("propagation", None)  # --no-gptq: no GPTQ targets to correct
    if not options["gptq"] and args.gptq_order is None:
        options.pop("gptq_order", None)  # --no-gptq: no columns to order
    if args.tune_steps is not None and not args.tune_scales:
        raise ValueError("--tune-steps is the step count of --tune-scales: pass both")
    if (args.refit_scales or args.tune_scales) and args.rotation is None:
        options["rotation"] = "none"  # they fit parameters to unrotated weights (Improver)
    if (args.refit_scales or args.tune_scales) and args.group_params is None:
        options.pop("group_params", None)  # they write float16 parameters
    if args.refit_scales:
        options["refit"] = True
    if args.tune_scales:
        from q35f.quantization.tune import DEFAULT_TUNE_STEPS

        options.update(tune_steps=(DEFAULT_TUNE_STEPS if args.tune_steps is None
                                   else args.tune_steps), tune_target=args.tune_target)
    return options


def _quantize_command(args) -> int:
    from q35f.quantization.recipe import default_group_size

    options = recipe_options(args)
    group_size = (default_group_size(options.get("group_params", FLOAT16))
                  if args.group_size is None else args.group_size)
    summary = quantize_checkpoint(
        args.src, args.output, bits=args.bits, group_size=group_size,
        head_bits=args.head_bits, force=args.force, progress=not args.no_progress,
        max_shard_bytes=int(args.max_shard_gb * 1024**3), **options,
    )
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"wrote {s['output']}: {s['tensors']} tensors, {s['params']:,} weights, "
          f"{format_bytes(s['file_bytes'])} in {s['seconds']:.1f} s")
    if s["linear_params"]:
        params = "" if s.get("group_params", FLOAT16) == FLOAT16 else f", {s['group_params']}"
        if s.get("mix", "none") != "none":
            mixed = ", ".join(f"{p.split('_')[0]} {b}" for p, b in MIXES[s["mix"]].items())
            if s["mix"] in BY_DEPTH:
                mixed += ("; o/gate/up/down int4 in the first and last eighth of the blocks, "
                          "int3 in as many at the middle")
            params += f", mix {s['mix']}: {mixed}"
        print(f"  linear layers ({s['bits']}, G={s['group_size']}{params}): "
              f"{s['linear_bits_per_weight']:.4f} bits/weight, {s['linear_params']:,} weights")
    print(f"  embedding/head: {s['head_bits']}; norms: fp32")
    print(f"  whole file: {s['bits_per_weight']:.4f} bits/weight "
          f"(source {s['source']['kind']}: {format_bytes(s['source']['file_bytes'])})")
    return 0
