"""Mixes (q35f.quantization.mix): some linears of a q35 file in another format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_CONFIG, tiny_tensors, write_hf
from q35f.io.checkpoint import open_checkpoint
from q35f.quantization.convert import quantize_checkpoint
from q35f.quantization.mix import BY_DEPTH, MIXES, applicable, depth_formats, tensor_bits
from q35f.quantization.recipe import RECIPES
from q35f.runtime.model import load_model
from test_pairing import CALIBRATION_TEXT

PROJS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
         "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def test_kv4_q3_moves_k_and_v_to_int4_and_q_to_int3_in_q35_files_only():
    name = "model.layers.3.{}.{}.weight".format
    got = {proj: tensor_bits(name(part, proj), "q35", "kv4-q3") for proj, part in PROJS.items()}
    assert got == {"q_proj": "int3", "k_proj": "int4", "v_proj": "int4", "o_proj": "q35",
                   "gate_proj": "q35", "up_proj": "q35", "down_proj": "q35"}
    assert tensor_bits(name("self_attn", "k_proj"), "int4", "kv4-q3") == "int4"
    assert tensor_bits(name("self_attn", "k_proj"), "q35") == "q35"
    with pytest.raises(ValueError, match="mix must be one of"):
        tensor_bits(name("self_attn", "k_proj"), "q35", "kv9")
    assert set(MIXES) == {"none", "kv4-q3", "kv4-q3-ends"}


@pytest.mark.parametrize("n_layers", range(1, 97))
def test_the_rule_by_depth_gives_as_many_blocks_half_a_bit_as_it_takes_it_from(n_layers):
    plan = depth_formats(n_layers)
    up = sorted(b for b, f in plan.items() if f == "int4")
    down = sorted(b for b, f in plan.items() if f == "int3")
    if not plan:
        assert n_layers < 4
        return
    ends = max(1, round(n_layers / 8))
    assert up == list(range(ends)) + list(range(n_layers - ends, n_layers))
    assert len(down) == len(up) and down == list(range(down[0], down[0] + len(down)))
    assert ends <= down[0] and down[-1] < n_layers - ends  # apart from the ends
    assert abs((down[0] - ends) - (n_layers - ends - 1 - down[-1])) <= 1  # centred


def test_kv4_q3_ends_moves_the_late_and_early_blocks_up_and_the_middle_ones_down():
    name = "model.layers.{}.{}.{}.weight".format
    for layer, formats in ((0, "int4"), (29, "int4"), (15, "int3"), (6, "q35")):
        got = {proj: tensor_bits(name(layer, part, proj), "q35", "kv4-q3-ends", 30)
               for proj, part in PROJS.items()}
        assert got == {"q_proj": "int3", "k_proj": "int4", "v_proj": "int4",
                       **{p: formats for p in BY_DEPTH["kv4-q3-ends"]}}, layer
    assert tensor_bits(name(15, "mlp", "up_proj"), "int4", "kv4-q3-ends", 30) == "int4"
    with pytest.raises(ValueError, match="number of blocks"):
        tensor_bits(name(15, "mlp", "up_proj"), "q35", "kv4-q3-ends")


@pytest.mark.parametrize("recipe, sequential", [("calibrated", True), ("calibrated", False),
                                                 ("data-free", None)])
def test_a_mixed_file_stores_each_format_and_decodes_in_one_call_per_block(tmp_path, recipe,
                                                                           sequential):
    src = write_hf(tmp_path / "src", tiny_tensors(TINY_CONFIG, seed=4))
    text = tmp_path / "calibration.txt"
    text.write_text(CALIBRATION_TEXT)
    options = dict(RECIPES[recipe], mix="kv4-q3")
    if options["gptq"]:
        options.update(calibration=str(text), calibration_tokens=512, sequential=sequential)
        if not sequential:
            options.pop("propagation")  # it corrects the sequential stream's targets
    out = tmp_path / "q"
    summary = quantize_checkpoint(src, out, bits="q35", group_size=32, progress=False, **options)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["mix"] == "kv4-q3" and qc["bits"] == "q35"
    with open_checkpoint(out) as ck:
        for layer in range(TINY_CONFIG["num_hidden_layers"]):
            for proj, part in PROJS.items():
                qt = ck.get(f"model.layers.{layer}.{part}.{proj}.weight")
                assert qt.bits == tensor_bits(f".{proj}.weight", "q35", "kv4-q3")
                assert qt.rotation == "hadamard"
    model, ck = load_model(out, max_seq_len=64)
    ck.close()
    assert model._decode is not None  # q, then k/v: still one decode_block call per block
    ids = np.arange(20) * 7 % 256
    logits = model.forward(ids, 0)
    assert np.isfinite(logits).all() and np.isfinite(model.forward([3], 20)).all()
    # bits per weight: the plan's formats, counted as stored
    assert 3.2 < summary["linear_bits_per_weight"] < 4.6


@pytest.mark.parametrize("recipe", ["data-free", "calibrated"])
def test_a_file_with_the_rule_by_depth_has_kv4_q3_s_bits_and_decodes_in_one_call(tmp_path,
                                                                                  recipe):
    config = dict(TINY_CONFIG, num_hidden_layers=4)
    src = write_hf(tmp_path / "src", tiny_tensors(config, seed=4), config)
    text = tmp_path / "calibration.txt"
    text.write_text(CALIBRATION_TEXT)
    bits_per_weight = {}
    for mix in ("kv4-q3", "kv4-q3-ends"):
        out = tmp_path / mix
        options = dict(RECIPES[recipe], mix=mix)
        if options["gptq"]:  # the sequential stream quantizes each tensor in its planned format
            options.update(calibration=str(text), calibration_tokens=512)
        bits_per_weight[mix] = quantize_checkpoint(src, out, bits="q35", group_size=32,
                                                   progress=False,
                                                   **options)["linear_bits_per_weight"]
    with open_checkpoint(out) as ck:
        for layer, formats in depth_formats(4).items():
            for proj in BY_DEPTH["kv4-q3-ends"]:
                assert ck.get(f"model.layers.{layer}.{PROJS[proj]}.{proj}.weight").bits == formats
        assert ck.get("model.layers.1.mlp.down_proj.weight").bits == "int3"
    assert bits_per_weight["kv4-q3"] == bits_per_weight["kv4-q3-ends"]  # as many gained as given
    model, ck = load_model(out, max_seq_len=64)
    ck.close()
    assert model._decode is not None  # every block one decode_block call, int3/int4 blocks too
    prompt = np.arange(20) * 7 % 256
    model.forward(prompt, 0)
    fused = [model.forward([t], 20 + i) for i, t in enumerate((3, 9, 27))]
    model.fused_decode = False  # the numpy blocks, one GEMV per linear
    model.forward(prompt, 0)
    plain = [model.forward([t], 20 + i) for i, t in enumerate((3, 9, 27))]
    for a, b in zip(fused, plain):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_kv4_q3_is_not_used_where_it_would_cost_bits(tmp_path, capsys):
    # Without grouped-query attention k and v are q's size each: int4 for both and int3 for q
    # would add 1/2 bit per q weight, so the file stays q35 throughout and says so.
    assert applicable("kv4-q3", TINY_CONFIG)  # 4 heads, 2 kv heads
    assert applicable("none", {"num_attention_heads": 4, "num_key_value_heads": 4})
    assert not applicable("kv4-q3", {"num_attention_heads": 4, "num_key_value_heads": 3})
    assert not applicable("kv4-q3", {"num_attention_heads": 4})  # no kv heads given: MHA
    assert not applicable("kv4-q3-ends", {"num_attention_heads": 4, "num_key_value_heads": 3})
    config = dict(TINY_CONFIG, num_key_value_heads=4)
    src = write_hf(tmp_path / "src", tiny_tensors(config, seed=4), config)
    out = tmp_path / "q"
    quantize_checkpoint(src, out, bits="q35", group_size=32, progress=False,
                        **RECIPES["data-free"])
    assert f"--mix {RECIPES['data-free']['mix']} not used" in capsys.readouterr().err
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "mix" not in qc
    with open_checkpoint(out) as ck:
        assert {ck.get(f"model.layers.0.self_attn.{p}.weight").bits
                for p in ("q_proj", "k_proj", "v_proj")} == {"q35"}
