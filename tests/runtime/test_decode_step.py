"""The one-call decode step (fortran/q35_decode.f90) against the numpy block it replaces.

decode_block runs a whole transformer block for one token in Fortran; Model.fused_decode = False
keeps the numpy path (GEMV per linear layer, attention in numpy). Both must give the same logits
and write the same keys and values into the cache, to float32 rounding, for every format and for
shapes with ragged tails (hidden sizes and MLP widths that are not multiples of 16, one or
several query heads per kv head).
"""

import os
import subprocess
import sys

import numpy as np
from hypothesis import given, settings, strategies as st

import q35f
from conftest import tiny_config, tiny_weights
from q35f.runtime import model as model_module
from q35f.runtime.model import LlamaConfig, Model, Weights

LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def quantized(weights: Weights, bits_of, rotation="none") -> Weights:
    layers = [
        model_module.LayerWeights(
            attn_norm=lw.attn_norm, mlp_norm=lw.mlp_norm,
            **{name: q35f.quantize(getattr(lw, name), 32, bits_of(name), rotation=rotation)
               for name in LINEAR_NAMES})
        for lw in weights.layers
    ]
    return Weights(embed=q35f.quantize(weights.embed, 32, "int8"), layers=layers,
                   norm=weights.norm, lm_head=weights.lm_head)


def fused_and_numpy(config: dict, bits: str, seed: int = 0, rotation="none", bits_of=None):
    cfg = LlamaConfig.from_hf(config)
    bits_of = bits_of or (lambda name: bits)
    # a Model takes over its weights (it fuses them): one set each, the same numbers
    fused = Model(cfg, quantized(tiny_weights(config, seed), bits_of, rotation), max_seq_len=64)
    plain = Model(cfg, quantized(tiny_weights(config, seed), bits_of, rotation), max_seq_len=64)
    plain.fused_decode = False
    return fused, plain


def assert_same_decoding(fused: Model, plain: Model, prompt, steps: int) -> None:
    assert fused._decode is not None, "every block is quantized: the fused step must be used"
    a, b = fused.forward(prompt, 0), plain.forward(prompt, 0)
    pos = len(prompt)
    for _ in range(steps):
        token = [int(np.argmax(b))]
        a, b = fused.forward(token, pos), plain.forward(token, pos)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
        pos += 1
    for mine, theirs in ((fused.k_cache, plain.k_cache), (fused.v_cache, plain.v_cache)):
        np.testing.assert_allclose(mine[:, :, :pos], theirs[:, :, :pos], rtol=1e-4,
                                   atol=1e-4 * np.abs(theirs[:, :, :pos]).max())


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from(["q35", "int4", "int8", "int3"]),
       n_kv=st.integers(1, 3), group=st.integers(1, 3), half_d=st.integers(2, 10),
       intermediate=st.integers(4, 90), prompt=st.integers(1, 9), seed=st.integers(0, 5))
def test_fused_decode_equals_numpy_block(bits, n_kv, group, half_d, intermediate, prompt, seed):
    heads = n_kv * group
    config = tiny_config(hidden_size=heads * 2 * half_d, num_attention_heads=heads,
                         num_key_value_heads=n_kv, intermediate_size=intermediate,
                         head_dim=2 * half_d)
    fused, plain = fused_and_numpy(config, bits, seed)
    ids = np.random.default_rng(seed).integers(0, config["vocab_size"], size=prompt)
    assert_same_decoding(fused, plain, ids, steps=4)


@settings(max_examples=10, deadline=None)
@given(bits=st.sampled_from(["q35", "int4", "int8", "int3"]), tail=st.sampled_from([0, 8, 16]),
       prompt=st.integers(1, 5), seed=st.integers(0, 5))
def test_fused_decode_rotates_inputs_like_numpy(bits, tail, prompt, seed):
    """Rotated layers (FORMAT.md §9): decode_block rotates each of the four inputs as the numpy
    path's matmul does; the MLP width may end in a shorter power-of-two group."""
    config = tiny_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64 + tail, head_dim=16)
    fused, plain = fused_and_numpy(config, bits, seed, rotation="hadamard")
    assert all(lin.weight.rotated for layer in fused.layers
               for lin in (*layer.qkv.parts, layer.wo, *layer.gate_up.parts, layer.down))
    ids = np.random.default_rng(seed).integers(0, config["vocab_size"], size=prompt)
    assert_same_decoding(fused, plain, ids, steps=3)


def test_decode_continues_across_kv_cache_growth(monkeypatch):
    """Past the first cache allocation the fused step reads and writes the grown cache."""
    monkeypatch.setattr(model_module, "INITIAL_POSITIONS", 4)
    fused, plain = fused_and_numpy(tiny_config(), "q35")
    assert fused.positions == 4
    assert_same_decoding(fused, plain, np.array([5, 9, 11]), steps=8)  # positions 3..10
    assert fused.positions == 16


@settings(max_examples=10, deadline=None)
@given(q_bits=st.sampled_from(["int3", "q35"]), kv_bits=st.sampled_from(["int4", "int8"]),
       rotation=st.sampled_from(["none", "hadamard"]), n_kv=st.integers(1, 2),
       prompt=st.integers(1, 5), seed=st.integers(0, 5))
def test_fused_decode_takes_k_and_v_in_another_format_than_q(q_bits, kv_bits, rotation, n_kv,
                                                              prompt, seed):
    """A mix (q in one format, k and v in another, --mix): decode_block runs q's and k/v's
    GEMVs one after the other into the same output, as numpy's two matmuls."""
    config = tiny_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=n_kv,
                         intermediate_size=80, head_dim=16)
    fused, plain = fused_and_numpy(
        config, "q35", seed, rotation,
        bits_of=lambda name: kv_bits if name in ("wk", "wv") else q_bits)
    assert [len(layer.qkv.parts) for layer in fused.layers] == [2] * len(fused.layers)
    ids = np.random.default_rng(seed).integers(0, config["vocab_size"], size=prompt)
    assert_same_decoding(fused, plain, ids, steps=3)


def test_mixed_formats_decode_block_cannot_take_go_through_numpy():
    """q, k and v in three formats, or gate and up apart, are left to numpy."""
    config = tiny_config()
    for odd in ({"wk": "int4"}, {"w_up": "int4"}):
        weights = quantized(tiny_weights(config), lambda name: odd.get(name, "q35"))
        model = Model(LlamaConfig.from_hf(config), weights, max_seq_len=32)
        assert model._decode is None
        model.forward([1, 2, 3], 0)
        assert np.isfinite(model.forward([4], 3)).all()


def test_float_model_decodes_through_numpy():
    config = tiny_config()
    model = Model(LlamaConfig.from_hf(config), tiny_weights(config), max_seq_len=32)
    assert model._decode is None


def test_fused_decode_with_two_threads():
    """The threads share each GEMV's tiles and the attention heads inside one parallel region:
    run the comparison in a process with two OpenMP threads (whatever this one has)."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); sys.path.insert(0, 'tests/runtime')\n"
        "import numpy as np\n"
        "from conftest import tiny_config\n"
        "from test_decode_step import fused_and_numpy, assert_same_decoding\n"
        "for bits, rotation in (('q35', 'none'), ('int8', 'none'), ('q35', 'hadamard')):\n"
        "    config = tiny_config(hidden_size=96, num_attention_heads=6, num_key_value_heads=2,\n"
        "                         intermediate_size=208)\n"
        "    fused, plain = fused_and_numpy(config, bits, rotation=rotation)\n"
        "    for _ in range(20):  # a race shows in some runs only\n"
        "        assert_same_decoding(fused, plain, np.arange(1, 6), steps=6)\n"
        "mix = lambda name: 'int4' if name in ('wk', 'wv') else 'int3'  # k/v apart from q\n"
        "fused, plain = fused_and_numpy(config, 'q35', rotation='hadamard', bits_of=mix)\n"
        "for _ in range(20):\n"
        "    assert_same_decoding(fused, plain, np.arange(1, 6), steps=6)\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_fused_decode_copies_no_array(no_array_copies):
    """Weights, caches, norms and the rotary rows reach decode_block as they are (no f2py copy)."""
    fused, plain = fused_and_numpy(tiny_config(hidden_size=40, num_attention_heads=4,
                                               num_key_value_heads=2, head_dim=10), "q35")
    fused.forward([1, 2], 0)
    fused.forward([3], 2)
    rotated, _ = fused_and_numpy(tiny_config(), "q35", rotation="hadamard")
    rotated.forward([1, 2], 0)
    rotated.forward([3], 2)
