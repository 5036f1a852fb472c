"""Quantizing checkpoints: round trips, what is quantized how, sizes, safety of the output, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import q35f
from q35f.io.info import model_info
from q35f.quantization import convert
from q35f.io.checkpoint import default_model_path, open_checkpoint
from q35f.cli import main as cli_main
from q35f.format.spec import tensor_nbytes
from q35f.io.remote_code import AUTO_MAP
from conftest import TINY_CONFIG, tiny_tensors, write_hf

ROOT = Path(__file__).resolve().parents[2]
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")
# K = 80 for down_proj: with G = 64 its last group is short (FORMAT.md §1)
ODD_CONFIG = dict(TINY_CONFIG, intermediate_size=80, tie_word_embeddings=False)


def _source(tmp_path, config=ODD_CONFIG, dtype=ml_dtypes.bfloat16, seed=0, **kw):
    weights = tiny_tensors(config, seed)
    return write_hf(tmp_path / "src", weights, config=config, dtype=dtype, **kw), weights


def _widened(w, dtype=ml_dtypes.bfloat16):
    return w.astype(dtype).astype(np.float32)


@pytest.mark.parametrize("bits", ["q35", "int8", "int4", "int3"])
@pytest.mark.parametrize("head_bits", ["int8", "q35", "fp16", "fp32"])
def test_quantize_then_open_equals_quantize_of_source(tmp_path, bits, head_bits):
    src, weights = _source(tmp_path)
    summary = convert.quantize_checkpoint(src, tmp_path / "out", bits=bits, group_size=64,
                                          head_bits=head_bits, progress=False)
    with open_checkpoint(tmp_path / "out") as ck:
        assert ck.kind == "q35f"
        assert ck.quant_config == {"quant_method": "q35f", "format_version": 1, "bits": bits,
                                   "group_size": 64, "head_bits": head_bits}
        assert set(ck.names()) == set(weights)
        for name, w in weights.items():
            got, source = ck.get(name), _widened(w)
            if name.endswith(LINEAR_SUFFIXES):
                want = q35f.quantize(source, 64, bits)
            elif name in ("model.embed_tokens.weight", "lm_head.weight") and head_bits in q35f.FORMATS:
                want = q35f.quantize(source, 64, head_bits)
            else:
                want = None
            if want is None:
                assert isinstance(got, np.ndarray) and got.dtype == np.float32
                kept = source.astype(np.float16).astype(np.float32) if (
                    head_bits == "fp16" and name in ("model.embed_tokens.weight", "lm_head.weight")
                ) else source
                np.testing.assert_array_equal(got, kept)
                continue
            assert isinstance(got, q35f.QuantizedTensor), name
            assert (got.shape, got.bits, got.group_size) == (want.shape, want.bits, 64)
            np.testing.assert_array_equal(got.packed, want.packed)
            np.testing.assert_array_equal(got.scale, want.scale)
            np.testing.assert_array_equal(got.offset, want.offset)
        # sizes reported are the format's exact sizes
        linear = [n for n in weights if n.endswith(LINEAR_SUFFIXES)]
        linear_bytes = sum(tensor_nbytes(*weights[n].shape, 64, bits) for n in linear)
        assert summary["linear_bytes"] == linear_bytes
        assert summary["linear_bits_per_weight"] == pytest.approx(
            8 * linear_bytes / sum(weights[n].size for n in linear))
        assert summary["file_bytes"] == ck.file_bytes
        assert summary["bits_per_weight"] == pytest.approx(
            8 * ck.file_bytes / sum(w.size for w in weights.values()))


def test_output_is_hf_style_directory(tmp_path):
    src, _ = _source(tmp_path)
    convert.quantize_checkpoint(src, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "modeling_q35f.py", "tokenizer.json",
        "tokenizer_config.json"]  # modeling_q35f.py: for transformers (q35f.integrations)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "q35f"
    assert config["hidden_size"] == ODD_CONFIG["hidden_size"]
    # every entry of a quantized weight is there, with FORMAT.md §8 dtypes and metadata
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        keys = set(f.keys())
        meta = f.metadata()
        assert {"model.layers.0.mlp.down_proj.qweight", "model.layers.0.mlp.down_proj.scales",
                "model.layers.0.mlp.down_proj.offsets"} <= keys
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").dtype == np.uint8
        assert f.get_tensor("model.layers.0.mlp.down_proj.scales").dtype == np.float16
        assert f.get_tensor("model.norm.weight").dtype == np.float32
    assert json.loads(meta["model.layers.0.mlp.down_proj.weight"]) == {
        "shape": [32, 80], "bits": "q35", "group_size": 128}
    assert meta["q35f_format_version"] == "1"


def test_rotated_file_is_version_2_and_marks_each_rotated_tensor(tmp_path):
    """FORMAT.md §9: rotated tensors say so in their metadata and the file is version 2; a
    tensor whose last group is not a power of two (down_proj, K = 112 in groups of 64) is
    stored plainly; every tensor equals q35f.quantize of the source with its rotation."""
    from safetensors import safe_open

    config = dict(ODD_CONFIG, intermediate_size=112)
    src, weights = _source(tmp_path, config=config)
    convert.quantize_checkpoint(src, tmp_path / "out", group_size=64, progress=False,
                                rotation="hadamard")
    out = tmp_path / "out"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format_version"] == 2 and qc["rotation"] == "hadamard"
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        meta = f.metadata()
    assert meta["q35f_format_version"] == "2"
    assert json.loads(meta["model.layers.0.self_attn.q_proj.weight"])["rotation"] == "hadamard"
    assert "rotation" not in json.loads(meta["model.layers.0.mlp.down_proj.weight"])
    assert "rotation" not in json.loads(meta["model.embed_tokens.weight"])
    with open_checkpoint(out) as ck:
        for name, w in weights.items():
            if not name.endswith(LINEAR_SUFFIXES):
                continue
            got = ck.get(name)
            rotation = "none" if "down_proj" in name else "hadamard"
            want = q35f.quantize(_widened(w), 64, "q35", rotation=rotation)
            assert got.rotation == rotation, name
            np.testing.assert_array_equal(got.packed, want.packed)
            np.testing.assert_array_equal(got.scale, want.scale)


def test_bad_rotation_metadata_is_a_clear_error(tmp_path):
    src, _ = _source(tmp_path)
    out = tmp_path / "out"
    convert.quantize_checkpoint(src, out, group_size=64, progress=False, rotation="hadamard")
    f = out / "model.safetensors"
    data = f.read_bytes()
    bad = data.replace(b'\\"rotation\\":\\"hadamard\\"', b'\\"rotation\\":\\"hadamarx\\"', 1)
    assert bad != data
    f.write_bytes(bad)
    with pytest.raises(ValueError, match=r"proj\.weight has no valid q35f metadata"):
        open_checkpoint(out)


def test_sharded_output_round_trips(tmp_path):
    src, weights = _source(tmp_path, shards=2)
    summary = convert.quantize_checkpoint(src, tmp_path / "out", group_size=32, progress=False,
                                          max_shard_bytes=6_000)
    assert len(summary["files"]) > 2
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    with open_checkpoint(tmp_path / "out") as ck:
        for name in ("model.layers.1.self_attn.o_proj.weight", "lm_head.weight"):
            want = q35f.quantize(_widened(weights[name]), 32, ck.info(name).dtype)
            np.testing.assert_array_equal(ck.get(name).packed, want.packed)
        np.testing.assert_array_equal(ck.get("model.norm.weight"), _widened(weights["model.norm.weight"]))


def test_refuses_to_overwrite_without_force(tmp_path):
    src, _ = _source(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        convert.quantize_checkpoint(src, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    convert.quantize_checkpoint(src, out, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # nothing left over


@pytest.mark.parametrize("failure", [ValueError("boom"), KeyboardInterrupt()])
def test_interrupted_run_leaves_no_model(tmp_path, monkeypatch, failure):
    src, _ = _source(tmp_path)
    out = tmp_path / "out"
    real = convert._write_tensor
    calls = []
    had_model = False

    def failing(src_ck, planned, *args):
        calls.append(planned.name)
        if len(calls) == 5:
            # the partial output exists only under a hidden temporary name
            assert out.exists() == had_model  # out untouched while the new one is written
            assert any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())
            raise failure
        return real(src_ck, planned, *args)

    monkeypatch.setattr(convert, "_write_tensor", failing)
    with pytest.raises(type(failure)):
        convert.quantize_checkpoint(src, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # with --force an old model survives a failed run untouched
    monkeypatch.setattr(convert, "_write_tensor", real)
    convert.quantize_checkpoint(src, out, progress=False)
    before = (out / "model.safetensors").read_bytes()
    calls.clear()
    had_model = True
    monkeypatch.setattr(convert, "_write_tensor", failing)
    with pytest.raises(type(failure)):
        convert.quantize_checkpoint(src, out, bits="int3", force=True, progress=False)
    assert (out / "model.safetensors").read_bytes() == before


def test_nan_in_source_names_file_and_tensor(tmp_path):
    weights = tiny_tensors(ODD_CONFIG)
    weights["model.layers.1.mlp.gate_proj.weight"][3, 5] = np.nan
    src = write_hf(tmp_path / "src", weights, config=ODD_CONFIG)
    with pytest.raises(ValueError, match=r"src: tensor model\.layers\.1\.mlp\.gate_proj\.weight.*NaN"):
        convert.quantize_checkpoint(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _quantized(tmp_path):
    src, _ = _source(tmp_path)
    convert.quantize_checkpoint(src, tmp_path / "out", progress=False)
    return tmp_path / "out"


def test_newer_format_version_is_a_clear_error(tmp_path):
    out = _quantized(tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["format_version"] = 4
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: written with q35f format_version 4.*"
                                         r"reads up to format_version 3; upgrade q35f"):
        open_checkpoint(out)


def test_truncated_quantized_file_names_file_and_tensor(tmp_path):
    out = _quantized(tmp_path)
    f = out / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated.*tensor \S+ ends"):
        open_checkpoint(out)


def test_mismatched_quantized_metadata_names_tensor(tmp_path):
    out = _quantized(tmp_path)
    f = out / "model.safetensors"
    data = bytearray(f.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = "model.layers.1.self_attn.q_proj.weight"
    meta = json.loads(header["__metadata__"][name])
    meta["shape"] = [32, 48]  # the stored bytes are for K = 32
    header["__metadata__"][name] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    f.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(data[8 + n:]))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.1\.self_attn"
                                         r"\.q_proj\.qweight is U8\[32, 14\].*implies U8\[32, 21\]"):
        open_checkpoint(out)


def test_quantizing_a_quantized_model_is_refused(tmp_path):
    out = _quantized(tmp_path)
    with pytest.raises(ValueError, match="already quantized"):
        convert.quantize_checkpoint(out, tmp_path / "again", progress=False)


def test_bad_arguments_name_themselves(tmp_path):
    src, _ = _source(tmp_path)
    with pytest.raises(ValueError, match="bits"):
        convert.quantize_checkpoint(src, tmp_path / "o", bits="q2", progress=False)
    with pytest.raises(ValueError, match="head_bits"):
        convert.quantize_checkpoint(src, tmp_path / "o", head_bits="bf16", progress=False)
    with pytest.raises(ValueError, match="group_size"):
        convert.quantize_checkpoint(src, tmp_path / "o", group_size=100, progress=False)
    with pytest.raises(ValueError, match="must not be the source"):
        convert.quantize_checkpoint(src, src, force=True, progress=False)


def test_embedded_model_quantize_info_and_round_trip(tmp_path, capsys):
    out = tmp_path / "smol"
    assert cli_main(["quantize", "-o", str(out), "--round-to-nearest", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"]["kind"] == "gguf"
    assert summary["linear_params"] == 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)
    with open_checkpoint(out) as q, open_checkpoint(default_model_path()) as g:
        assert q.config == {**g.config, "quantization_config": q.quant_config,
                            "auto_map": AUTO_MAP}
        assert q.chat_template == g.chat_template
        assert q.tokenizer.encode("Hello, world!").ids == g.tokenizer.encode("Hello, world!").ids
        for name in ("model.layers.7.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight",
                     "model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight"):
            want = q35f.quantize(g.get(name), 128, q.info(name).dtype)
            np.testing.assert_array_equal(q.get(name).packed, want.packed)
        np.testing.assert_array_equal(q.get("model.norm.weight"), g.get("model.norm.weight"))

    assert cli_main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.0.mlp.down_proj.weight" in text and "q35/g128" in text
    rows, totals = model_info(out)
    assert len(rows) == 272 and totals["file_bytes"] == (out / "model.safetensors").stat().st_size
    assert totals["linear_bits_per_weight"] == pytest.approx(summary["linear_bits_per_weight"])
    assert totals["bits_per_weight"] == pytest.approx(summary["bits_per_weight"])
    assert f"{totals['bits_per_weight']:.4f} bits/weight overall" in text

    # a second run refuses to overwrite: one line on stderr, exit status 2
    assert cli_main(["quantize", "default", "-o", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_info_of_gguf_reports_its_own_types():
    rows, totals = model_info(default_model_path())
    kinds = {r["dtype"] for r in rows}
    assert kinds == {"Q8_0", "Q4_1", "F32"}
    assert totals["kind"] == "gguf" and totals["file_bytes"] == default_model_path().stat().st_size
    # Q4_1 stores 20 bytes per 32 weights
    assert totals["linear_bits_per_weight"] == pytest.approx(5.0)


@pytest.mark.slow
def test_quantize_peak_memory_stays_near_one_band(tmp_path):
    """A 24-layer bf16 checkpoint quantized in a fresh interpreter: resident memory above the
    interpreter's baseline stays below twice the largest tensor (as float32) and far below the
    model, which a load-everything implementation could not do."""
    cmd = [sys.executable, str(ROOT / "bench" / "quantize_memory.py"), "--layers", "24",
           "--hidden", "512", "--intermediate", "1536", "--heads", "8", "--kv-heads", "2",
           "--vocab", "16384", "--shards", "3", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(result.stdout)
    assert r["source_bytes"] > 5 * r["largest_tensor_f32_bytes"]  # the test can tell
    assert r["excess_rss_bytes"] < 2 * r["largest_tensor_f32_bytes"], r
    assert r["excess_rss_bytes"] < 0.4 * r["source_bytes"], r


def test_killed_run_leaves_only_a_hidden_partial_directory(tmp_path):
    """SIGKILL while tensors are being written: nothing named like the output exists."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "q35f", "quantize", "-o", str(out), "--round-to-nearest",
                             "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        shard = None
        while proc.poll() is None and shard is None:
            partial = [p for p in tmp_path.glob(".out.partial-*/model.safetensors")]
            shard = partial[0] if partial and partial[0].stat().st_size > 0 else None
            time.sleep(0.01)
        assert shard is not None, f"the run ended first: {proc.communicate()[1][-2000:]!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    assert all(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())


def test_compact_group_parameters_file_is_version_3_and_reads_back_what_was_quantized(tmp_path):
    """FORMAT.md §10: with group_params "e4m4" the block linears store one-byte scale and
    offset codes plus a row exponent, the embedding keeps float16 parameters, the file is
    version 3, and what loads is bit for bit the tensor GPTQ made (decoded codes)."""
    from safetensors import safe_open

    from q35f.format.spec import bits_per_weight

    src, _ = _source(tmp_path, config=TINY_CONFIG)
    text = tmp_path / "calibration.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession "
                    "of a good fortune, must be in want of a wife. " * 40)
    made = {}
    from q35f.quantization import recipe

    real = recipe.Improver.quantize

    def keep(self, name, w, group_size, bits):  # what the writer is handed
        made[name] = qt = real(self, name, w, group_size, bits)
        return qt

    recipe.Improver.quantize = keep
    try:
        summary = convert.quantize_checkpoint(
            src, tmp_path / "out", group_size=32, progress=False, gptq=True, clip_search=True,
            importance="activation", rotation="hadamard", calibration=str(text),
            calibration_tokens=256, group_params="e4m4")
    finally:
        recipe.Improver.quantize = real
    out = tmp_path / "out"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format_version"] == 3 and qc["group_params"] == "e4m4"
    name = "model.layers.0.self_attn.q_proj"
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        meta = f.metadata()
        assert f.get_tensor(name + ".scales").dtype == np.uint8
        assert f.get_tensor(name + ".offsets").dtype == np.int8
        assert f.get_tensor(name + ".scale_exponents").shape == (TINY_CONFIG["hidden_size"],)
        assert f.get_tensor("model.embed_tokens.scales").dtype == np.float16
    assert meta["q35f_format_version"] == "3"
    assert json.loads(meta[name + ".weight"])["group_params"] == "e4m4"
    assert "group_params" not in json.loads(meta["model.embed_tokens.weight"])
    k = TINY_CONFIG["hidden_size"]
    assert summary["linear_bits_per_weight"] < bits_per_weight(k, 32, "q35")
    with open_checkpoint(out) as ck:
        for tensor, want in made.items():
            if want.group_params != "e4m4":
                continue
            got = ck.get(tensor)
            assert got.group_params == "e4m4" and got.rotation == want.rotation
            np.testing.assert_array_equal(got.packed, want.packed)
            np.testing.assert_array_equal(got.scale.view(np.uint16), want.scale.view(np.uint16))
            np.testing.assert_array_equal(got.offset.view(np.uint16), want.offset.view(np.uint16))
        assert any(t.group_params == "e4m4" for t in made.values())


def test_compact_group_parameters_without_gptq_are_the_snapped_searched_ones(tmp_path):
    """Without calibration the clip search's parameters are snapped to their codes and the
    levels computed again from them (FORMAT.md §10)."""
    from q35f.format import group_params as gp
    from q35f.kernels.fortran import rotate_rows

    src, weights = _source(tmp_path, config=TINY_CONFIG)
    out = tmp_path / "out"
    convert.quantize_checkpoint(src, out, group_size=32, progress=False, clip_search=True,
                                rotation="hadamard", group_params="e4m4")
    name = "model.layers.0.mlp.gate_proj.weight"
    w = _widened(weights[name])
    searched = q35f.quantize(w, 32, "q35", clip_search=True, rotation="hadamard")
    params = gp.snap(searched.offset, searched.scale, gp.row_exponents(rotate_rows(w, 32)), 15)
    want = q35f.quantize(w, 32, "q35", params=params, rotation="hadamard")
    with open_checkpoint(out) as ck:
        got = ck.get(name)
    assert got.group_params == "e4m4"
    np.testing.assert_array_equal(got.packed, want.packed)
    np.testing.assert_array_equal(got.scale, want.scale)
    np.testing.assert_array_equal(got.offset, want.offset)


def test_a_corrupt_row_exponent_is_a_clear_error(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    src, _ = _source(tmp_path, config=TINY_CONFIG)
    text = tmp_path / "calibration.txt"
    text.write_text("It is a truth universally acknowledged, that a single man. " * 40)
    out = tmp_path / "out"
    convert.quantize_checkpoint(src, out, group_size=32, progress=False, gptq=True,
                                calibration=str(text), calibration_tokens=256,
                                group_params="e4m4")
    path = out / "model.safetensors"
    with safe_open(str(path), "numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = "model.layers.1.mlp.up_proj"
    tensors[name + ".scale_exponents"][3] = 40  # beyond float16: every scale of row 3 Inf
    save_file(tensors, str(path), metadata=meta)
    with open_checkpoint(out) as ck:
        ck.get("model.layers.0.mlp.up_proj.weight")  # the others still load
        with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.1\.mlp"
                                             r"\.up_proj\.weight: row 3 has scale exponent 40"):
            ck.get(name + ".weight")


@pytest.mark.parametrize("flags, group_size, group_params", [
    ([], 64, "e4m4"),  # the default recipe: compact parameters, groups of 64
    (["--group-params", "float16"], 128, None),  # session 10's layout
    (["--group-size", "32"], 32, "e4m4"),
    (["--no-calibration"], 64, "e4m4"),
    (["--round-to-nearest"], 128, None),
    (["--refit-scales"], 128, None),  # writes float16 parameters: their group size too
])
def test_the_cli_group_size_follows_the_group_parameters(tmp_path, capsys, flags, group_size,
                                                         group_params):
    src, _ = _source(tmp_path, config=TINY_CONFIG)
    text = tmp_path / "calibration.txt"
    text.write_text("It is a truth universally acknowledged, that a single man. " * 40)
    data_free = {"--no-calibration", "--round-to-nearest"} & set(flags)
    calibration = [] if data_free else ["--calibration", str(text), "--calibration-tokens", "256"]
    out = tmp_path / "out"
    assert cli_main(["quantize", str(src), "-o", str(out), "--no-progress", "--json",
                     *calibration, *flags]) == 0
    capsys.readouterr()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["group_size"] == group_size and qc.get("group_params") == group_params
