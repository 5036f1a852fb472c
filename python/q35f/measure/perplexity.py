"""Perplexity on real text: `q35f perplexity MODEL --text FILE | --corpus NAME`.

The token stream is cut into non-overlapping windows of `ctx` tokens; each window starts with an
empty KV cache and every token but its first is scored, so PPL = exp(mean negative log-likelihood
over all scored tokens). The text is tokenized once; callers comparing variants of one model pass
the same ids to `perplexity` for each.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CTX = 512
DEFAULT_CORPUS = "prideprejudice"


def window_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log softmax(logits[i])[targets[i]] over rows; logits (T, V) are overwritten."""
    rows = np.arange(targets.size)
    target_logits = logits[rows, targets].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    logits -= top
    np.exp(logits, out=logits)
    log_z = np.log(logits.sum(axis=1, dtype=np.float64)) + top[:, 0].astype(np.float64)
    return float((log_z - target_logits).sum())


def perplexity(model, token_ids, ctx: int = DEFAULT_CTX, max_tokens: int | None = None,
               progress: bool = False) -> dict:
    """PPL of `model` (a q35f.model.Model or a checkpoint path) on `token_ids`.

    Uses the first `max_tokens` ids (all when None). Returns a dict with ppl, nll (mean, nats),
    tokens (scored), windows, ctx, seconds and the model's bits per weight.
    """
    from q35f.runtime.model import Model, load_model

    if ctx < 2:
        raise ValueError(f"ctx must be at least 2, got {ctx}")
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        ids = ids[:max_tokens]
    if ids.size < 2:
        raise ValueError(f"need at least 2 tokens to score, got {ids.size}")
    if not isinstance(model, Model):
        model, _ = load_model(model, max_seq_len=ctx)
    if ctx > model.max_seq_len:
        raise ValueError(f"ctx {ctx} exceeds the model's context of {model.max_seq_len} tokens")

    starts = [s for s in range(0, ids.size, ctx) if ids[s:s + ctx].size >= 2]
    total_nll = 0.0
    scored = 0
    began = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc="perplexity", unit="window", file=sys.stderr)
    for start in starts:
        window = ids[start:start + ctx]
        logits = model.forward(window, 0, all_logits=True)
        total_nll += window_nll(logits[:-1], window[1:])
        scored += window.size - 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ppl=f"{np.exp(total_nll / scored):.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - began
    stats = model.stats()
    mean = total_nll / scored
    return {
        "ppl": float(np.exp(mean)),
        "nll": mean,
        "tokens": int(scored),
        "windows": len(starts),
        "ctx": int(ctx),
        "seconds": seconds,
        "tokens_per_s": (scored + len(starts)) / seconds,
        "bits_per_weight": stats["block_bits_per_weight"],
        "model_bits_per_weight": stats["bits_per_weight"],
        "params": stats["params"],
    }


def load_text(text_file=None, corpus: str | None = None) -> tuple[str, str]:
    """(text, label) from a file or a named corpus (q35f.io.corpora)."""
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise FileNotFoundError(f"--text {path}: no such file")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as err:
            raise ValueError(f"--text {path}: not UTF-8 text ({err.reason})") from None
    from q35f.io import corpora

    name = corpora.canonical_name(corpus or DEFAULT_CORPUS)
    return corpora.text(name), name


def tokenize(tokenizer, text: str) -> list[int]:
    """The text's ids without special tokens (no BOS): every window is plain running text."""
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


# --- command -------------------------------------------------------------------------------------


def register(subparsers):
    p = subparsers.add_parser(
        "perplexity", help="perplexity of a model on a text file or a named corpus",
        description="Perplexity over non-overlapping windows of --ctx tokens (every token but "
                    "the first of each window is scored). MODEL is a GGUF file, a Hugging Face "
                    "directory or a q35f directory; unquantized models run in float32. "
                    f"Without --text or --corpus the corpus is {DEFAULT_CORPUS}.")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="checkpoint (default: the embedded SmolLM2-135M-Instruct)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", help="a UTF-8 text file")
    source.add_argument("--corpus", metavar="NAME",
                        help="pydoc, prideprejudice, emma, sensesensibility, persuasion, "
                             "mansfieldpark, northangerabbey (fetched once, cached)")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX,
                   help=f"window length in tokens (default {DEFAULT_CTX})")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="use only the first N tokens of the text (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_command)


def _command(args) -> int:
    from q35f.runtime.model import load_model

    if args.model is not None and not Path(args.model).exists():
        raise FileNotFoundError(f"MODEL {args.model} does not exist")
    text, label = load_text(args.text, args.corpus)
    model, ckpt = load_model(args.model, max_seq_len=args.ctx)
    ids = tokenize(ckpt.tokenizer, text)
    result = perplexity(model, ids, ctx=args.ctx, max_tokens=args.max_tokens,
                        progress=not args.json)
    result.update({
        "model": str(ckpt.path),
        "text": label,
        "file_bytes": ckpt.file_bytes,
        "file_bits_per_weight": 8 * ckpt.file_bytes / result["params"],
    })
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model           {ckpt.path}")
    print(f"text            {label} ({len(ids)} tokens, {result['tokens']} scored in "
          f"{result['windows']} windows of {args.ctx})")
    print(f"PPL             {result['ppl']:.4f}")
    print(f"bits/weight     {result['bits_per_weight']:.4f} (transformer linear layers), "
          f"{result['model_bits_per_weight']:.4f} (all weights as run), "
          f"{result['file_bits_per_weight']:.4f} (file)")
    print(f"time            {result['seconds']:.1f} s ({result['tokens_per_s']:.0f} tokens/s)")
    return 0
