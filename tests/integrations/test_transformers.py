"""q35f directories in transformers: `AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)` (q35f.integrations.transformers, q35f.io.remote_code).

The loaded model is transformers' Llama with q35f modules for the packed weights; its logits and
greedy generations equal q35f's own runtime (q35f.runtime.model) on the same directory: a tiny random
model in two set-ups (q35 layers + int8 head, untied; int4 layers + fp16 tied embedding), and
the embedded SmolLM2-135M-Instruct with its tokenizer and chat template.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from q35f import cli  # noqa: E402
from q35f.io.llama import expected_shapes  # noqa: E402
from q35f.io import remote_code  # noqa: E402
from q35f.io.info import model_info  # noqa: E402
from q35f.quantization.convert import quantize_checkpoint  # noqa: E402
from q35f.integrations import transformers as q35f_transformers  # noqa: E402
from q35f.runtime.model import load_model  # noqa: E402

CONFIG = {  # GQA (4 query heads per KV head), head_dim * heads != hidden, ragged groups
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 300,
    "hidden_size": 80, "intermediate_size": 144, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 256, "bos_token_id": 1,
    "eos_token_id": 2,
}
VARIANTS = {  # name: (bits, head_bits, group_size, tied)
    "q35-int8head": ("q35", "int8", 32, False),
    "int4-fp16tied": ("int4", "fp16", 64, True),
}
PROMPT = ("It is a truth universally acknowledged, that a single man in possession of a good "
          "fortune, must be in want of a wife.")


def write_random_llama(directory, tied: bool):
    config = dict(CONFIG, tie_word_embeddings=tied)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(3)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        scale = 0.1 if name.endswith("norm.weight") else 0.3
        base = 1.0 if name.endswith("norm.weight") else 0.0
        tensors[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module", params=list(VARIANTS))
def tiny(request, tmp_path_factory):
    """(q35f directory, variant name, transformers model, q35f runtime model)."""
    bits, head_bits, group_size, tied = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    out = root / "q35f"
    quantize_checkpoint(write_random_llama(root / "fp32", tied), out, bits=bits,
                        group_size=group_size, head_bits=head_bits, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ours, _ = load_model(out, max_seq_len=CONFIG["max_position_embeddings"])
    return out, request.param, hf, ours


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_logits_close(got, want, rel=1e-4):
    err = np.abs(got - want) / np.abs(want).max(axis=-1, keepdims=True)
    assert err.max() < rel, f"max relative logit error {err.max():.2e}"


def greedy_q35f(model, prompt, n) -> list[int]:
    """n greedy tokens from q35f's runtime: prefill, then one decode step per token."""
    logits, ids = model.forward(prompt, 0), list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(logits)))
        logits = model.forward(ids[-1:], len(ids) - 1)
    return ids[len(prompt):]


def test_directory_ships_the_remote_code(tiny):
    directory = tiny[0]
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == remote_code.AUTO_MAP
    assert (directory / remote_code.REMOTE_CODE_FILE).read_text() == \
        remote_code.REMOTE_CODE


def test_linear_layers_are_q35f_modules_and_stay_packed(tiny):
    directory, variant, hf, _ = tiny
    bits, head_bits, group_size, tied = VARIANTS[variant]
    Q35fLinear = q35f_transformers.Q35fLinear
    assert isinstance(hf, q35f_transformers.Q35fLlamaForCausalLM)
    for layer in hf.model.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                    layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj,
                    layer.mlp.down_proj):
            assert isinstance(lin, Q35fLinear)
            assert (lin.quantized.bits, lin.quantized.group_size) == (bits, group_size)
    if head_bits == "int8":
        assert isinstance(hf.model.embed_tokens, q35f_transformers.Q35fEmbedding)
        assert isinstance(hf.lm_head, Q35fLinear) and hf.lm_head.quantized.bits == "int8"
        assert all(p.ndim == 1 for p in hf.parameters())  # only norms are float tensors
    else:  # float embedding; the tied head is the same Parameter
        assert hf.lm_head.weight is hf.model.embed_tokens.weight
    # num_parameters counts packed weights as weights, a tied table once
    assert hf.num_parameters() == model_info(directory)[1]["params"]


def test_logits_equal_q35f_runtime(tiny):
    """A 40-token prompt (M >= 8: banded GEMM kernels) and a 5-token one (fused GEMV)."""
    _, _, hf, ours = tiny
    rng = np.random.default_rng(0)
    for length in (40, 5):
        ids = rng.integers(0, CONFIG["vocab_size"], length).tolist()
        assert_logits_close(hf_logits(hf, ids), ours.forward(ids, 0, all_logits=True))


def test_generate_equals_q35f_greedy_decoding(tiny):
    _, _, hf, ours = tiny
    prompt = np.random.default_rng(1).integers(3, CONFIG["vocab_size"], 7).tolist()
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    assert out[0, :7].tolist() == prompt
    assert out[0, 7:].tolist() == greedy_q35f(ours, prompt, 12)


def test_activations_reach_the_kernels_without_copies(tiny, no_array_copies):
    """Q35fLinear hands torch's memory to q35f.matmul: the same numbers as calling the kernels
    on the numpy array, and f2py reports no copy (no_array_copies)."""
    from q35f.kernels.tensor import matmul

    layer = tiny[2].model.layers[0].mlp.down_proj
    for rows in (1, 3, 20):
        x = torch.randn(rows, layer.in_features)
        np.testing.assert_array_equal(layer(x).numpy(), matmul(x.numpy(), layer.quantized))
    x3 = torch.randn(2, 5, layer.in_features)
    assert layer(x3).shape == (2, 5, layer.out_features)
    with pytest.raises(TypeError, match="float32"):
        layer(x.to(torch.float64))


def test_unsupported_options_are_refused_by_name(tiny):
    directory = tiny[0]
    with pytest.raises(ValueError, match="dtype=torch.bfloat16"):
        AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True,
                                             dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="device_map"):
        AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True,
                                             device_map="cuda")
    with pytest.raises(TypeError, match="load_in_4bit"):
        AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True,
                                             load_in_4bit=True)
    cls = q35f_transformers.Q35fLlamaForCausalLM
    with pytest.raises(ValueError, match="not a q35f directory"):
        cls.from_pretrained(directory.parent / "fp32")
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        cls.from_pretrained(directory.parent / "missing")
    with pytest.raises(NotImplementedError, match="q35f quantize"):
        tiny[2].save_pretrained(directory.parent / "saved")


def test_export_hf_upgrades_a_directory_written_without_it(tiny, tmp_path, capsys):
    """`q35f export-hf DIR` writes what an older q35f quantize did not; a plain Hugging Face
    directory is refused with one line."""
    old = tmp_path / "old"
    shutil.copytree(tiny[0], old)
    (old / remote_code.REMOTE_CODE_FILE).unlink()
    config = json.loads((old / "config.json").read_text())
    del config["auto_map"]
    (old / "config.json").write_text(json.dumps(config))
    assert cli.main(["export-hf", str(old)]) == 0
    assert json.loads((old / "config.json").read_text()) == dict(
        config, auto_map=remote_code.AUTO_MAP)
    hf = AutoModelForCausalLM.from_pretrained(old, trust_remote_code=True)
    ids = [5, 6, 7, 8]
    np.testing.assert_array_equal(hf_logits(hf, ids), hf_logits(tiny[2], ids))
    capsys.readouterr()
    assert cli.main(["export-hf", str(tiny[0].parent / "fp32")]) == 2
    err = capsys.readouterr().err
    assert "no quantization_config" in err and len(err.strip().splitlines()) == 1


# --- the embedded SmolLM2-135M-Instruct ----------------------------------------------------------


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """The embedded model quantized with the defaults (q35 G=128, int8 tied embedding/head),
    its linear layers rotated as the CLI's recipes do (FORMAT.md §9; round-to-nearest here, for
    time): transformers runs the rotated layers through the same kernels."""
    from q35f.runtime.generate import load_generator

    out = tmp_path_factory.mktemp("smol") / "q35"
    quantize_checkpoint(None, out, progress=False, rotation="hadamard")
    return (out, AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True),
            AutoTokenizer.from_pretrained(out), load_generator(out, max_seq_len=256))


@pytest.mark.slow
def test_embedded_model_logits_equal_q35f_runtime(smol):
    _, hf, tokenizer, generator = smol
    ids = tokenizer(PROMPT).input_ids
    assert ids == generator.encode(PROMPT) and len(ids) > 20
    ours = generator.model.forward(ids, 0, all_logits=True)
    assert_logits_close(hf_logits(hf, ids), ours)


@pytest.mark.slow
def test_embedded_model_chats_with_its_template(smol):
    """AutoTokenizer's chat template gives q35f's chat prompt token for token, and
    model.generate answers it with q35f's greedy tokens."""
    _, hf, tokenizer, generator = smol
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
    assert ids == generator.encode_chat(messages)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    out = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
    want, text = generator.generate(ids, 8, temperature=0.0)
    assert out.tolist() == want
    assert text.strip() and tokenizer.decode(out, skip_special_tokens=True) == text
