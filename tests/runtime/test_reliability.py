"""Loading and running refuse what would silently go wrong: non-finite weights are named at load,
non-finite logits stop generation, and a promised context costs nothing until it is used."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ on the path only while the harness is imported: it also holds kernels.py, which
# would pass for the `kernels` package that transformers looks for.
BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, BENCH)

from fuzzing.mutate import read_safetensors, write_safetensors  # noqa: E402
from fuzzing.seeds import TINY_CONFIG, write_hf, write_q35f  # noqa: E402
sys.path.remove(BENCH)

from q35f.runtime.generate import load_generator  # noqa: E402
from q35f.runtime.model import INITIAL_POSITIONS, load_model  # noqa: E402


def _poke(file: Path, name: str, index: int, raw: bytes) -> None:
    header, data = read_safetensors(file)
    begin = header[name]["data_offsets"][0] + index * len(raw)
    write_safetensors(file, header, data[:begin] + raw + data[begin + len(raw):])


@pytest.mark.parametrize("name, raw", [
    ("model.layers.1.self_attn.q_proj.weight", np.float32(np.nan).tobytes()),
    ("model.norm.weight", np.float32(np.inf).tobytes()),
])
def test_non_finite_float_weights_are_named_at_load(tmp_path, name, raw):
    model = write_hf(tmp_path / "m")
    _poke(model / "model.safetensors", name, 5, raw)
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor {name} holds (nan|inf) at "
                                         r"index \[(0, )?5\]"):
        load_model(model)


@pytest.mark.parametrize("part, bits", [(".scales", 0x7E00), (".offsets", 0xFC00)])
def test_non_finite_quantization_parameters_are_named_at_load(tmp_path, part, bits):
    model = write_q35f(tmp_path / "q", write_hf(tmp_path / "m"))
    _poke(model / "model.safetensors", "model.layers.0.mlp.up_proj" + part, 3,
          np.uint16(bits).tobytes())
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor model\.layers\.0\.mlp\."
                                         rf"up_proj\.weight: {part[1:-1]} holds -?(nan|inf) at "
                                         r"index \[3, 0\]"):
        load_model(model)


def test_overflowing_activations_stop_generation_with_an_error(tmp_path):
    model = write_hf(tmp_path / "m")
    header, data = read_safetensors(model / "model.safetensors")
    begin, end = header["model.norm.weight"]["data_offsets"]
    huge = np.full((end - begin) // 4, 3e38, np.float32).tobytes()  # finite, but overflows
    write_safetensors(model / "model.safetensors", header, data[:begin] + huge + data[end:])
    gen = load_generator(model)
    with pytest.raises(ValueError, match="m: the forward pass gave .* non-finite logits"):
        list(gen.stream(gen.encode("hello"), 4))


def test_a_huge_promised_context_costs_nothing_until_used(tmp_path):
    model = write_hf(tmp_path / "m", dict(TINY_CONFIG, max_position_embeddings=2**31 - 1))
    big, _ = load_model(model)
    assert big.max_seq_len == 2**31 - 1 and big.positions == INITIAL_POSITIONS
    assert big.k_cache.shape[2] == INITIAL_POSITIONS and big.cos.shape[0] == INITIAL_POSITIONS
    small, _ = load_model(write_hf(tmp_path / "s", dict(TINY_CONFIG, max_position_embeddings=2048)),
                          max_seq_len=2048)
    # growing the tables and cache while decoding changes nothing: same logits as sized ones
    ids = np.arange(600) % 256
    grown = big.forward(ids[:300], 0, all_logits=True)
    grown = np.concatenate([grown] + [big.forward(ids[i:i + 1], i, all_logits=True)
                                      for i in range(300, 600)])
    assert big.positions >= 600 and big.positions < 2048
    fixed = small.forward(ids, 0, all_logits=True)
    np.testing.assert_allclose(grown, fixed, rtol=1e-4, atol=1e-4)
