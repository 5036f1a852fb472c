"""Table 1 next to llama.cpp: llama.cpp rows, ratios to fp32, the load flag, and the worker
that times llama.cpp in its own interpreter. Everything but the last test runs without
llama-cpp-python (a fake runner); the last one needs it and says so when it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from q35f.io.checkpoint import default_model_path
from q35f.measure.llama_worker import LlamaRunner
from q35f.paper import data, figures


class FakeRunner:
    """What LlamaRunner returns, shaped like the worker's JSON; records its calls."""

    def __init__(self):
        self.calls = []

    def requantize(self, source, method, out_dir, threads=1):
        self.calls.append(("requantize", method, threads))
        return Path(out_dir) / f"{method}.gguf"

    def sample(self, path, prompt_ids, runs, decode_tokens, threads=1):
        self.calls.append(("sample", Path(path).name, len(prompt_ids), runs, decode_tokens))
        return {"decode_tok_s": 50.0, "prompt_tok_s": 400.0, "ttft_ms": 80.0,
                "peak_rss_mb": 200.0, "file_bytes": 90_000_000, "llama_cpp_version": "0.0",
                "params": 134_515_008, "tensor_bytes": 89_941_248, "block_params": 106_168_320,
                "block_bytes": 59_719_680, "tensor_types": "F32:61 Q4_0:210 Q8_0:1"}


def test_llama_rows_use_the_q35f_prompt_and_protocol(tmp_path):
    runner = FakeRunner()
    rows = data.llama_rows(default_model_path(), runner, True, tmp_path, 2,
                           methods=("Q4_0", "Q8_0"))
    assert [r["method"] for r in rows] == ["llama.cpp Q4_0", "llama.cpp Q8_0"]
    bench = data.QUICK_BENCH
    expect_prompt = data.bench_prompt_ids(default_model_path(), bench["prompt_tokens"])
    assert len(expect_prompt) == bench["prompt_tokens"]
    samples = [c for c in runner.calls if c[0] == "sample"]
    assert samples[0] == ("sample", "Q4_0.gguf", bench["prompt_tokens"], bench["runs"],
                          bench["decode_tokens"])
    assert ("requantize", "Q8_0", 2) in runner.calls
    r = rows[0]
    assert r["tool"] == "llama.cpp" and r["threads"] == 2
    assert r["bits_per_weight"] == pytest.approx(4.5)  # 8 * block bytes / block weights
    assert r["throughput_toks"] == 50.0 and r["latency_ms"] == 80.0 and r["prompt_toks"] == 400.0
    assert r["source"] == "measured" and "llama.cpp Q4_0 requantized" in r["note"]


def _perf(method, decode, prompt, latency, load, model="m"):
    return {"method": method, "model": model, "throughput_toks": decode, "prompt_toks": prompt,
            "latency_ms": latency, "cpu_load_1m": load}


def test_speed_ratios_are_to_the_fp32_row_of_the_same_model():
    rows = [_perf("fp32", 10.0, 100.0, 400.0, 0.2), _perf("llama.cpp Q4_0", 50.0, 400.0, 100.0,
                                                         0.3),
            _perf("q35", 20.0, 150.0, 200.0, 0.1, model="other")]
    data.add_speed_ratios(rows)
    assert rows[0]["decode_vs_fp32"] == 1.0
    assert rows[1]["decode_vs_fp32"] == 5.0 and rows[1]["prompt_vs_fp32"] == 4.0
    assert rows[1]["latency_vs_fp32"] == 0.25
    assert "decode_vs_fp32" not in rows[2]  # no fp32 row of its model in this run


def test_rows_started_under_load_are_flagged_and_not_drawn(tmp_path):
    rows = [_perf("fp32", 10.0, 100.0, 400.0, 0.5), _perf("q35", 20.0, 150.0, 200.0, 3.0)]
    for r in rows:
        r.update(memory_gb=0.1, power_w=None, source="measured", machine="test")
    data.flag_loaded(rows, 1.5)
    assert rows[0]["published"] == "yes"
    assert rows[1]["published"].startswith("no: 1-minute load 3.00 > 1.50")
    path = data.write_csv(tmp_path / "performance.csv", data.columns(data.PERFORMANCE_COLUMNS),
                          rows)
    drawn = figures.draw_performance(path, tmp_path / "fig")
    q35 = drawn["methods"].index("q35")
    assert drawn["values"][("throughput_toks", "m")][q35] is None  # speed hidden
    assert drawn["values"][("memory_gb", "m")][q35] == pytest.approx(0.1)  # memory kept


def test_write_all_adds_llama_rows_for_gguf_models(monkeypatch, tmp_path):
    import q35f.measure.llama_worker as worker

    def fake_methods(model_path, *args, threads=None, **kw):
        return [dict(_perf("fp32", 10.0, 100.0, 400.0, 0.1, model=data._model_name(model_path)),
                     threads=threads, tool="q35f")], []

    monkeypatch.setattr(data, "measure_methods", fake_methods)
    monkeypatch.setattr(worker.LlamaRunner, "available", lambda self: None)
    fake = FakeRunner()
    monkeypatch.setattr(worker.LlamaRunner, "requantize",
                        lambda self, *a, **k: fake.requantize(*a, **k))
    monkeypatch.setattr(worker.LlamaRunner, "sample", lambda self, *a, **k: fake.sample(*a, **k))
    data.write_all(tmp_path, quick=True, skip=("accuracy", "ablation", "scalability"),
                   llama_python=sys.executable, threads=3, max_load=100.0)
    rows = figures.read_csv(tmp_path / "performance.csv")
    assert [r["method"] for r in rows] == ["fp32"] + [f"llama.cpp {m}"
                                                      for m in data.LLAMA_METHODS]
    assert {r["threads"] for r in rows} == {"3"} and {r["published"] for r in rows} == {"yes"}
    assert float(rows[1]["decode_vs_fp32"]) == pytest.approx(5.0)


def test_write_all_refuses_an_interpreter_without_llama_cpp(tmp_path):
    with pytest.raises(RuntimeError, match="cannot import llama_cpp"):
        data.write_all(tmp_path, quick=True, skip=("accuracy", "ablation", "scalability"),
                       llama_python="/bin/false")


def _has_llama(python) -> str | None:
    return LlamaRunner(python).available()


def _llama_python() -> str:
    return os.environ.get("Q35F_LLAMA_PYTHON") or sys.executable


def test_worker_times_a_real_llama_cpp_model(tmp_path):
    """Tiny real run: requantize the embedded model to Q4_0, time 2 decode tokens."""
    python = _llama_python()
    why = _has_llama(python)
    if why is not None:
        pytest.skip(f"llama-cpp-python absent: {why} (set Q35F_LLAMA_PYTHON to an interpreter "
                    "that has it)")
    runner = LlamaRunner(python)
    path = runner.requantize(default_model_path(), "Q4_0", tmp_path, 1)
    prompt = data.bench_prompt_ids(default_model_path(), 24)
    b = runner.sample(path, prompt, 1, 2, 1)
    assert b["decode_tok_s"] > 0 and b["prompt_tok_s"] > 0 and b["ttft_ms"] > 0
    assert 4.4 < 8 * b["block_bytes"] / b["block_params"] < 4.6  # Q4_0: 4.5 bits
    assert b["peak_rss_mb"] > 0 and b["file_bytes"] == path.stat().st_size


def test_worker_script_imports_nothing_from_q35f():
    # It runs in llama-cpp-python's interpreter, where q35f is not installed.
    src = Path(data.__file__).parents[1] / "measure" / "llama_worker.py"
    code = (f"import sys; sys.modules['q35f'] = None; import runpy; "
            f"runpy.run_path({str(src)!r}, run_name='not_main')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_speed_rows_wait_for_the_load_to_settle(monkeypatch):
    loads = iter([3.0, 2.0, 1.2, 0.9])
    slept = []
    monkeypatch.setattr(data.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(data.time, "sleep", slept.append)
    assert data.settled_load(1.5, timeout=60, poll=5) == 1.2
    assert slept == [5, 5]
    assert data.settled_load(None) == 0.9  # no threshold: no wait
