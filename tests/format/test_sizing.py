"""The size calculator against sizes computed by hand from FORMAT.md §5-6 and the Llama configs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from q35f import cli
from q35f.format.spec import FORMATS, tensor_nbytes
from q35f.format.sizing import (
    DEVICES,
    SHAPES,
    bytes_per_token,
    decode_estimate,
    fits,
    get_shape,
    kv_cache_nbytes,
    model_memory,
    scalability_rows,
)

H100 = next(d for d in DEVICES if d.name.startswith("H100"))
H200 = next(d for d in DEVICES if d.name.startswith("H200"))
GPU24 = next(d for d in DEVICES if d.memory_gb == 24)


def test_published_parameter_counts():
    # Totals of the released checkpoints (sum of tensor sizes in their safetensors).
    assert get_shape("7B").params == 6_738_415_616
    assert get_shape("13B").params == 13_015_864_320
    assert get_shape("70B").params == 70_553_706_496
    assert get_shape("405B").params == 405_853_388_800
    assert get_shape("135M").params == 134_515_008


def test_llama3_70b_q35_by_hand():
    mem = model_memory(get_shape("llama-70b"), "q35", 128, head_bits="int8")
    # One block: q, o are 8192x8192; k, v are (8 kv heads * 128) x 8192 = 1024x8192;
    # gate, up are 28672x8192; down is 8192x28672.
    weights_per_layer = 2 * 8192 * 8192 + 2 * 1024 * 8192 + 3 * 28672 * 8192
    assert weights_per_layer == 855_638_016
    # q35: 7 bytes per 16 weights (every K here is a multiple of 16 and of 128).
    assert mem.linear_payload == 80 * weights_per_layer * 7 // 16 == 29_947_330_560
    # float16 scale + float16 offset = 4 bytes per 128-weight group.
    assert mem.linear_params == 80 * weights_per_layer // 128 * 4 == 2_139_095_040
    # embedding and untied head, int8: one byte per weight + 4 bytes per group of 128.
    assert mem.embedding == 2 * 128256 * (8192 + 8192 // 128 * 4) == 2_167_013_376
    # two RMSNorms per block and a final one, float32.
    assert mem.norms == (2 * 80 + 1) * 8192 * 4 == 5_275_648
    assert mem.total == 34_258_714_624
    assert mem.linear_bits_per_weight == pytest.approx(3.75)
    # The "30.6 GB of payload alone": 3.5 bits for every weight of the model.
    assert 70_553_706_496 * 3.5 / 8 / 1e9 == pytest.approx(30.87, abs=0.01)


def test_llama2_7b_fp16_by_hand():
    mem = model_memory(get_shape("7B"), "fp16")
    norms = (2 * 32 + 1) * 4096
    assert mem.norms == norms * 4  # norms stay float32
    assert mem.total == (6_738_415_616 - norms) * 2 + norms * 4 == 13_477_363_712
    assert mem.head_bits == "fp16"


def test_group_that_does_not_divide_k():
    # SmolLM2: hidden 576 is not a multiple of 128, so each row has 5 groups (4 x 128 + 64).
    mem = model_memory(get_shape("135M"), "q35", 128, head_bits="q35")
    q_row = 7 * 576 // 16 + 5 * 4  # 252 payload bytes + 5 groups x 4 bytes
    kv_row = q_row  # k_proj/v_proj rows also have K = 576
    down_row = 7 * 1536 // 16 + 12 * 4  # K = 1536 = 12 groups
    per_layer = (576 + 576) * q_row + 2 * 192 * kv_row + 2 * 1536 * q_row + 576 * down_row
    assert mem.linear_payload + mem.linear_params == 30 * per_layer
    # tied: the embedding is stored once and is the head
    assert mem.embedding == 49152 * q_row
    assert mem.head_nbytes() == mem.embedding


def test_bytes_per_token_and_decode_estimate_by_hand():
    mem = model_memory(get_shape("70B"), "q35", 128)
    kv = 2 * 80 * 8 * 128 * 2048 * 2  # K and V, 80 layers, 8 kv heads x 128 dims, fp16
    assert kv_cache_nbytes(mem.shape, 2048) == kv == 671_088_640
    head = 128256 * (8192 + 64 * 4)
    expected = 29_947_330_560 + 2_139_095_040 + head + 5_275_648 + (8192 + 64 * 4) + kv
    assert bytes_per_token(mem, 2048) == expected
    assert decode_estimate(H100, mem, 2048) == pytest.approx(3350e9 / expected)


def test_which_devices_fit():
    q35_70b = model_memory(get_shape("70B"), "q35")
    assert fits(H100, q35_70b, 2048) and not fits(GPU24, q35_70b, 2048)
    assert not fits(H100, model_memory(get_shape("70B"), "fp16"), 2048)  # 141 GB of weights
    assert not fits(H200, model_memory(get_shape("405B"), "q35"), 2048)  # ~193 GB
    assert fits(GPU24, model_memory(get_shape("13B"), "q35"), 2048)


@given(
    shape=st.sampled_from(sorted(SHAPES)),
    bits=st.sampled_from(sorted(FORMATS)),
    group=st.sampled_from([32, 64, 128, 256]),
)
def test_total_is_sum_of_tensor_sizes(shape, bits, group):
    s = SHAPES[shape]
    mem = model_memory(s, bits, group, head_bits="int8")
    linear = s.layers * sum(tensor_nbytes(n, k, group, bits) for _, n, k in s.linear_shapes())
    emb = tensor_nbytes(s.vocab, s.hidden, group, "int8") * (1 if s.tied else 2)
    assert mem.total == linear + emb + s.norm_params * 4


def test_fewer_bits_never_cost_more():
    s = get_shape("70B")
    totals = [model_memory(s, b).total for b in ("fp32", "fp16", "int8", "int4", "q35", "int3")]
    assert totals == sorted(totals, reverse=True)


def test_scalability_rows_are_estimates_with_formula():
    rows = scalability_rows()
    assert len(rows) == 4 * 6 * len(DEVICES)
    assert {r["model"] for r in rows} == {"llama-2-7b", "llama-2-13b", "llama-3-70b",
                                          "llama-3.1-405b"}
    assert list(rows[0])[:5] == ["model", "method", "memory_gb", "hardware", "throughput_toks"]
    for r in rows:
        assert r["source"] == "estimate" and "bandwidth / bytes_per_token" in r["formula"]


def test_cli_size_prints_exact_total(capsys):
    assert cli.main(["size", "--params", "70B", "--bits", "q35"]) == 0
    out = capsys.readouterr().out
    assert "34,258,714,624 B" in out and "ESTIMATE" in out
    assert cli.main(["size", "--model-shape", "llama-70b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_bytes"] == 34_258_714_624
    assert {d["device"]: d["fits"] for d in data["devices"]}["H100 80 GB"] is True


def test_cli_size_rejects_unknown_shape_and_group(capsys):
    assert cli.main(["size", "--params", "3B"]) == 2
    assert "unknown model shape" in capsys.readouterr().err
    assert cli.main(["size", "--params", "70B", "--group-size", "100"]) == 2
    assert cli.main(["size", "--params", "70B", "--bits", "int2"]) == 2
