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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax of rows (T, V): float32 values, each row's normaliser summed in float64."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=np.float64))
    shifted -= log_z.astype(np.float32)
    return shifted


def window_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log softmax(logits[i])[targets[i]] over the rows of logits (T, V)."""
    return float(-log_softmax(logits)[np.arange(targets.size), targets].sum(dtype=np.float64))


def perplexity(model, token_ids, ctx: int = DEFAULT_CTX, max_tokens: int | None = None,
               progress: bool = False, reference=None) -> dict:
    """PPL of `model` (a q35f.runtime.model.Model or a checkpoint path) on `token_ids`.

    The one protocol every q35f number uses: the first `max_tokens` ids (all when None) cut into
    non-overlapping windows of `ctx`, each run from an empty KV cache, every token but a window's
    first scored (a last partial window counts when it has two tokens or more).
    With `reference` (a float Model or path of the same vocabulary, usually the unquantized
    source) the same windows also give the mean KL divergence KL(P_reference || P_model) per
    scored token and the top-1 agreement (how often both models' most likely next token is the
    same), as llama.cpp's `perplexity --kl-divergence` reports them.

    Returns a dict with ppl, nll (mean, nats), tokens (scored), windows, ctx, seconds, the
    model's bits per weight and, with a reference, kl_divergence, top1_agreement, reference_ppl.
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
    if reference is not None and not isinstance(reference, Model):
        reference, _ = load_model(reference, max_seq_len=ctx)
    for m in (model, reference):
        if m is not None and ctx > m.max_seq_len:
            raise ValueError(f"ctx {ctx} exceeds the model's context of {m.max_seq_len} tokens")
    if reference is not None and reference.config.vocab_size != model.config.vocab_size:
        raise ValueError("the reference model has a different vocabulary")

    starts = [s for s in range(0, ids.size, ctx) if ids[s:s + ctx].size >= 2]
    nll = ref_nll = kl = 0.0
    agree = scored = 0
    began = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc="perplexity", unit="window", file=sys.stderr)
    for start in starts:
        window = ids[start:start + ctx]
        targets = window[1:]
        rows = np.arange(targets.size)
        logp = log_softmax(model.forward(window, 0, all_logits=True)[:-1])
        nll -= logp[rows, targets].sum(dtype=np.float64)
        if reference is not None:
            ref_logp = log_softmax(reference.forward(window, 0, all_logits=True)[:-1])
            ref_nll -= ref_logp[rows, targets].sum(dtype=np.float64)
            kl += (np.exp(ref_logp) * (ref_logp - logp)).sum(dtype=np.float64)
            agree += int((ref_logp.argmax(axis=1) == logp.argmax(axis=1)).sum())
        scored += targets.size
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ppl=f"{np.exp(nll / scored):.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - began
    stats = model.stats()
    mean = nll / scored
    result = {
        "ppl": float(np.exp(mean)),
        "nll": float(mean),
        "tokens": int(scored),
        "windows": len(starts),
        "ctx": int(ctx),
        "seconds": seconds,
        "tokens_per_s": (scored + len(starts)) / seconds,
        "bits_per_weight": stats["block_bits_per_weight"],
        "model_bits_per_weight": stats["bits_per_weight"],
        "params": stats["params"],
    }
    if reference is not None:
        result.update(kl_divergence=float(kl / scored), top1_agreement=agree / scored,
                      reference_ppl=float(np.exp(ref_nll / scored)))
    return result


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
    p.add_argument("--reference", metavar="MODEL", default=None,
                   help="also report the mean KL divergence from this (float) model's next-token "
                        "distribution and the top-1 agreement with it, e.g. the unquantized source")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_command)


def _command(args) -> int:
    from q35f.runtime.model import load_model

    if args.model is not None and not Path(args.model).exists():
        raise FileNotFoundError(f"MODEL {args.model} does not exist")
    text, label = load_text(args.text, args.corpus)
    model, ckpt = load_model(args.model, max_seq_len=args.ctx)
    ids = tokenize(ckpt.tokenizer, text)
    if args.reference is not None and not Path(args.reference).exists():
        raise FileNotFoundError(f"--reference {args.reference} does not exist")
    result = perplexity(model, ids, ctx=args.ctx, max_tokens=args.max_tokens,
                        progress=not args.json, reference=args.reference)
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
    if "kl_divergence" in result:
        print(f"vs reference    PPL {result['reference_ppl']:.4f}, mean KL divergence "
              f"{result['kl_divergence']:.5f} nats/token, top-1 agreement "
              f"{100 * result['top1_agreement']:.2f} %")
    print(f"bits/weight     {result['bits_per_weight']:.4f} (transformer linear layers), "
          f"{result['model_bits_per_weight']:.4f} (all weights as run), "
          f"{result['file_bits_per_weight']:.4f} (file)")
    print(f"time            {result['seconds']:.1f} s ({result['tokens_per_s']:.0f} tokens/s)")
    return 0
