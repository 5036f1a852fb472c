"""The paper's four figures, drawn only from the CSVs of `q35f paper data` (and, for the encoding
figure, from the format itself computed with the numpy reference). No number is typed in here.

Each `draw_*` function writes NAME.pdf and NAME.png and returns the data it plotted, so tests can
check that a figure follows its CSV. Output is deterministic (no timestamps in PDF/PNG metadata).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FIGURES = ("encoding", "performance", "perplexity_vs_bits", "memory_vs_size")
METHOD_ORDER = ("fp32", "fp16", "int8", "int4", "q35", "int3")
METHOD_LABEL = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8", "int4": "INT4", "q35": "Q35 (3.5-bit)",
                "int3": "INT3", "q35-best": "Q35 best recipe"}
HIGHLIGHT = "#d62728"  # q35
COLORS = {"fp32": "#7f7f7f", "fp16": "#bcbd22", "int8": "#1f77b4", "int4": "#2ca02c",
          "q35": HIGHLIGHT, "int3": "#9467bd"}
CODE_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
               "#ff9da7")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "svg.hashsalt": "q35f", "pdf.compression": 6})
    return plt


def read_csv(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CSV not found (run `q35f paper data` first)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(text):
    """float of a CSV cell, None when empty."""
    if text is None or str(text).strip() == "":
        return None
    return float(text)


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.pdf", out_dir / f"{name}.png"]
    fig.savefig(paths[0], metadata={"CreationDate": None, "ModDate": None, "Producer": None,
                                    "Creator": None})
    fig.savefig(paths[1], dpi=150, metadata={"Software": None})
    _pyplot().close(fig)
    return paths


def _method_key(method: str):
    base = method.split("-")[0].split("@")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), method)


def _base(method: str) -> str:
    return method.split("-")[0].split("@")[0]


# 1. the encoding


def encoding_example():
    """A worked example computed by the reference quantizer: 16 weights -> 8 codes -> 7 bytes."""
    from q35f.kernels import reference

    # Sixteen weights on a 1/64 lattice, spread over one group's range (all inside it, by
    # construction: the group's range is their own min and max).
    w = (np.array([19, -33, 7, 41, -12, -48, 25, 2, -5, 30, 44, -20, -37, 11, 0, -26],
                  dtype=np.float32) / 64).reshape(1, 16)
    packed, scale, offset = reference.quantize(w, group_size=16, bits="q35")
    levels = reference.unpack_levels(packed, 16, "q35")[0]
    codes = reference.unpack_codes(packed)[0]
    deq = reference.dequantize(packed, scale, offset, 16, 16, "q35")[0]
    n1, n2 = reference.decode(codes)
    return {
        "w": w[0], "scale": float(scale[0, 0]), "offset": float(offset[0, 0]),
        "step3": float(reference.step3(scale[0, 0])), "levels": levels, "codes": codes,
        "n1": n1, "n2": n2, "packed": packed[0], "dequantized": deq,
    }


def draw_encoding(out_dir) -> dict:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    ex = encoding_example()
    fig = plt.figure(figsize=(11, 7.2))
    # (a) one 7-bit code
    ax = fig.add_axes((0.04, 0.66, 0.92, 0.30))
    ax.set_xlim(-3.2, 14.5)
    ax.set_ylim(-1.5, 2.3)
    ax.axis("off")
    ax.set_title("(a) One 7-bit code = one pair of weights: even weight 4 bits (n1), odd weight "
                 "3 bits (n2)", loc="left")
    c0, a, b = int(ex["codes"][0]), int(ex["n1"][0]), int(ex["n2"][0])
    for i, bit in enumerate(range(6, -1, -1)):
        is_n1 = bit >= 3
        ax.add_patch(Rectangle((i, 0), 1, 1, facecolor="#c6dbef" if is_n1 else "#fdd0a2",
                               edgecolor="black"))
        ax.text(i + 0.5, 0.5, str((c0 >> bit) & 1), ha="center", va="center", fontsize=14)
        ax.text(i + 0.5, 1.15, f"bit {bit}", ha="center", va="bottom", fontsize=9)
    ax.annotate("", xy=(0, -0.25), xytext=(4, -0.25), arrowprops={"arrowstyle": "<->"})
    ax.text(2, -0.45, f"n1 = {a:+d}  (4-bit, -8..7)", ha="center", va="top")
    ax.annotate("", xy=(4, -0.25), xytext=(7, -0.25), arrowprops={"arrowstyle": "<->"})
    ax.text(5.5, -0.45, f"n2 = {b:+d}  (3-bit, -4..3)", ha="center", va="top")
    ax.text(-0.2, 0.5, f"code 0 = {c0}", ha="right", va="center", fontsize=11)
    ax.text(7.4, 0.85, "code = ((n1 & 0xF) << 3) | (n2 & 0x7)", va="center", fontsize=10,
            family="monospace")
    ax.text(7.4, 0.25, "0 <= code <= 127; n1, n2 sign-extended on decode", va="center",
            fontsize=10)
    # (b) eight codes in seven bytes
    ax = fig.add_axes((0.04, 0.33, 0.92, 0.30))
    ax.set_xlim(-0.5, 56.5 + 6 * 0.6)
    ax.set_ylim(-1.3, 2.2)
    ax.axis("off")
    ax.set_title("(b) Eight codes (16 weights) in one 7-byte block: code j at bits 7j..7j+6 of a "
                 "little-endian 56-bit word", loc="left")
    packed = ex["packed"]
    for byte in range(7):
        x0 = byte * (8 + 0.6)
        for pos, bit in enumerate(range(7, -1, -1)):  # drawn MSB first, as in FORMAT.md §3
            j = (8 * byte + bit) // 7
            ax.add_patch(Rectangle((x0 + pos, 0), 1, 1, facecolor=CODE_COLORS[j],
                                   edgecolor="black", linewidth=0.6))
            ax.text(x0 + pos + 0.5, 0.5, str((int(packed[byte]) >> bit) & 1), ha="center",
                    va="center", fontsize=9)
            ax.text(x0 + pos + 0.5, -0.15, str(j), ha="center", va="top", fontsize=7,
                    color="#333333")
        ax.text(x0 + 4, 1.15, f"byte {byte} = 0x{int(packed[byte]):02x}", ha="center",
                va="bottom", fontsize=9)
    ax.text(0, -0.95, "digit under each bit = index j of the code it belongs to "
            "(bits drawn 7..0 within a byte)", fontsize=9, va="center")
    # (c) worked example
    ax = fig.add_axes((0.04, 0.02, 0.92, 0.28))
    ax.axis("off")
    ax.set_title("(c) Worked example (reference quantizer, one group of 16 weights)", loc="left")
    w, lv, dq = ex["w"], ex["levels"], ex["dequantized"]
    lines = [
        f"group range [lo, hi] = [{w.min():.4f}, {w.max():.4f}];  offset = {ex['offset']:.6g} "
        f"(largest float16 <= lo)",
        f"scale = {ex['scale']:.6g} (smallest float16 >= (hi-offset)/15, the 4-bit step);  "
        f"step3 = 15*scale/7 = {ex['step3']:.6g} (3-bit step)",
        f"pair 0: w0 = {w[0]:+.4f} -> l1 = floor((w0-offset)/scale + 1/2) = {lv[0]:2d}, "
        f"n1 = l1-8 = {int(ex['n1'][0]):+d};   w1 = {w[1]:+.4f} -> l2 = {lv[1]}, "
        f"n2 = l2-4 = {int(ex['n2'][0]):+d}",
        f"code 0 = ({int(ex['n1'][0]) & 15} << 3) | {int(ex['n2'][0]) & 7} = {c0} "
        f"= 0b{c0:07b};   dequantized: {dq[0]:+.4f}, {dq[1]:+.4f} "
        f"(errors {abs(dq[0] - w[0]):.4f} <= scale/2, {abs(dq[1] - w[1]):.4f} <= step3/2)",
        "codes 0..7 = " + ", ".join(str(int(c)) for c in ex["codes"])
        + "   ->   bytes = " + " ".join(f"{int(b):02x}" for b in packed),
        f"cost: 7 bytes / 16 weights = 3.5 bits/weight, + 2 float16 per group of G "
        f"(3.75 bits/weight at G = 128)",
    ]
    for i, line in enumerate(lines):
        ax.text(0, 0.88 - i * 0.165, line, fontsize=9.5, family="monospace", va="center",
                transform=ax.transAxes)
    _save(fig, Path(out_dir), "encoding")
    return {"codes": ex["codes"].tolist(), "packed": ex["packed"].tolist()}


# 2. performance


# Speed columns of rows flagged published=no (measured under load, q35f.paper.data.flag_loaded)
# are drawn as n/a; memory does not depend on the load.
LOAD_SENSITIVE = ("throughput_toks", "latency_ms", "power_w")


def _published(row: dict) -> bool:
    return not str(row.get("published") or "yes").startswith("no")


def draw_performance(csv_path, out_dir) -> dict:
    plt = _pyplot()
    rows = [r for r in read_csv(csv_path) if r.get("source", "measured") == "measured"]
    if not rows:
        raise ValueError(f"{csv_path}: no measured rows")
    models = sorted({r["model"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_method_key)
    prompt = rows[0].get("prompt_tokens")
    panels = [("memory_gb", "model memory (GB)"), ("throughput_toks", "decode (tokens/s)"),
              ("latency_ms", "first-token latency (ms" + (f", {prompt}-token prompt)" if prompt
                                                          else ")"))]
    if any(_num(r.get("power_w")) is not None for r in rows):
        panels.append(("power_w", "power (W)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    plotted = {}
    width = 0.8 / len(models)
    for ax, (col, label) in zip(np.atleast_1d(axes), panels):
        for m_i, model in enumerate(models):
            vals = []
            for method in methods:
                cell = [r for r in rows if r["model"] == model and r["method"] == method]
                hidden = col in LOAD_SENSITIVE and cell and not _published(cell[0])
                vals.append(_num(cell[0].get(col)) if cell and not hidden else None)
            plotted[(col, model)] = vals
            x = np.arange(len(methods)) + (m_i - (len(models) - 1) / 2) * width
            heights = [v if v is not None else 0.0 for v in vals]
            colors = [COLORS.get(_base(m), "#999999") for m in methods]
            bars = ax.bar(x, heights, width * 0.95, color=colors,
                          edgecolor=["black" if _base(m) == "q35" else "none" for m in methods],
                          label=model if len(models) > 1 else None,
                          alpha=1.0 if m_i == 0 else 0.6)
            for bar, v in zip(bars, vals):
                text = "n/a" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), text,
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels([METHOD_LABEL.get(m, m).replace(" (3.5-bit)", "") for m in methods],
                           rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    title = f"Measured on {rows[0].get('machine', '')}: {', '.join(models)}"
    loads = [_num(r.get("cpu_load_1m")) for r in rows
             if _num(r.get("cpu_load_1m")) is not None and _published(r)]
    if loads:
        title += f"\n1-minute load average during the runs: {min(loads):.1f}-{max(loads):.1f}"
    fig.suptitle(title, fontsize=10)
    if len(models) > 1:
        np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(out_dir), "performance")
    return {"methods": methods, "values": plotted}


# 3. perplexity vs bits/weight


# accuracy.csv task columns drawn next to the perplexity: (column, label, documents column)
TASK_SERIES = (("humaneval", "HumanEval pass@1", "humaneval_problems"),
               ("truthfulqa_mc1", "TruthfulQA MC1", "truthfulqa_questions"),
               ("truthfulqa", "TruthfulQA MC2", "truthfulqa_questions"),
               ("mmlu", "MMLU", None))
TASK_COLORS = ("#8c564b", "#17becf", "#1f77b4", "#bcbd22")


def draw_perplexity(csv_path, out_dir) -> dict:
    """Perplexity vs bits per weight; when accuracy.csv has task scores, a second panel with
    them per method, each with its standard error as an error bar."""
    plt = _pyplot()
    measured = [r for r in read_csv(csv_path) if r.get("source", "measured") == "measured"]
    rows = [r for r in measured if _num(r.get("perplexity")) is not None]
    if not rows:
        raise ValueError(f"{csv_path}: no measured perplexity rows")
    task_rows = [r for r in measured
                 if any(_num(r.get(c)) is not None for c, _, _ in TASK_SERIES)]
    if task_rows:
        fig, (ax, task_ax) = plt.subplots(1, 2, figsize=(14, 5.2),
                                          gridspec_kw={"width_ratios": [1.1, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
    series = sorted({(r["model"], r["corpus"]) for r in rows})
    plotted = {}
    for s_i, (model, corpus) in enumerate(series):
        pts = [r for r in rows if (r["model"], r["corpus"]) == (model, corpus)]
        ref = [r for r in pts if _base(r["method"]) in ("fp32", "fp16")]
        quant = sorted((r for r in pts if r not in ref), key=lambda r: _num(r["bits_per_weight"]))
        xs = [_num(r["bits_per_weight"]) for r in quant]
        ys = [_num(r["perplexity"]) for r in quant]
        plotted[(model, corpus)] = {"x": xs, "y": ys, "methods": [r["method"] for r in quant]}
        marker = "os^D"[s_i % 4]
        ax.plot(xs, ys, "-", color="#888888", linewidth=1, zorder=1)
        for r, x, y in zip(quant, xs, ys):
            is_q35 = _base(r["method"]) == "q35"
            ax.scatter([x], [y], s=110 if is_q35 else 50, marker=marker, zorder=3,
                       color=COLORS.get(_base(r["method"]), "#555555"),
                       edgecolor="black" if is_q35 else "none")
            ax.annotate(METHOD_LABEL.get(r["method"], r["method"]), (x, y),
                        textcoords="offset points", xytext=(7, 5), fontsize=9,
                        fontweight="bold" if is_q35 else "normal")
        for r in ref:
            y = _num(r["perplexity"])
            ax.axhline(y, color="black", linestyle="--", linewidth=1)
            ax.annotate(f"{r['method'].upper()} ({_num(r['bits_per_weight']):.0f} bits): {y:.2f}",
                        (0.01, y), xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(0, 4), fontsize=9)
            plotted[(model, corpus, "ref")] = y
        label_tokens = pts[0].get("tokens", "")
        ax.plot([], [], marker=marker, color="#555555", linestyle="-",
                label=f"{model}, {corpus} ({label_tokens} tokens)")
    ax.set_xlabel("bits per weight of the block linear layers (incl. fp16 scales/offsets)")
    values = [_num(r["perplexity"]) for r in rows]
    log = max(values) / min(values) > 5
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=8)
    ax.set_ylabel("perplexity (lower is better" + (", log scale)" if log else ")"))
    ax.set_title("Perplexity vs storage cost, measured points only")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(fontsize=8, loc="upper right")
    if task_rows:
        plotted["tasks"] = _draw_tasks(task_ax, task_rows)
    fig.tight_layout()
    _save(fig, Path(out_dir), "perplexity_vs_bits")
    return plotted


def _draw_tasks(ax, rows) -> dict:
    """Grouped bars: one group per method, one bar per task with a value, ± its stderr."""
    methods = sorted({r["method"] for r in rows}, key=_method_key)
    series = [s for s in TASK_SERIES if any(_num(r.get(s[0])) is not None for r in rows)]
    width = 0.8 / len(series)
    plotted = {}
    for i, ((col, label, docs), color) in enumerate(zip(series, TASK_COLORS)):
        by_method = {r["method"]: r for r in rows}
        ys = [_num(by_method[m].get(col)) for m in methods]
        errs = [_num(by_method[m].get(col + "_stderr")) for m in methods]
        x = np.arange(len(methods)) + (i - (len(series) - 1) / 2) * width
        subset = next((by_method[m].get(docs) for m in methods if docs and by_method[m].get(docs)),
                      "")
        missing = [y is None for y in ys]  # no bar and no error bar where nothing was run
        ax.bar(x, [np.nan if m else y for m, y in zip(missing, ys)], width * 0.95, color=color,
               yerr=[np.nan if m else (e or 0.0) for m, e in zip(missing, errs)], capsize=3,
               ecolor="black", error_kw={"lw": 1},
               label=f"{label} ({subset})" if subset else label)
        for xi, y in zip(x, ys):
            ax.text(xi, 0.005, "n/a" if y is None else f"{y:.3f}", ha="center", va="bottom",
                    fontsize=7, rotation=90)
        plotted[col] = {"methods": methods, "y": ys, "stderr": errs}
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels([METHOD_LABEL.get(m, m).replace(" (3.5-bit)", "") for m in methods],
                       rotation=30, ha="right")
    ax.set_ylabel("score (higher is better), ± 1 standard error")
    ax.set_ylim(0, max(1e-3, max((_num(r.get(c)) or 0) + (_num(r.get(c + "_stderr")) or 0)
                                 for r in rows for c, _, _ in series)) * 1.35)
    ax.set_title("lm-eval task scores, measured (local task definitions)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return plotted


# 4. memory vs model size


def draw_memory(csv_path, out_dir) -> dict:
    plt = _pyplot()
    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f"{csv_path}: empty")
    seen = {}
    for r in rows:
        seen.setdefault((r["model"], r["method"]), r)
    devices = {}
    for r in rows:
        if r.get("hardware") and _num(r.get("device_memory_gb")) is not None:
            devices.setdefault(r["hardware"], _num(r["device_memory_gb"]))
    methods = sorted({m for _, m in seen}, key=_method_key)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    plotted = {}
    for method in methods:
        pts = sorted(((_num(r["params"]) / 1e9, _num(r["memory_gb"]))
                      for (_, m), r in seen.items() if m == method))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        plotted[method] = {"x": xs, "y": ys}
        is_q35 = method == "q35"
        ax.plot(xs, ys, marker="o", color=COLORS.get(method, "#555555"),
                linewidth=2.6 if is_q35 else 1.4, label=METHOD_LABEL.get(method, method),
                zorder=3 if is_q35 else 2)
    # capacity lines: one per distinct capacity, naming every device with it
    by_cap = {}
    for name, cap in devices.items():
        by_cap.setdefault(cap, []).append(name.replace(f" {cap:g} GB", ""))
    for cap, names in sorted(by_cap.items()):
        ax.axhline(cap, color="#555555", linestyle=":", linewidth=1)
        ax.text(1.005, cap, f"{' / '.join(names)} ({cap:g} GB)", transform=ax.get_yaxis_transform(),
                fontsize=8, va="center", ha="left")
    plotted["devices"] = by_cap
    ax.set_xscale("log")
    ax.set_yscale("log")
    names = sorted({m for m, _ in seen}, key=lambda n: _num(seen[(n, methods[0])]["params"]))
    ticks = [_num(seen[(n, methods[0])]["params"]) / 1e9 for n in names]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{n}\n{t:.3g}B" for n, t in zip(names, ticks)], fontsize=9)
    ax.minorticks_off()
    ax.set_xlabel("model (Llama shape) and size in billions of parameters (log scale)")
    ax.set_ylabel("weights in memory (GB, exact from the format)")
    ax.set_title("Model memory vs size; dotted: device capacity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="upper left")
    fig.tight_layout()
    _save(fig, Path(out_dir), "memory_vs_size")
    return plotted


def draw_all(results_dir, out_dir) -> dict:
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    return {
        "encoding": draw_encoding(out_dir),
        "performance": draw_performance(results_dir / "performance.csv", out_dir),
        "perplexity_vs_bits": draw_perplexity(results_dir / "accuracy.csv", out_dir),
        "memory_vs_size": draw_memory(results_dir / "scalability.csv", out_dir),
    }
