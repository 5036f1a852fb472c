"""Measure quantization options: quantize the model with each, then its perplexity on held-out text.

    python -m q35f.measure.quality --out results/quality.csv --windows 16 --eval prideprejudice,pydoc \
        --config rtn: --config clip:clip_search=1 --config gptq:gptq=1,calibration=emma

Each config is quantized once and measured on every --eval text (one CSV row per text).

Perplexity: the text is tokenized once; the first `windows` non-overlapping windows of
`window` tokens are run through the model, every token but the first of each window scored
(the yardstick's protocol). The float32 model is the source checkpoint itself; ΔPPL is
relative to it. With --kl the same windows also give the mean KL divergence from the float
model's next-token distribution and the top-1 agreement with it (llama.cpp's `perplexity
--kl-divergence` measures; the float model runs again beside each config). Every number written
comes from the run that writes it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path



def perplexity(model_path, text: str, windows: int = 64, window: int = 512,
               progress: bool = True, reference=None) -> dict:
    """q35f.measure.perplexity's result (ppl, tokens, ...) for a checkpoint (None = embedded
    model) on the first `windows` windows of `text`; with a `reference` Model (the float
    source), also the KL divergence and top-1 agreement to it."""
    from q35f.measure import perplexity as ppl
    from q35f.runtime.model import load_model

    model, ck = load_model(model_path, max_seq_len=window)
    try:
        ids = ppl.tokenize(ck.tokenizer, text)
    finally:
        ck.close()
    return ppl.perplexity(model, ids, ctx=window, max_tokens=windows * window, progress=progress,
                          reference=reference)


def _widen(path: Path, fields) -> None:
    """Rewrite CSV `path` with header `fields` if it lacks some (old rows get empty cells)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if set(fields) <= set(reader.fieldnames or ()):
            return
        extra = [c for c in reader.fieldnames or () if c not in fields]
        if extra:
            raise ValueError(f"{path}: unknown columns {extra}; write to a new --out file")
        rows = list(reader)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _load() -> str:
    """The 1-minute load average now (the machine is shared: times need it next to them)."""
    return f"load avg {os.getloadavg()[0]:.1f}"


def _parse_config(spec: str):
    """'name:key=value,key=value' -> (name, kwargs of quantize_checkpoint)."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "recipe":  # q35f.improve.RECIPES: what the CLI's recipe flags select
            from q35f.quantization.recipe import RECIPE_GROUP_SIZE, RECIPES

            kwargs.update(RECIPES[value], group_size=RECIPE_GROUP_SIZE[value])
        elif key in ("clip_search", "gptq", "sequential", "refit", "symmetric"):
            kwargs[key] = value not in ("0", "false", "")
        elif key in ("group_size", "calibration_tokens", "tune_steps"):
            kwargs[key] = int(value)
        elif key in ("importance_prior", "damping", "tune_lr", "propagation"):
            kwargs[key] = float(value)
        else:
            kwargs[key] = value
    return name, kwargs


def main(argv=None) -> int:
    from q35f.quantization.convert import quantize_checkpoint

    parser = argparse.ArgumentParser(prog="python -m q35f.measure.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=None, help="source checkpoint (default: embedded)")
    parser.add_argument("--eval", default="prideprejudice",
                        help="evaluation corpora or files, comma-separated")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--config", action="append", default=[],
                        help="NAME:key=value,... options of quantize_checkpoint (repeatable)")
    parser.add_argument("--fp32", action="store_true", help="also measure the float model")
    parser.add_argument("--fp32-from", metavar="CSV", default=None,
                        help="take the float model's PPL from the fp32 rows of an earlier run "
                        "with the same --windows/--window instead of measuring it again")
    parser.add_argument("--out", required=True, help="CSV to append rows to")
    parser.add_argument("--kl", action="store_true",
                        help="also the KL divergence to the float model and the top-1 agreement "
                        "(runs the float model beside each config)")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="keep each quantized model as DIR/NAME (default: a temporary one)")
    args = parser.parse_args(argv)

    from q35f.quantization import calibrate
    from q35f.quantization.calibrate import calibration_text

    calibrate.CACHE = True  # configs sharing a calibration compute it once

    evals = [e for e in args.eval.split(",") if e]
    texts = {e: calibration_text(e) for e in evals}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["config", "options", "bits", "group_size", "linear_bits_per_weight",
              "file_bits_per_weight", "quantize_seconds", "eval", "windows", "tokens", "ppl",
              "delta_ppl_pct", "fp32_ppl", "kl_divergence", "top1_agreement", "note"]
    new = not out.exists()
    if not new:
        _widen(out, fields)
    fp32 = {}
    if args.fp32_from:
        with open(args.fp32_from, newline="") as old:
            fp32 = {r["eval"]: float(r["ppl"]) for r in csv.DictReader(old)
                    if r["config"] == "fp32" and int(r["windows"]) == args.windows}
    reference = None  # the float model, loaded once for every config's KL divergence
    if args.kl:
        from q35f.io.checkpoint import default_model_path
        from q35f.runtime.model import load_model

        reference, ref_ck = load_model(args.src if args.src is not None
                                       else default_model_path(), max_seq_len=args.window)
        ref_ck.close()
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        if args.fp32:
            for e in evals:
                r = perplexity(args.src, texts[e], args.windows, args.window)
                fp32[e], tokens = r["ppl"], r["tokens"]
                writer.writerow({"config": "fp32", "options": "{}", "bits": "fp32",
                                 "ppl": f"{fp32[e]:.4f}", "eval": e, "windows": args.windows,
                                 "tokens": tokens, "delta_ppl_pct": "0.00",
                                 "fp32_ppl": f"{fp32[e]:.4f}", "note": _load()})
                f.flush()
                print(f"fp32 {e}: ppl {fp32[e]:.4f} on {tokens} tokens", flush=True)
        for spec in args.config:
            name, kwargs = _parse_config(spec)
            with tempfile.TemporaryDirectory(prefix="q35f-quality-") as tmp:
                model = Path(args.keep) / name if args.keep else Path(tmp) / "model"
                started, cpu = time.perf_counter(), time.process_time()
                summary = quantize_checkpoint(args.src, model, progress=True, force=True,
                                              **kwargs)
                seconds = time.perf_counter() - started
                note = f"{_load()}; quantize cpu {time.process_time() - cpu:.0f} s"
                for e in evals:
                    r = perplexity(model, texts[e], args.windows, args.window,
                                   reference=reference)
                    ppl, tokens = r["ppl"], r["tokens"]
                    row = {"config": name, "options": json.dumps(kwargs, sort_keys=True),
                           "bits": summary["bits"], "group_size": summary["group_size"],
                           "linear_bits_per_weight": f"{summary['linear_bits_per_weight']:.4f}",
                           "file_bits_per_weight": f"{summary['bits_per_weight']:.4f}",
                           "quantize_seconds": f"{seconds:.1f}", "eval": e,
                           "windows": args.windows, "tokens": tokens, "ppl": f"{ppl:.4f}",
                           "note": note}
                    if args.kl:
                        row["kl_divergence"] = f"{r['kl_divergence']:.5f}"
                        row["top1_agreement"] = f"{r['top1_agreement']:.4f}"
                    if e in fp32:
                        row["fp32_ppl"] = f"{fp32[e]:.4f}"
                        row["delta_ppl_pct"] = f"{100 * (ppl / fp32[e] - 1):.2f}"
                    writer.writerow(row)
                    f.flush()
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
