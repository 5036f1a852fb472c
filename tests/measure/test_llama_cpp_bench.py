"""bench/llama_cpp.py's helpers: its perplexity protocol is q35f.measure.perplexity's, token for token.

These tests need no llama-cpp-python: they load the script by path and call its pure functions.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from q35f.runtime.model import LlamaConfig, Model
from q35f.measure.perplexity import perplexity, window_nll
from conftest import tiny_config, tiny_weights

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "llama_cpp.py"
_spec = importlib.util.spec_from_file_location("bench_llama_cpp", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@given(n_ids=st.integers(0, 3000), ctx=st.integers(2, 600), windows=st.integers(1, 12))
def test_window_starts_are_the_windows_q35f_perplexity_scores(n_ids, ctx, windows):
    ids = np.arange(n_ids)[:windows * ctx]  # q35f: --max-tokens windows*ctx
    expected = [s for s in range(0, ids.size, ctx) if ids[s:s + ctx].size >= 2]
    assert bench.window_starts(n_ids, ctx, windows) == expected


def test_window_nll_equals_q35f_window_nll():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((40, 300)) * 8).astype(np.float32)
    targets = rng.integers(0, 300, size=40)
    assert bench.window_nll(logits, targets) == pytest.approx(
        window_nll(logits.copy(), targets), rel=1e-6)


def test_scoring_windows_the_script_way_reproduces_q35f_perplexity():
    config = tiny_config(tie_word_embeddings=False)
    model = Model(LlamaConfig.from_hf(config), tiny_weights(config))
    ids = np.random.default_rng(4).integers(0, 97, size=70)
    ctx, windows = 16, 3
    total, scored = 0.0, 0
    for start in bench.window_starts(ids.size, ctx, windows):
        window = ids[start:start + ctx]
        logits = model.forward(window, 0, all_logits=True)
        total += bench.window_nll(logits[:-1], window[1:])
        scored += window.size - 1
    result = perplexity(model, ids, ctx=ctx, max_tokens=windows * ctx)
    assert scored == result["tokens"]
    assert np.exp(total / scored) == pytest.approx(result["ppl"], rel=1e-6)


def test_compare_ids_finds_the_first_difference():
    assert bench.compare_ids([1, 2, 3], [1, 2, 3])["identical"]
    assert bench.compare_ids([1, 2, 3], [1, 5, 3])["first_diff"] == 1
    assert bench.compare_ids([1, 2], [1, 2, 3])["first_diff"] == 2


def test_bits_per_weight_and_delta():
    assert bench.bits_per_weight(9 * 2, 32) == 4.5  # one Q4_0 block: 18 bytes for 32 weights
    assert bench.delta_percent(30.0, 25.0) == pytest.approx(20.0)
    assert bench.delta_percent(30.0, None) is None
    with pytest.raises(ValueError, match="parameter count"):
        bench.bits_per_weight(10, 0)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None,
                    reason="llama-cpp-python is installed here; the script would run for real")
def test_without_llama_cpp_the_script_says_so_in_one_line_and_fails():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "llama-cpp-python is not installed" in lines[0]


# --- --speed-only: the arithmetic on made-up timings (a unit test, never published numbers) -----


def fake_sample(decode, prompt, ttft, load=1.0, rss=100.0):
    return {"decode_tok_s": decode, "prompt_tok_s": prompt, "ttft_ms": ttft, "load_1m": load,
            "peak_rss_mb": rss, "file_bytes": 1000}


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # round 2 ran under load for both tools: its ratio is still 2, the ratio of medians is not
    assert bench.paired_ratio([20.0, 5.0, 22.0], [10.0, 2.5, 11.0]) == 2.0
    assert bench.paired_ratio([1.0, 3.0], [1.0, 1.0]) == 2.0  # even count: mean of the middle
    assert bench.paired_ratio([1.0], None) is None
    with pytest.raises(ValueError, match="runs against"):
        bench.paired_ratio([1.0, 2.0], [1.0])


def test_speed_rows_take_medians_and_ratios_within_each_thread_count():
    samples = {
        (1, "llama.cpp", "Q4_0"): [fake_sample(20, 100, 500, load=3), fake_sample(10, 50, 1000),
                                   fake_sample(22, 110, 450)],
        (1, "q35f", "q35"): [fake_sample(10, 50, 1000), fake_sample(5, 25, 2000),
                             fake_sample(11, 55, 900, rss=80)],
        (2, "llama.cpp", "Q4_0"): [fake_sample(40, 200, 250)] * 3,
        (2, "q35f", "q35"): [fake_sample(60, 100, 500)] * 3,
    }
    rows = {(r["threads"], r["tool"]): r for r in bench.speed_rows(samples, ("llama.cpp", "Q4_0"))}
    one = rows[(1, "q35f")]
    assert (one["decode_tok_s"], one["prompt_tok_s"], one["ttft_ms"]) == (10, 50, 1000)
    assert one["decode_tok_s_runs"] == [10, 5, 11] and one["runs"] == 3
    assert one["decode_ratio"] == pytest.approx(0.5)
    assert one["ttft_ratio"] == pytest.approx(2.0)
    assert one["peak_rss_mb"] == 100 and one["reference"] == "llama.cpp:Q4_0"
    assert rows[(1, "llama.cpp")]["decode_ratio"] == 1.0
    assert rows[(1, "llama.cpp")]["load_1m_runs"] == [3, 1.0, 1.0]
    two = rows[(2, "q35f")]
    assert (two["decode_ratio"], two["prompt_ratio"], two["ttft_ratio"]) == (1.5, 0.5, 2.0)


def test_speed_rows_without_the_reference_have_no_ratios():
    rows = bench.speed_rows({(1, "q35f", "q35"): [fake_sample(10, 50, 1000)]},
                            ("llama.cpp", "Q4_0"))
    assert rows[0]["decode_ratio"] is None and rows[0]["reference"] == ""


def test_speed_csv_has_every_column_and_joins_runs(tmp_path):
    samples = {(2, "llama.cpp", "Q4_0"): [fake_sample(40.123456, 200, 250)] * 2}
    rows = bench.speed_rows(samples, ("llama.cpp", "Q4_0"))
    out = tmp_path / "speed.csv"
    bench.write_speed_csv(rows, out)
    with open(out, newline="") as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == bench.SPEED_COLUMNS
    assert read[0]["decode_tok_s"] == "40.1235"
    assert read[0]["decode_tok_s_runs"] == "40.1235;40.1235"
    assert read[0]["decode_ratio"] == "1.0" and read[0]["note"] == ""


def test_q35f_label_names_a_gguf_fp32():
    assert bench.q35f_label("x/tiny.gguf") == "fp32"
    assert bench.q35f_label("models/tiny-q35") == "tiny-q35"


def test_several_thread_counts_need_speed_only(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--threads", "1", "2", "--work-dir", str(tmp_path)])
    assert "--threads takes one value without --speed-only" in capsys.readouterr().err
