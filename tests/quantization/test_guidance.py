"""End-loss guidance (q35f.quantization.guidance): token weights from the float model's output
gradients, and the stream's objective X^T diag(w) X built from them."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import q35f  # noqa: E402
from q35f.quantization.guidance import PROJS, FloatModel, output_gradient_weights  # noqa: E402
from q35f.quantization.sequential import LayerStream, weight_name  # noqa: E402
from q35f.runtime.model import LlamaConfig, Model, Weights, rms_norm  # noqa: E402


def _tiny(seed=3):
    from conftest import TINY_CONFIG, DictCheckpoint, tiny_tensors

    weights = tiny_tensors(TINY_CONFIG, seed=seed)
    weights = {n: (0.3 * w if n.endswith("_proj.weight") else w) for n, w in weights.items()}
    return weights, DictCheckpoint(weights, TINY_CONFIG), TINY_CONFIG


def _batches(config, n=3, t=24):
    return (np.arange(n * t).reshape(n, t) * 7 + 1) % config["vocab_size"]


def test_the_torch_loss_is_the_float_model_s_cross_entropy():
    weights, ck, config = _tiny()
    batches = _batches(config)
    cfg = LlamaConfig.from_hf(config)
    model = Model(cfg, Weights.from_checkpoint(ck, cfg), batches.shape[1])
    expect = 0.0
    for ids in batches:
        logits = model.forward(ids, 0, all_logits=True).astype(np.float64)[:-1]
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        expect -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
    got = float(FloatModel(ck, config, batches.shape[1]).loss(torch.from_numpy(batches)))
    assert got == pytest.approx(expect, rel=1e-4)


def test_the_weights_are_squared_output_gradients_mixed_with_uniform_ones():
    _, ck, config = _tiny()
    batches = _batches(config)
    full = output_gradient_weights(ck, config, batches, batch=2, strength=1.0)
    half = output_gradient_weights(ck, config, batches, batch=3, strength=0.5)
    none = output_gradient_weights(ck, config, batches, strength=0.0)
    assert set(full) == {(layer, p) for layer in range(config["num_hidden_layers"])
                         for p in PROJS}
    # the last block's down_proj output is the residual stream the head reads
    model = FloatModel(ck, config, batches.shape[1])
    taps = []
    model.loss(torch.from_numpy(batches), taps).backward()
    g = (taps[-1]["down_proj"].grad ** 2).sum(-1).numpy()
    last = config["num_hidden_layers"] - 1
    np.testing.assert_allclose(full[last, "down_proj"], g / g.mean(), rtol=1e-4, atol=1e-6)
    for key, w in full.items():
        assert w.shape == batches.shape and w.dtype == np.float32
        assert np.all(w >= 0) and w.mean() == pytest.approx(1.0, rel=1e-5)
        assert np.all(w[:, -1] == 0)  # the last position predicts nothing
        np.testing.assert_allclose(half[key], 0.5 + 0.5 * w, rtol=1e-4, atol=1e-6)
        assert np.all(none[key] == 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        output_gradient_weights(ck, config, batches, strength=1.5)


def _captured_stream(ck, config, batches, token_weights):
    seen = {}

    def quantize(name, w, hessian, mean_square):
        seen[name] = (hessian.copy(), mean_square.copy())
        return q35f.quantize(w, 32, "q35")

    stream = LayerStream(ck, config, batches, quantize, token_weights=token_weights)
    blocks = [stream.block(i) for i in range(config["num_hidden_layers"])]
    return seen, blocks


def test_uniform_weights_change_nothing_and_weights_scale_each_token_s_outer_product():
    weights, ck, config = _tiny()
    batches = _batches(config)
    layers = config["num_hidden_layers"]
    plain, plain_blocks = _captured_stream(ck, config, batches, None)
    ones = {(layer, p): np.ones(batches.shape, np.float32) for layer in range(layers)
            for p in PROJS}
    uniform, uniform_blocks = _captured_stream(ck, config, batches, ones)
    for name, (h, ms) in plain.items():
        np.testing.assert_array_equal(uniform[name][0], h)
        np.testing.assert_array_equal(uniform[name][1], ms)
    for a, b in zip(plain_blocks, uniform_blocks):
        for name in a:
            np.testing.assert_array_equal(a[name].packed, b[name].packed)
    # block 0's q/k/v read the normed embedding; a token of weight 2 counts twice, of weight 0 not
    w = np.ones(batches.shape, np.float32)
    w[1] = 0
    w[2, :5] = 2
    weighted = dict(ones)
    weighted[0, "k_proj"] = w
    seen, _ = _captured_stream(ck, config, batches, weighted)
    x = rms_norm(weights["model.embed_tokens.weight"][batches],
                 weights["model.layers.0.input_layernorm.weight"], config["rms_norm_eps"])
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    expect = x.T @ (w.reshape(-1, 1) * x)
    np.testing.assert_allclose(seen[weight_name(0, "k_proj")][0], expect, rtol=1e-5,
                               atol=1e-5 * np.abs(expect).max())
    np.testing.assert_array_equal(seen[weight_name(0, "q_proj")][0],
                                  plain[weight_name(0, "q_proj")][0])


def test_guidance_is_checked():
    from q35f.quantization.recipe import Improver

    _, ck, _ = _tiny()
    with pytest.raises(ValueError, match="needs --gptq"):
        Improver(ck, clip_search=True, guidance=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Improver(ck, gptq=True, guidance=2.0)
