"""Calibration statistics gathered block by block equal what the whole float model sees."""

import numpy as np

from q35f.quantization.calibrate import stream_statistics
from q35f.runtime.model import LlamaConfig, Model, Weights
from conftest import TINY_CONFIG, DictCheckpoint, tiny_tensors


def model_inputs(model, batches):
    """Each (layer, input)'s rows as the float Model's own forward passes them to its linears."""
    seen = {}

    def recording(inner, key):
        def call(x):
            seen.setdefault(key, []).append(np.array(x, dtype=np.float64))
            return inner(x)
        return call

    for i, layer in enumerate(model.layers):
        layer.qkv = recording(layer.qkv, (i, "attn_in"))
        layer.wo = recording(layer.wo, (i, "attn_out"))
        layer.gate_up = recording(layer.gate_up, (i, "mlp_in"))
        layer.down = recording(layer.down, (i, "mlp_hidden"))
    for row in batches:
        model.hidden_states(row, 0)
    return {key: np.concatenate(rows) for key, rows in seen.items()}


def test_streamed_statistics_are_the_float_models():
    weights = tiny_tensors(TINY_CONFIG, seed=3)
    batches = np.random.default_rng(1).integers(0, TINY_CONFIG["vocab_size"], (3, 20))
    calib = stream_statistics(DictCheckpoint(weights, TINY_CONFIG), batches)
    cfg = LlamaConfig.from_hf(TINY_CONFIG)
    model = Model(cfg, Weights.from_checkpoint(DictCheckpoint(weights, TINY_CONFIG), cfg), 24)
    inputs = model_inputs(model, batches)
    assert set(calib.mean_square) == set(inputs) == set(calib.hessian)
    assert calib.tokens == 60
    for key, x in inputs.items():
        np.testing.assert_allclose(calib.mean_square[key], (x * x).mean(axis=0), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(calib.hessian[key], x.T @ x, rtol=1e-4,
                                   atol=1e-4 * np.abs(x.T @ x).max())


def test_without_hessians_only_mean_squares_are_kept():
    weights = tiny_tensors(TINY_CONFIG, seed=4)
    batches = np.random.default_rng(2).integers(0, TINY_CONFIG["vocab_size"], (2, 8))
    calib = stream_statistics(DictCheckpoint(weights, TINY_CONFIG), batches, hessians=False)
    assert calib.hessian == {} and len(calib.mean_square) == 4 * TINY_CONFIG["num_hidden_layers"]
