"""llama.cpp measured from another interpreter, with q35f.measure.benchmark's protocol.

llama-cpp-python is an optional from-source build kept in its own environment, without q35f.
So this file does two jobs on two sides of a process boundary, and imports nothing from q35f:
- run as a script by that interpreter (`PYTHON llama_worker.py requantize|sample`, a JSON spec
  on stdin, one JSON line on stdout), it requantizes a GGUF or times one model in a fresh
  process (bench/llama_cpp.py uses the same functions, loading this file by path);
- imported by q35f (`LlamaRunner(python)`), it starts those processes and reads their answers.

Speed protocol (as q35f.measure.benchmark): warm-up on 32 prompt tokens; prompt tok/s = the
whole prompt in one batch; TTFT = that prefill + picking the first token; decode tok/s =
`decode_tokens` greedy tokens one at a time after a 16-token prompt; medians over `runs`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHORT_PROMPT_TOKENS = 16  # as q35f.measure.benchmark
WARMUP_TOKENS = 32
TIMEOUT_S = 3600
# The block linear layers of a GGUF (q35f's bits_per_weight counts these only).
BLOCK_LINEAR = ("attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.",
                "ffn_down.")


# --- the llama-cpp-python side ------------------------------------------------------------------


def import_llama_cpp():
    """The installed llama_cpp package (never a script of that name on sys.path)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != here]
    import llama_cpp

    return llama_cpp


def requantize(llama_cpp, source: Path, method: str, out_dir: Path, threads: int) -> Path:
    """`source` requantized by llama.cpp to `method` (F32 or a LLAMA_FTYPE_MOSTLY_* name),
    reused when already made from the same source."""
    source, out_dir = Path(source), Path(out_dir)
    out = out_dir / f"{source.stem}-{method}.gguf"
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if method == "F32"
                    else f"LLAMA_FTYPE_MOSTLY_{method}", None)
    if ftype is None:
        raise ValueError(f"llama.cpp has no type {method}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if status != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize {source} -> {method} failed ({status})")
    tmp.rename(out)
    return out


def llama_speed(llama_cpp, path: Path, prompt_ids, runs: int, decode_tokens: int,
                threads: int) -> dict:
    """decode tok/s, prompt tok/s and TTFT ms of the GGUF at `path`, medians of `runs`."""
    import numpy as np

    prompt_ids = [int(t) for t in prompt_ids]
    n_ctx = max(len(prompt_ids), SHORT_PROMPT_TOKENS + decode_tokens) + 16
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=len(prompt_ids),
                          n_ubatch=len(prompt_ids), n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    ctx = llm.ctx
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def prefill():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        t1 = time.perf_counter()
        int(np.argmax(last_logits()))  # TTFT = prefill + picking the first token, as q35f
        return t1 - t0, time.perf_counter() - t0

    def decode():
        llm.reset()
        llm.eval(prompt_ids[:SHORT_PROMPT_TOKENS])
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            llm.eval([int(np.argmax(last_logits()))])
        return time.perf_counter() - t0

    llm.reset()
    llm.eval(prompt_ids[:WARMUP_TOKENS])  # warm-up, as q35f.measure.benchmark
    prefill_s, ttft_s, decode_s = [], [], []
    for _ in range(runs):
        p, t = prefill()
        prefill_s.append(p)
        ttft_s.append(t)
        decode_s.append(decode())
    llm.close()
    return {"decode_tok_s": decode_tokens / statistics.median(decode_s),
            "prompt_tok_s": len(prompt_ids) / statistics.median(prefill_s),
            "ttft_ms": 1000 * statistics.median(ttft_s)}


def peak_rss_mb() -> float:
    """VmHWM of this process, as q35f.measure.benchmark reports it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("/proc/self/status has no VmHWM")


def gguf_sizes(path: Path) -> dict:
    """Parameters and tensor bytes of a GGUF, all tensors and the block linear layers."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    total = {"params": 0, "tensor_bytes": 0, "block_params": 0, "block_bytes": 0}
    kinds: dict[str, int] = {}
    for t in reader.tensors:
        total["params"] += int(t.n_elements)
        total["tensor_bytes"] += int(t.n_bytes)
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
        if t.name.startswith("blk.") and any(part in t.name for part in BLOCK_LINEAR):
            total["block_params"] += int(t.n_elements)
            total["block_bytes"] += int(t.n_bytes)
    total["tensor_types"] = " ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
    return total


def _serve(command: str, spec: dict) -> dict:
    import logging

    llama_cpp = import_llama_cpp()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    if command == "requantize":
        path = requantize(llama_cpp, Path(spec["source"]), spec["method"],
                          Path(spec["out_dir"]), spec["threads"])
        return {"path": str(path)}
    if command == "sample":
        path = Path(spec["path"])
        result = llama_speed(llama_cpp, path, spec["prompt_ids"], spec["runs"],
                             spec["decode_tokens"], spec["threads"])
        result.update(peak_rss_mb=peak_rss_mb(), file_bytes=path.stat().st_size,
                      llama_cpp_version=llama_cpp.__version__, **gguf_sizes(path))
        return result
    raise ValueError(f"unknown command {command!r} (requantize, sample)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: PYTHON llama_worker.py requantize|sample < spec.json", file=sys.stderr)
        return 2
    print(json.dumps(_serve(argv[0], json.load(sys.stdin))))
    return 0


# --- the q35f side -----------------------------------------------------------------------------


class LlamaRunner:
    """Runs this file's commands with `python` (an interpreter that has llama-cpp-python)."""

    def __init__(self, python):
        self.python = str(python)

    def available(self) -> str | None:
        """None when llama_cpp imports in `python`, else why not."""
        try:
            run = subprocess.run([self.python, "-c", "import llama_cpp, gguf"],
                                 capture_output=True, text=True, timeout=120, cwd="/")
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{self.python}: {err}"
        if run.returncode != 0:
            tail = (run.stderr.strip().splitlines() or ["?"])[-1]
            return f"{self.python} cannot import llama_cpp and gguf ({tail})"
        return None

    def _call(self, command: str, spec: dict) -> dict:
        run = subprocess.run([self.python, str(Path(__file__).resolve()), command],
                             input=json.dumps(spec), capture_output=True, text=True,
                             timeout=TIMEOUT_S)
        if run.returncode != 0:
            tail = " | ".join(run.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"llama.cpp {command} failed ({run.returncode}): {tail}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    def requantize(self, source, method: str, out_dir, threads: int = 1) -> Path:
        return Path(self._call("requantize", {"source": str(source), "method": method,
                                              "out_dir": str(out_dir), "threads": threads})["path"])

    def sample(self, path, prompt_ids, runs: int, decode_tokens: int, threads: int = 1) -> dict:
        """One fresh process: load, warm up, `runs` prefills and decodes (medians)."""
        return self._call("sample", {"path": str(path), "prompt_ids": [int(t) for t in prompt_ids],
                                     "runs": runs, "decode_tokens": decode_tokens,
                                     "threads": threads})


if __name__ == "__main__":
    raise SystemExit(main())
