"""`q35f compare`: fp32, int8, int4, q35 and int3 of one model, side by side, on the same text.

For each variant: quantize the model (q35f.quantization.convert, cached under ~/.cache/q35f/models), measure
perplexity on the same token ids (tokenized once), and benchmark it in a fresh process
(q35f.measure.benchmark). "fp32" is the source checkpoint run in float32; its size is that of its float32
weights (a GGUF source may be smaller on disk, being quantized itself).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

VARIANTS = ("fp32", "int8", "int4", "q35", "int3")
DEFAULT_MAX_TOKENS = 4096
QUICK = {"max_tokens": 1024, "ctx": 256, "runs": 1, "prompt_tokens": 128, "decode_tokens": 32}

COLUMNS = [  # (key, header, format)
    ("variant", "variant", "{}"),
    ("bits_per_weight", "bits/w layers", "{:.3f}"),
    ("file_bits_per_weight", "bits/w file", "{:.3f}"),
    ("size_mb", "size MB", "{:.1f}"),
    ("ppl", "PPL", "{:.3f}"),
    ("delta_ppl_pct", "ΔPPL %", "{:+.2f}"),
    ("kl_divergence", "KL vs fp32", "{:.4f}"),
    ("top1_agreement", "top-1", "{:.1%}"),
    ("decode_tok_s", "decode tok/s", "{:.1f}"),
    ("prompt_tok_s", "prompt tok/s", "{:.1f}"),
    ("ttft_ms", "TTFT ms", "{:.0f}"),
    ("peak_rss_mb", "RSS MB", "{:.0f}"),
]


def default_recipe(bits: str) -> str:
    """q35 is measured as `q35f quantize` makes it; the int baselines with plain rounding."""
    return "calibrated" if bits == "q35" else "round-to-nearest"


def variant_path(source, bits: str, group_size: int, head_bits: str, out_dir=None,
                 force: bool = False, progress: bool = True, recipe: str | None = None) -> Path:
    """The q35f directory of `source` quantized with `bits` and `recipe` (q35f.improve.RECIPES;
    default: default_recipe(bits)), made once and reused."""
    from q35f.io.checkpoint import open_checkpoint
    from q35f.quantization.convert import quantize_checkpoint
    from q35f.io.corpora import cache_dir
    from q35f.format.group_params import FLOAT16
    from q35f.quantization.gptq import DEFAULT_DAMPING
    from q35f.quantization.recipe import DEFAULT_CALIBRATION_TOKENS, RECIPES

    recipe = recipe or default_recipe(bits)
    options = RECIPES[recipe]
    source = Path(source)
    root = Path(out_dir) if out_dir is not None else cache_dir() / "models"
    stem = source.name[:-5] if source.name.endswith(".gguf") else source.name
    out = root / f"{stem}-{bits}-g{group_size}-head{head_bits}-{recipe}"
    if out.exists() and not force:
        try:
            with open_checkpoint(out) as ck:
                qc = ck.quant_config or {}
            absent = {"clip_search": False, "pairing": "none", "gptq": False, "importance": "none",
                      "rotation": "none", "propagation": 0, "group_params": FLOAT16,
                      "gptq_order": "natural", "mix": "none"}
            same = all(qc.get(key, absent[key]) == value for key, value in options.items())
            if options.get("gptq"):  # a file made by an older default is made again
                same = same and qc.get("damping") == DEFAULT_DAMPING and qc.get(
                    "calibration", {}).get("tokens") == DEFAULT_CALIBRATION_TOKENS
            if (qc.get("bits"), qc.get("group_size"), qc.get("head_bits")) == (
                    bits, group_size, head_bits) and same:
                return out
        except (ValueError, FileNotFoundError, KeyError):
            pass  # unreadable or different: make it again
        force = True
    quantize_checkpoint(source, out, bits=bits, group_size=group_size, head_bits=head_bits,
                        force=force, progress=progress, **options)
    return out


def compare(model=None, bits=VARIANTS, group_size: int | None = None, corpus: str | None = None,
            text_file=None, ctx: int = 512, max_tokens: int | None = DEFAULT_MAX_TOKENS,
            runs: int = 3, prompt_tokens: int = 512, decode_tokens: int = 128,
            head_bits: str = "int8", out_dir=None, force: bool = False, speed: bool = True,
            progress: bool = True, recipe: str | None = None,
            threads: int | None = None) -> list[dict]:
    """One dict per variant with sizes, PPL, ΔPPL vs the first fp32 row, speed and memory;
    group_size None: each variant's recipe's own (q35f.quantization.recipe.RECIPE_GROUP_SIZE)."""
    from q35f.quantization.recipe import RECIPE_GROUP_SIZE

    from q35f.measure.benchmark import bench_model
    from q35f.io.checkpoint import default_model_path, open_checkpoint
    from q35f.runtime.model import load_model
    from q35f.measure.perplexity import load_text, perplexity, tokenize

    source = Path(model) if model is not None else default_model_path()
    if not source.exists():
        raise FileNotFoundError(f"MODEL {source} does not exist")
    from q35f.format.spec import FORMATS

    for b in bits:
        if b != "fp32" and b not in FORMATS:
            raise ValueError(f"--bits: {b!r} is not one of fp32, {', '.join(FORMATS)}")
    text, label = load_text(text_file, corpus)
    with open_checkpoint(source) as ck:
        ids = tokenize(ck.tokenizer, text)  # once, for every variant
    # The float model of the source scores the same windows next to every quantized variant:
    # the KL divergence and top-1 agreement columns.
    reference = load_model(source, max_seq_len=ctx)[0] if any(b != "fp32" for b in bits) else None
    rows = []
    for b in bits:
        began = time.perf_counter()
        if progress:
            print(f"[{b}]", file=sys.stderr)
        g = (RECIPE_GROUP_SIZE[recipe or default_recipe(b)] if group_size is None
             else group_size)
        path = source if b == "fp32" else variant_path(source, b, g, head_bits, out_dir,
                                                         force, progress, recipe)
        model_, ckpt = load_model(path, max_seq_len=ctx)
        stats = model_.stats()
        result = perplexity(model_, ids, ctx=ctx, max_tokens=max_tokens, progress=progress,
                            reference=None if b == "fp32" else reference)
        size = stats["weight_bytes"] if b == "fp32" else ckpt.file_bytes
        del model_, ckpt
        row = {
            "variant": b,
            "group_size": None if b == "fp32" else g,
            "head_bits": None if b == "fp32" else head_bits,
            "recipe": None if b == "fp32" else (recipe or default_recipe(b)),
            "path": str(path),
            "bits_per_weight": result["bits_per_weight"],
            "file_bits_per_weight": 8 * size / stats["params"],
            "size_mb": size / 2**20,
            "size_is": "float32 weights" if b == "fp32" else "file",
            "ppl": result["ppl"],
            "kl_divergence": result.get("kl_divergence", 0.0 if b == "fp32" else None),
            "top1_agreement": result.get("top1_agreement", 1.0 if b == "fp32" else None),
            "tokens": result["tokens"],
            "ctx": ctx,
            "text": label,
        }
        if speed:
            bench = bench_model(path, runs=runs, prompt_tokens=prompt_tokens,
                                decode_tokens=decode_tokens, threads=threads)
            row.update({k: bench[k] for k in ("decode_tok_s", "prompt_tok_s", "ttft_ms",
                                              "peak_rss_mb", "rss_after_load_mb")})
            row.update(runs=runs, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens,
                       threads=bench["threads"])
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
    base = next((r["ppl"] for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        r["delta_ppl_pct"] = 100 * (r["ppl"] / base - 1) if base else None
    return rows


def format_table(rows: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- command -------------------------------------------------------------------------------------


def register(subparsers):
    p = subparsers.add_parser(
        "compare", help="fp32 vs int8/int4/q35/int3 of one model: size, PPL, speed, memory",
        description="Quantize MODEL to each variant (cached), then measure bits/weight, size, "
                    "perplexity on the same tokens (ΔPPL vs fp32), decode and prompt speed, "
                    "time to first token and peak RSS (each benchmark in a fresh process).")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="GGUF file or HF directory (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--bits", default=",".join(VARIANTS),
                   help=f"comma-separated variants (default {','.join(VARIANTS)})")
    p.add_argument("--group-size", type=int, default=None,
                   help="group size G (default: each recipe's, 64 for the calibrated q35, 128 "
                   "for the round-to-nearest formats)")
    p.add_argument("--head-bits", default="int8",
                   help="format of the embedding/output head in quantized variants (default int8)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--corpus", default=None,
                        help="named corpus for perplexity (default prideprejudice)")
    source.add_argument("--text", metavar="FILE", help="a UTF-8 text file for perplexity")
    p.add_argument("--ctx", type=int, default=None, help="perplexity window (default 512)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"tokens of text scored (default {DEFAULT_MAX_TOKENS}; 0 = all)")
    p.add_argument("--runs", type=int, default=None, help="benchmark repetitions (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized: 1024 tokens, ctx 256, 1 run, 128-token prompt, 32 decoded")
    p.add_argument("--recipe", default=None,
                   choices=["calibrated", "data-free", "round-to-nearest"],
                   help="quantize every variant with this q35f quantize recipe (default: "
                        "calibrated, what plain q35f quantize does, for q35; round-to-nearest "
                        "for the int8/int4/int3 baselines)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the benchmark processes (default: all cores)")
    p.add_argument("--no-speed", action="store_true", help="only sizes and perplexity")
    p.add_argument("--out-dir", default=None,
                   help="where quantized variants go (default ~/.cache/q35f/models)")
    p.add_argument("--force", action="store_true", help="quantize again even if cached")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list of rows")
    out.add_argument("--csv", action="store_true", help="print CSV")
    p.set_defaults(func=_command)


def _command(args) -> int:
    settings = {"max_tokens": DEFAULT_MAX_TOKENS, "ctx": 512, "runs": 3, "prompt_tokens": 512,
                "decode_tokens": 128}
    if args.quick:
        settings.update(QUICK)
    for key in ("max_tokens", "ctx", "runs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["max_tokens"] == 0:
        settings["max_tokens"] = None
    bits = [b.strip() for b in args.bits.split(",") if b.strip()]
    if not bits:
        raise ValueError("--bits must name at least one variant")
    quiet = args.json or args.csv
    rows = compare(args.model, bits, args.group_size, args.corpus, args.text,
                   head_bits=args.head_bits, out_dir=args.out_dir, force=args.force,
                   speed=not args.no_speed, progress=not quiet, recipe=args.recipe,
                   threads=args.threads, **settings)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        sys.stdout.write(to_csv(rows))
    else:
        r0 = rows[0]
        print(f"{Path(r0['path']).name if r0['variant'] == 'fp32' else r0['path']}: "
              f"PPL on {r0['text']} ({r0['tokens']} tokens scored, ctx {r0['ctx']}); "
              f"group size {args.group_size or 'of each recipe'}, embedding/head {args.head_bits}"
              f", recipe {args.recipe or 'calibrated for q35, round-to-nearest otherwise'}")
        print(format_table(rows))
    return 0
