"""bench/llama_cpp.py's helpers: its perplexity protocol is q35f.measure.perplexity's, token for token.

These tests need no llama-cpp-python: they load the script by path and call its pure functions.
"""

from __future__ import annotations

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
