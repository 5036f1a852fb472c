"""Importance-aware pairing: permutations, their folding into the model, and files made with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.quantization.gptq import DEFAULT_DAMPING
from q35f.quantization.calibrate import Calibration
from q35f.io.checkpoint import open_checkpoint
from q35f.quantization.convert import quantize_checkpoint
from q35f.runtime.model import LlamaConfig, Model, Weights, load_model
from q35f.quantization.pairing import PermutedCheckpoint, build_permutations, pairing_order
from conftest import TINY_CONFIG, DictCheckpoint, tiny_tensors, write_hf

CALIBRATION_TEXT = ("It is a truth universally acknowledged, that a single man in possession of a "
                    "good fortune, must be in want of a wife. ") * 40


@given(k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_pairing_order_puts_the_important_half_on_even_positions(k, seed):
    importance = np.random.default_rng(seed).random(k)
    perm = pairing_order(importance)
    assert sorted(perm) == list(range(k))
    even, odd = importance[perm[0::2]], importance[perm[1::2]]
    if odd.size:
        assert even.min() >= odd.max()
    assert np.all(np.diff(even) <= 0) and np.all(np.diff(odd) <= 0)


@pytest.mark.parametrize("bits", ["q35", "int4"])
@pytest.mark.parametrize("m", [1, 3, 20])  # GEMV and tiled-GEMM paths
def test_a_permuted_layer_matmul_equals_the_unpermuted_dequantized_product(bits, m):
    rng = np.random.default_rng(m)
    n, k = 40, 200
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    perm = pairing_order(rng.random(k) * (x * x).mean(axis=0))
    qt = q35f.quantize(np.ascontiguousarray(w[:, perm]), 64, bits)
    y = q35f.matmul(np.ascontiguousarray(x[:, perm]), qt)
    unpermuted = np.empty_like(w)
    unpermuted[:, perm] = qt.dequantize()  # the quantized weight in the original channel order
    expect = x.astype(np.float64) @ unpermuted.T.astype(np.float64)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())


def _fake_calibration(config, seed):
    rng = np.random.default_rng(seed)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    sizes = {"attn_in": config["hidden_size"], "mlp_in": config["hidden_size"],
             "attn_out": config["num_attention_heads"] * head_dim,
             "mlp_hidden": config["intermediate_size"]}
    calib = Calibration("random", 1, 1)
    for i in range(config["num_hidden_layers"]):
        for key, k in sizes.items():
            calib.mean_square[(i, key)] = rng.random(k) ** 4
    return calib


@pytest.mark.parametrize("mode", ["weight", "activation"])
@pytest.mark.parametrize("tied", [True, False])
def test_folded_permutations_leave_the_model_function_unchanged(mode, tied):
    config = dict(TINY_CONFIG, tie_word_embeddings=tied)
    weights = tiny_tensors(config, seed=1)
    ck = DictCheckpoint(weights, config)
    perms = build_permutations(ck, config, mode, _fake_calibration(config, 2))
    hidden_perm = perms["model.norm.weight"][0]
    assert not np.array_equal(hidden_perm, np.arange(hidden_perm.size))
    cfg = LlamaConfig.from_hf(config)
    ids = np.arange(1, 30) * 7 % config["vocab_size"]
    logits = Model(cfg, Weights.from_checkpoint(ck, cfg), 64).forward(ids, 0, all_logits=True)
    permuted = PermutedCheckpoint(ck, perms)
    again = Model(cfg, Weights.from_checkpoint(permuted, cfg), 64).forward(ids, 0,
                                                                          all_logits=True)
    np.testing.assert_allclose(again, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    for name in weights:  # bands read through the view are slices of the whole view
        if weights[name].ndim == 2:
            np.testing.assert_array_equal(permuted.get_rows(name, 3, 17),
                                          permuted.get(name)[3:17])


def test_activation_pairing_needs_calibration():
    ck = DictCheckpoint(tiny_tensors(TINY_CONFIG), TINY_CONFIG)
    with pytest.raises(ValueError, match="calibration"):
        build_permutations(ck, TINY_CONFIG, "activation")
    with pytest.raises(ValueError, match="pairing"):
        build_permutations(ck, TINY_CONFIG, "sideways")


@pytest.mark.parametrize("options", [
    {"pairing": "weight"},
    {"pairing": "activation", "clip_search": True},
    {"pairing": "activation", "gptq": True},
    # every option at once: what `q35f quantize` does by default, with non-default knobs
    {"pairing": "activation", "gptq": True, "clip_search": True, "importance": "activation",
     "importance_prior": 0.3, "damping": 0.05},
    {"pairing": "weight", "gptq": True, "clip_search": True, "importance": "activation",
     "sequential": False},
    # the input rotation (format version 2), data-free and with every calibrated option
    {"rotation": "hadamard"},
    {"rotation": "hadamard", "clip_search": True, "pairing": "weight"},
    {"rotation": "hadamard", "gptq": True, "clip_search": True, "importance": "activation",
     "pairing": "activation"},
    {"rotation": "hadamard", "gptq": True, "clip_search": True, "importance": "activation",
     "sequential": False},
    {"rotation": "hadamard", "gptq": True, "symmetric": True},
    # error propagation (QEP) on top of the default recipe
    {"rotation": "hadamard", "gptq": True, "clip_search": True, "importance": "activation",
     "propagation": 0.5},
    # the default recipe: compact group parameters too (format version 3)
    {"rotation": "hadamard", "gptq": True, "clip_search": True, "importance": "activation",
     "propagation": 0.5, "group_params": "e4m4"},
])
def test_files_made_with_the_options_are_plain_loadable_q35f_models(tmp_path, options):
    src = write_hf(tmp_path / "src", tiny_tensors(TINY_CONFIG, seed=3))
    text = tmp_path / "calibration.txt"
    text.write_text(CALIBRATION_TEXT)
    if (options.get("pairing") == "activation" or options.get("gptq")
            or options.get("importance") == "activation"):
        options = dict(options, calibration=str(text), calibration_tokens=512)
    out = tmp_path / "q"
    # int8 keeps the quantization error small enough to see that the folded model is the same
    # function (q35 on random weights would blur that); the folding does not depend on bits
    quantize_checkpoint(src, out, bits="int8", group_size=32, progress=False, **options)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    # the permutation is folded: nothing new to read; a rotation is read by version 2 on
    assert qc["format_version"] == (3 if "group_params" in options else
                                    2 if "rotation" in options else 1)
    assert qc.get("rotation", "none") == options.get("rotation", "none")
    assert qc["pairing"] == options.get("pairing", "none")
    assert qc["gptq"] == bool(options.get("gptq"))
    assert qc["importance"] == options.get("importance", "none")
    if options.get("gptq"):
        assert qc["damping"] == options.get("damping", DEFAULT_DAMPING)
        assert qc["sequential"] == options.get("sequential", True)
    assert qc.get("propagation", 0) == options.get("propagation", 0)
    if "calibration" in options:
        assert qc["calibration"]["tokens"] == 512
    with open_checkpoint(out) as ck:
        down = ck.get("model.layers.0.mlp.down_proj.weight")
        assert down.shape == (32, 64)
        assert down.rotation == options.get("rotation", "none")
    ids = np.arange(40) * 5 % 256
    model, ck = load_model(out, max_seq_len=64)
    ck.close()
    quantized = model.forward(ids, 0, all_logits=True)
    original, ck = load_model(src, max_seq_len=64)
    ck.close()
    reference = original.forward(ids, 0, all_logits=True)
    corr = np.corrcoef(quantized.ravel(), reference.ravel())[0, 1]
    assert corr > 0.99, corr
