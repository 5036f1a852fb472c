"""Would a format v2 pay? Fake-quantization probe of per-group rotations and a 2-D codebook.

Each variant quantizes every linear layer of the embedded model with sequential GPTQ on the
default calibration (the built-in `generated` corpus, 8,192 tokens), dequantizes it, undoes the
rotation and evaluates the resulting *float* model with the one perplexity protocol (and KL
divergence / top-1 agreement to the float model). The embedding/head is int8 G=128 as in a q35f
file. A float model with the dequantized weights computes what a v2 runtime would compute, so
the numbers say what the format would reach before any kernel is written.

    default  what `q35f quantize` does (activation pairing, importance-weighted clip search, GPTQ)
    rot_q35  random-sign block-Hadamard rotation of each group of input columns, then the v1
             16 x 8 grid by GPTQ (no pairing: a rotation mixes the channels it would sort)
    rot_cb   the same rotation, then a 128-point 2-D codebook (Lloyd on a standard Gaussian)
             per pair of weights with the group's float16 offset and scale: same 3.5 + 0.25 bits
    rot_cb_clip  rot_cb with each group's scale chosen among 0.80..1.20 x rms by Hessian-weighted
             error
    rot_d2, rot_d2_clip  the same with a structured codebook: both weights of a pair on the
             16-level grid, their levels of equal parity (the D2 "checkerboard" lattice, 128
             points; it decodes with shifts and masks like the v1 grid, no table)
    d2_clip  the checkerboard without a rotation (no run-time transform), parameters as in a
             file: offset + scale * level, the range's shrink chosen by Hessian-weighted error
    rot_d2mm_clip  d2_clip after the rotation

The rotation of an input block of n columns is R = D H / sqrt(n) (D random signs, H Sylvester's
Hadamard matrix): W' = W R is quantized and x' = R^T x is what the runtime would feed it.

    .venv/bin/python bench/codebook_probe.py --variant rot_cb --windows 16 --out FILE.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np

from q35f.kernels.reference import hadamard

VARIANTS = ("default", "rot_q35", "rot_cb", "rot_cb_clip", "rot_d2", "rot_d2_clip", "d2_clip",
            "rot_d2mm_clip")
GROUP = 128


def rotation(k: int, name: str, group: int = GROUP) -> np.ndarray:
    """Block-diagonal orthogonal R (k, k): one D H / sqrt(n) per group of input columns."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    r = np.zeros((k, k))
    for first in range(0, k, group):
        n = min(group, k - first)
        signs = rng.choice([-1.0, 1.0], size=n)
        r[first:first + n, first:first + n] = signs[:, None] * hadamard(n) / np.sqrt(n)
    return r


def gaussian_codebook(points: int = 128, samples: int = 200_000, iterations: int = 60,
                      seed: int = 0) -> np.ndarray:
    """Lloyd's algorithm on standard 2-D Gaussian samples: (points, 2) float32."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((samples, 2))
    c = z[rng.choice(samples, points, replace=False)]
    for _ in range(iterations):
        idx = nearest(z, c)
        counts = np.bincount(idx, minlength=points)
        for d in range(2):
            sums = np.bincount(idx, weights=z[:, d], minlength=points)
            c[:, d] = np.where(counts > 0, sums / np.maximum(counts, 1), c[:, d])
    return c.astype(np.float32)


def checkerboard_codebook(step: float = 0.3131) -> np.ndarray:
    """The 128 points step * (l1 - 7.5, m - 7.5), l1, m in 0..15 of equal parity, (128, 2);
    step minimises the squared error of a standard 2-D Gaussian (0.0205 per coordinate against
    0.0249 for the best 16 x 8 product grid and 0.0155 for the Lloyd codebook)."""
    l1 = np.repeat(np.arange(16), 8)
    m = 2 * np.tile(np.arange(8), 16) + (l1 & 1)
    return (step * np.stack([l1 - 7.5, m - 7.5], axis=1)).astype(np.float32)


def nearest(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest row of c for every row of z (squared Euclidean distance)."""
    d = (c * c).sum(axis=1)[None, :] - 2 * (z @ c.T)
    return d.argmin(axis=1)


def feed_back_group(work, u, first, last, out, round_pair):
    """GPTQ over the pairs of columns first..last of `work` (updated in place): each pair is
    rounded jointly by round_pair((N, 2)) -> (N, 2) into `out`; its error E = (W_B - Q_B) U_BB^-1
    reaches the later columns as W_rest -= E U_B,rest (the block form of GPTQ's update)."""
    block = work[:, first:last]
    errors = np.empty_like(block)
    for i in range(0, last - first, 2):
        c = first + i
        pair = block[:, i:i + 2]
        q = round_pair(pair)
        out[:, c:c + 2] = q
        e = (pair - q) @ np.linalg.inv(u[c:c + 2, c:c + 2]).astype(np.float32)
        errors[:, i:i + 2] = e
        block[:, i + 2:] -= e @ u[c:c + 2, c + 2:last]
    if last < work.shape[1]:
        work[:, last:] -= errors @ u[first:last, last:]


def gptq_codebook(w, u, cb, group=GROUP, clip=False, h_diag=None):
    """Dequantized w (N, K) by GPTQ over pairs of columns (feed_back_group) on offset + scale *
    cb, each pair rounded to its nearest codebook point. Group parameters (float16) are fixed
    when the group is reached."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    if k % 2:
        raise ValueError("odd number of input columns")
    u = u.astype(np.float32)
    work = w.copy()
    out = np.empty_like(work)
    factors = np.linspace(0.8, 1.2, 9) if clip else np.array([1.0])
    for first in range(0, k, group):
        last = min(first + group, k)
        block = work[:, first:last]
        offset = block.mean(axis=1)
        rms = np.sqrt(((block - offset[:, None]) ** 2).mean(axis=1)) + 1e-12
        if clip:
            weights = (np.ones(last - first) if h_diag is None else h_diag[first:last])
            pairs = block.reshape(n, -1, 2)
            best = np.full(n, np.inf)
            chosen = np.ones(n)
            for f in factors:
                s = rms * f
                z = ((pairs - offset[:, None, None]) / s[:, None, None]).reshape(-1, 2)
                q = cb[nearest(z, cb)].reshape(n, -1) * s[:, None] + offset[:, None]
                err = (((block - q) ** 2) * weights[None, :]).sum(axis=1)
                better = err < best
                best[better], chosen[better] = err[better], f
            rms = rms * chosen
        off16 = offset.astype(np.float16).astype(np.float32)
        s16 = np.maximum(rms.astype(np.float16).astype(np.float32), np.float32(6e-8))
        feed_back_group(work, u, first, last, out,
                        lambda pair: cb[nearest((pair - off16[:, None]) / s16[:, None], cb)]
                        * s16[:, None] + off16[:, None])
    return out


def round_checkerboard(u, v):
    """Nearest (l1, m) in 0..15 with l1 = m (mod 2) to the level-unit pair (u, v)."""
    best = None
    for parity in (0, 1):
        a = np.clip(2 * np.round((u - parity) / 2) + parity, parity, 14 + parity)
        b = np.clip(2 * np.round((v - parity) / 2) + parity, parity, 14 + parity)
        d = (u - a) ** 2 + (v - b) ** 2
        if best is None:
            best = [a, b, d]
        else:
            take = d < best[2]
            best[0] = np.where(take, a, best[0])
            best[1] = np.where(take, b, best[1])
            best[2] = np.where(take, d, best[2])
    return best[0], best[1]


def gptq_d2(w, u, group=GROUP, h_diag=None, shrinks=np.linspace(1.0, 0.55, 10)):
    """gptq_codebook for the checkerboard with file-style parameters: value = offset + scale *
    level, level in 0..15; per group the range [lo, hi] of the current weights is shrunk about
    its centre by the factor of least Hessian-weighted rounding error."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    u = u.astype(np.float32)
    work = w.copy()
    out = np.empty_like(work)
    for first in range(0, k, group):
        last = min(first + group, k)
        block = work[:, first:last]
        weights = np.ones(last - first) if h_diag is None else h_diag[first:last]
        lo, hi = block.min(axis=1), block.max(axis=1)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        best, off, scale = np.full(n, np.inf), lo.copy(), np.maximum(hi - lo, 1e-8) / 15
        for f in shrinks:
            o = mid - f * half
            s = np.maximum(2 * f * half / 15, 1e-8)
            lv = (block - o[:, None]) / s[:, None]
            a, b = round_checkerboard(lv[:, 0::2], lv[:, 1::2])
            q = np.empty_like(block)
            q[:, 0::2], q[:, 1::2] = a, b
            err = (((block - (o[:, None] + s[:, None] * q)) ** 2) * weights[None]).sum(axis=1)
            take = err < best
            best[take], off[take], scale[take] = err[take], o[take], s[take]
        off = off.astype(np.float16).astype(np.float32)
        scale = scale.astype(np.float16).astype(np.float32)

        def round_pair(pair, off=off, scale=scale):
            lv = (pair - off[:, None]) / scale[:, None]
            return off[:, None] + scale[:, None] * np.stack(round_checkerboard(lv[:, 0], lv[:, 1]), 1)

        feed_back_group(work, u, first, last, out, round_pair)
    return out


class FakeCheckpoint:
    """The source checkpoint with some tensors replaced by float32 arrays."""

    def __init__(self, source, replaced: dict):
        self._source, self.replaced = source, replaced

    def __getattr__(self, attr):
        return getattr(self._source, attr)

    def get(self, name):
        if name in self.replaced:
            return self.replaced[name]
        return np.asarray(self._source.get(name), dtype=np.float32)


def quantize_linears(variant: str, progress=True) -> tuple:
    """(source view, {name: dequantized float32 weight}) of every linear layer."""
    from q35f.io.checkpoint import default_model_path, open_checkpoint
    from q35f.kernels.tensor import QuantizedTensor, matmul as q_matmul
    from q35f.quantization import sequential
    from q35f.quantization.calibrate import (DEFAULT_SEQUENCE_LENGTH, calibration_batches,
                                             input_key)
    from q35f.quantization.gptq import DEFAULT_DAMPING, gptq_quantize, inverse_hessian_factor
    from q35f.quantization.recipe import (DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_TOKENS,
                                          RECIPES, Improver, mixed_importance)
    import q35f.kernels.tensor as tensor_module

    ck = open_checkpoint(default_model_path())
    if variant == "default":
        source = Improver(ck, progress=progress, **RECIPES["calibrated"]).source
    else:
        source = ck
    cb = (gaussian_codebook() if variant.startswith("rot_cb") else
          checkerboard_codebook() if variant in ("rot_d2", "rot_d2_clip") else None)
    cached = [None, None]  # (hessian, what was derived from it): q/k/v and gate/up share one
    fakes = {}

    def unrotated_factor(hessian):
        if cached[0] is not hessian:
            cached[:] = hessian, inverse_hessian_factor(hessian, DEFAULT_DAMPING)
        return cached[1]

    def quantize(name, w, hessian, mean_square):
        w = np.asarray(w, dtype=np.float32)
        if variant == "default":
            qt = gptq_quantize(w, unrotated_factor(hessian), GROUP, "q35", True,
                               importance=mixed_importance(mean_square))
            fakes[name] = qt.dequantize()
            return fakes[name]
        if variant == "d2_clip":
            fakes[name] = gptq_d2(w, unrotated_factor(hessian), h_diag=np.diag(hessian))
            return fakes[name]
        # one rotation per linear input (q/k/v share theirs, as gate/up do): the runtime
        # would rotate each input once
        if cached[0] is not hessian:
            r = rotation(w.shape[1], repr(input_key(name)))
            h_rot = r.T @ hessian @ r
            cached[:] = hessian, (r, h_rot, inverse_hessian_factor(h_rot, DEFAULT_DAMPING))
        r, h_rot, u = cached[1]
        w_rot = (w.astype(np.float64) @ r).astype(np.float32)
        if variant == "rot_q35":
            qt = gptq_quantize(w_rot, u, GROUP, "q35", True,
                               importance=mixed_importance(np.diag(h_rot)))
            q_rot = qt.dequantize()
        elif variant == "rot_d2mm_clip":
            q_rot = gptq_d2(w_rot, u, h_diag=np.diag(h_rot))
        else:
            q_rot = gptq_codebook(w_rot, u, cb, clip=variant.endswith("_clip"),
                                  h_diag=np.diag(h_rot))
        fakes[name] = (q_rot.astype(np.float64) @ r.T).astype(np.float32)
        return fakes[name]

    def matmul(x, qt):  # the stream multiplies by what quantize returned
        if isinstance(qt, QuantizedTensor):
            return q_matmul(x, qt)
        return x @ qt.T

    batches = calibration_batches(source, DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_TOKENS,
                                  DEFAULT_SEQUENCE_LENGTH)
    tensor_module.matmul = matmul
    try:
        stream = sequential.LayerStream(source, source.config, batches, quantize,
                                        progress=progress)
        n_layers = int(source.config["num_hidden_layers"])
        for layer in range(n_layers):
            stream.block(layer)
            if progress:
                print(f"block {layer + 1}/{n_layers} quantized", flush=True)
    finally:
        tensor_module.matmul = q_matmul
    return source, fakes


def evaluate(source, fakes, texts, windows, window) -> dict:
    from q35f.kernels.tensor import quantize
    from q35f.measure import perplexity as ppl
    from q35f.runtime.model import LlamaConfig, Model, Weights, load_model

    embed = np.asarray(source.get("model.embed_tokens.weight"), dtype=np.float32)
    replaced = dict(fakes)
    replaced["model.embed_tokens.weight"] = quantize(embed, 128, "int8").dequantize()
    config = LlamaConfig.from_hf(source.config)
    model = Model(config, Weights.from_checkpoint(FakeCheckpoint(source, replaced), config),
                  max_seq_len=window)
    reference, ref_ck = load_model(None, max_seq_len=window)
    results = {}
    for name, text in texts.items():
        ids = ppl.tokenize(ref_ck.tokenizer, text)
        results[name] = ppl.perplexity(model, ids, ctx=window, max_tokens=windows * window,
                                       reference=reference)
    ref_ck.close()
    return results


def print_grid_errors(samples: int = 400_000) -> None:
    """Squared error per coordinate of each 128-point grid on standard Gaussian pairs, its one
    scale chosen by a grid search (the v1 product grid: both halves over one range)."""
    z = np.random.default_rng(1).standard_normal((samples, 2)).astype(np.float32)

    def v1(r):  # 16 levels on [-r, r] for the even weight, 8 on the same range for the odd
        pts = np.stack(np.meshgrid(np.linspace(-r, r, 16), np.linspace(-r, r, 8),
                                   indexing="ij"), -1).reshape(-1, 2)
        return pts.astype(np.float32)

    grids = {"v1 product 16 x 8, one range": [v1(r) for r in np.linspace(1.8, 2.8, 41)],
             "checkerboard (D2)": [checkerboard_codebook(s) for s in np.linspace(0.28, 0.34, 25)],
             "Lloyd 128-point codebook": [gaussian_codebook()]}
    for name, candidates in grids.items():
        err = min(float(((z - c[nearest(z, c)]) ** 2).mean()) for c in candidates)
        print(f"{name:32s} {err:.5f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--mse", action="store_true",
                        help="only print each grid's squared error per coordinate on standard "
                        "2-D Gaussian pairs (what a rotation makes the weights look like)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--eval", default="prideprejudice,pydoc")
    parser.add_argument("--out", help="CSV to append rows to (required with --variant)")
    args = parser.parse_args(argv)
    if args.mse:
        print_grid_errors()
        return 0
    if args.variant is None or args.out is None:
        parser.error("--variant and --out are required (or --mse)")
    from q35f.quantization.calibrate import calibration_text

    started = time.perf_counter()
    source, fakes = quantize_linears(args.variant)
    seconds = time.perf_counter() - started
    texts = {e: calibration_text(e) for e in args.eval.split(",") if e}
    results = evaluate(source, fakes, texts, args.windows, args.window)
    out = Path(args.out)
    new = not out.exists()
    fields = ["variant", "eval", "windows", "tokens", "ppl", "reference_ppl", "delta_ppl_pct",
              "kl_divergence", "top1_agreement", "quantize_seconds", "note"]
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        for e, r in results.items():
            row = {"variant": args.variant, "eval": e, "windows": r["windows"],
                   "tokens": r["tokens"], "ppl": f"{r['ppl']:.4f}",
                   "reference_ppl": f"{r['reference_ppl']:.4f}",
                   "delta_ppl_pct": f"{100 * (r['ppl'] / r['reference_ppl'] - 1):.2f}",
                   "kl_divergence": f"{r['kl_divergence']:.5f}",
                   "top1_agreement": f"{r['top1_agreement']:.4f}",
                   "quantize_seconds": f"{seconds:.0f}",
                   "note": f"fake quantization probe; load avg {os.getloadavg()[0]:.1f}"}
            writer.writerow(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
