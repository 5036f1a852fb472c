"""GPTQ's column order on the q35 grid: the layer output error ||X (W - Q)^T||^2 of orders of the
columns, on layers of the embedded model as the default recipe's own stream sees them (its
rotated weights, rotated Hessians and importances; docs/RESULTS.md "Session 12"). Usage:

    python bench/gptq_order.py [--blocks 0,3,15,29] [--out bench/results/gptq_order.csv]

The default recipe runs up to the last block asked for, the problems of the chosen blocks are
recorded on the way (q_proj, v_proj, o_proj, down_proj: one per input), and each is quantized
again with every order (same group parameters rule, same damping). One row per layer and order,
with the error relative to the natural order's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import q35f.quantization.gptq as gptq
from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.paper.data import write_csv
from q35f.quantization.recipe import RECIPE_GROUP_SIZE, RECIPES, Improver
from q35f.quantization.sequential import _PARTS, weight_name

PROBED = ("q_proj", "v_proj", "o_proj", "down_proj")


def _parity_first(k, group_size, first_parity, within_group):
    cols = np.arange(k)
    if not within_group:
        return np.concatenate([cols[cols % 2 == first_parity], cols[cols % 2 != first_parity]])
    out = []
    for g in range(0, k, group_size):
        c = cols[g:g + group_size]
        out += [c[c % 2 == first_parity], c[c % 2 != first_parity]]
    return np.concatenate(out)


def orders(k, group_size, diag):
    by_diag = lambda c: c[np.argsort(-diag[c], kind="stable")]  # act-order
    cols = np.arange(k)
    coarse = gptq.column_order(k, "q35", "coarse-first")
    return {
        "natural": cols,
        "even columns first, per group": _parity_first(k, group_size, 0, True),
        "odd columns first, per group": _parity_first(k, group_size, 1, True),
        "coarse-first (all odd, then all even)": coarse,
        "coarse-first, act-order in each parity": np.concatenate(
            [by_diag(cols[1::2]), by_diag(cols[0::2])]),
        "act-order": by_diag(cols),
    }


def capture(blocks):
    """{name: (rotated weight, rotated Hessian, importance)} of the probed layers."""
    recorded, last_hessian, problems = [], [None], {}
    factor, quantize = gptq.inverse_hessian_factor, gptq.gptq_quantize

    def factor_hook(h, damping=gptq.DEFAULT_DAMPING, order=None):
        last_hessian[0] = np.array(h)
        return factor(h, damping, order)

    def quantize_hook(w, u, *args, **kw):
        recorded.append((np.array(w), last_hessian[0], kw.get("importance")))
        return quantize(w, u, *args, **kw)

    # the recipe imports these at call time: swap them in for the capture only
    gptq.inverse_hessian_factor, gptq.gptq_quantize = factor_hook, quantize_hook
    try:
        with open_checkpoint(default_model_path()) as ck:
            group_size = RECIPE_GROUP_SIZE["calibrated"]
            improver = Improver(ck, progress=False, group_size=group_size,
                                **{k: v for k, v in RECIPES["calibrated"].items() if k != "mix"})
            for layer in range(max(blocks) + 1):
                for proj in _PARTS:
                    name = weight_name(layer, proj)
                    improver.quantize(name, ck.get(name), group_size, "q35")
                if layer in blocks:  # the stream quantizes a block at its first tensor
                    for proj, problem in zip(_PARTS, recorded):
                        if proj in PROBED:
                            problems[weight_name(layer, proj)] = problem
                recorded.clear()
        return problems, improver.damping, group_size
    finally:
        gptq.inverse_hessian_factor, gptq.gptq_quantize = factor, quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", default="0,3,15,29")
    parser.add_argument("--out", default="bench/results/gptq_order.csv")
    args = parser.parse_args()
    problems, damping, group_size = capture({int(b) for b in args.blocks.split(",")})
    rows = []
    for name, (w, h, importance) in problems.items():
        errors = {}
        for label, order in orders(w.shape[1], group_size, np.diag(h)).items():
            qt = gptq.gptq_quantize(w, gptq.inverse_hessian_factor(h, damping, order),
                                    group_size, "q35", True, importance=importance,
                                    group_params="e4m4", order=order)
            errors[label] = gptq.output_error(w, qt.dequantize(), h)
        for label, err in errors.items():
            rows.append({"layer": name, "order": label, "output_error": f"{err:.6g}",
                         "relative_to_natural": round(err / errors["natural"], 4),
                         "note": f"load avg {os.getloadavg()[0]:.1f}"})
        print(name, {k: round(v / errors["natural"], 4) for k, v in errors.items()}, flush=True)
    for label in dict.fromkeys(r["order"] for r in rows):
        mean = np.mean([r["relative_to_natural"] for r in rows if r["order"] == label])
        print(f"mean {label}: {mean:.4f}")
    write_csv(Path(args.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
