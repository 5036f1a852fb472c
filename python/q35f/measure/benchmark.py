"""Speed and memory of one model: `q35f bench model MODEL`.

Each measurement runs in a fresh Python process (so its peak RSS is the model's alone):
- decode: a short prompt, then `decode_tokens` greedy tokens one at a time (KV cache, GEMV);
  decode tok/s = decode_tokens / time of those steps;
- prompt: a `prompt_tokens`-token prompt in one call (tiled GEMM); prompt tok/s = prompt_tokens /
  prefill time, TTFT = prefill + picking the first token;
- peak RSS of the process (getrusage), RSS right after loading, file size.
Numbers are medians over `runs` repetitions after one warm-up. The prompt is real English text
(CPython's documentation topics, q35f.io.corpora "pydoc").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RUNS = 3
DEFAULT_PROMPT_TOKENS = 512
DEFAULT_DECODE_TOKENS = 128
SHORT_PROMPT_TOKENS = 16


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """High-water mark of this process's resident memory.

    VmHWM belongs to the address space made by exec, whereas getrusage's ru_maxrss also counts
    the parent's memory at fork time (so a worker started by a big process would inherit it).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(path, runs: int = DEFAULT_RUNS, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
            decode_tokens: int = DEFAULT_DECODE_TOKENS) -> dict:
    """Measure in this process (bench_model runs this in a fresh one)."""
    import numpy as np

    from q35f.io import corpora
    from q35f.kernels.tensor import prompt_gemm
    from q35f.runtime.model import load_model

    rss_start = _rss_mb()
    began = time.perf_counter()
    max_len = max(prompt_tokens, SHORT_PROMPT_TOKENS + decode_tokens) + 1
    model, ckpt = load_model(path, max_seq_len=max_len)
    load_s = time.perf_counter() - began
    rss_loaded = _rss_mb()
    ids = ckpt.tokenizer.encode(corpora.text("pydoc")[:200_000], add_special_tokens=False).ids
    if len(ids) < prompt_tokens:
        raise ValueError(f"the benchmark text has only {len(ids)} tokens")
    prompt = np.asarray(ids[:prompt_tokens], dtype=np.int64)
    short = prompt[:SHORT_PROMPT_TOKENS]

    def prefill():
        t0 = time.perf_counter()
        logits = model.forward(prompt, 0)
        t1 = time.perf_counter()
        int(np.argmax(logits))
        return t1 - t0, time.perf_counter() - t0

    def decode():
        logits = model.forward(short, 0)
        pos = short.size
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            token = int(np.argmax(logits))
            logits = model.forward([token], pos)
            pos += 1
        return time.perf_counter() - t0

    model.forward(prompt[:32], 0)  # warm-up: first touches of weights and buffers
    prefill_s, ttft_s, decode_s = [], [], []
    for _ in range(runs):
        p, t = prefill()
        prefill_s.append(p)
        ttft_s.append(t)
        decode_s.append(decode())
    stats = model.stats()
    return {
        "model": str(ckpt.path),
        "decode_tok_s": decode_tokens / statistics.median(decode_s),
        "prompt_tok_s": prompt_tokens / statistics.median(prefill_s),
        "ttft_ms": 1000 * statistics.median(ttft_s),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_load_mb": rss_loaded,
        "rss_interpreter_mb": rss_start,
        "file_mb": ckpt.file_bytes / 2**20,
        "file_bytes": ckpt.file_bytes,
        "weight_mb": stats["weight_bytes"] / 2**20,
        "bits_per_weight": stats["block_bits_per_weight"],
        "load_s": load_s,
        "runs": runs,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "decode_s": decode_s,
        "prefill_s": prefill_s,
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "prompt_gemm": prompt_gemm(),  # how prompts were multiplied (q35f.kernels.tensor)
    }


def bench_model(path=None, runs: int = DEFAULT_RUNS, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                decode_tokens: int = DEFAULT_DECODE_TOKENS, timeout: float | None = None,
                threads: int | None = None) -> dict:
    """Measure `path` (None = embedded default) in a fresh subprocess; returns measure()'s dict.

    threads: sets OMP_NUM_THREADS (Fortran kernels) and OPENBLAS_NUM_THREADS (float matmuls) of
    the worker; None leaves the environment as it is (all cores).
    """
    if path is None:
        from q35f.io.checkpoint import default_model_path

        path = default_model_path()
    if not Path(path).exists():
        raise FileNotFoundError(f"MODEL {path} does not exist")
    if runs < 1 or prompt_tokens < 1 or decode_tokens < 1:
        raise ValueError("runs, prompt tokens and decode tokens must be at least 1")
    spec = json.dumps({"path": str(path), "runs": runs, "prompt_tokens": prompt_tokens,
                       "decode_tokens": decode_tokens})
    env = dict(os.environ)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "q35f.measure.benchmark", spec], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(f"benchmark of {path} failed: {lines[-1] if lines else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- command -------------------------------------------------------------------------------------


def register_bench(subparsers):
    p = subparsers.add_parser(
        "model", help="decode and prompt speed, time to first token, peak memory of a model",
        description="Decode tok/s (greedy tokens after a short prompt), prompt tok/s and time to "
                    "first token for a long prompt, peak RSS and file size: medians of --runs "
                    "runs in a fresh process.")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="GGUF file, HF directory or q35f directory (default: embedded model)")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help=f"repetitions; medians are reported (default {DEFAULT_RUNS})")
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS,
                   help=f"prompt length for prompt tok/s and TTFT (default {DEFAULT_PROMPT_TOKENS})")
    p.add_argument("--decode-tokens", type=int, default=DEFAULT_DECODE_TOKENS,
                   help=f"tokens generated for decode tok/s (default {DEFAULT_DECODE_TOKENS})")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS and OPENBLAS_NUM_THREADS of the measured process "
                        "(default: as in the environment, i.e. all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_command)


def _command(args) -> int:
    result = bench_model(args.model, args.runs, args.prompt_tokens, args.decode_tokens,
                         threads=args.threads)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model            {result['model']}")
    print(f"file             {result['file_mb']:.1f} MB, {result['bits_per_weight']:.3f} "
          f"bits/weight in the transformer linear layers")
    print(f"decode           {result['decode_tok_s']:.1f} tok/s "
          f"({result['decode_tokens']} tokens, median of {result['runs']})")
    print(f"prompt           {result['prompt_tok_s']:.1f} tok/s ({result['prompt_tokens']} tokens, "
          f"{result['prompt_gemm']} prompt GEMM)")
    print(f"TTFT             {result['ttft_ms']:.0f} ms")
    print(f"peak RSS         {result['peak_rss_mb']:.0f} MB "
          f"(after load {result['rss_after_load_mb']:.0f} MB, "
          f"interpreter {result['rss_interpreter_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":  # the worker process of bench_model
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure(spec["path"], spec["runs"], spec["prompt_tokens"],
                             spec["decode_tokens"])))
