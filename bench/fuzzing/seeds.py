"""Tiny valid models the campaign mutates: never fetched, always written here from a seed.

Shapes are Llama's in miniature (GQA, tied embedding, byte-level BPE over the 256 byte symbols)
so every loader path runs, and a load plus a few decoded tokens takes milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def tiny_tokenizer():
    """A byte-level BPE whose 256 tokens are the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab={c: i for i, c in enumerate(byte_alphabet())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tiny_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face name -> float32 weights, small enough that activations stay tame."""
    from q35f.io.llama import expected_shapes

    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return weights


def write_hf(directory: Path, config: dict = TINY_CONFIG, dtype=np.float32, seed: int = 0,
             shards: int = 1) -> Path:
    """A Hugging Face directory: config.json, tokenizer files, one or `shards` safetensors."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    stored = {name: w.astype(dtype) for name, w in tiny_weights(config, seed).items()}
    if shards == 1:
        save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    names = list(stored)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: stored[n] for n in names[s::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return directory


def write_q35f(directory: Path, source: Path, bits: str = "q35", head_bits: str = "int8") -> Path:
    """A q35f directory quantized from the HF directory `source` (group size 32)."""
    from q35f.quantization.convert import quantize_checkpoint

    quantize_checkpoint(source, directory, bits=bits, group_size=32, head_bits=head_bits,
                        progress=False)
    return Path(directory)


# GGUF: the metadata as (key, value, value type, array item type) so mutators can rewrite it.

def gguf_metadata(config: dict = TINY_CONFIG) -> list[tuple]:
    from gguf import GGUFValueType as T

    tokens = byte_alphabet()
    return [
        ("general.architecture", "llama", T.STRING, None),
        ("general.name", "tiny", T.STRING, None),
        ("llama.block_count", config["num_hidden_layers"], T.UINT32, None),
        ("llama.context_length", config["max_position_embeddings"], T.UINT32, None),
        ("llama.embedding_length", config["hidden_size"], T.UINT32, None),
        ("llama.feed_forward_length", config["intermediate_size"], T.UINT32, None),
        ("llama.attention.head_count", config["num_attention_heads"], T.UINT32, None),
        ("llama.attention.head_count_kv", config["num_key_value_heads"], T.UINT32, None),
        ("llama.attention.layer_norm_rms_epsilon", config["rms_norm_eps"], T.FLOAT32, None),
        ("llama.rope.freq_base", config["rope_theta"], T.FLOAT32, None),
        ("llama.vocab_size", config["vocab_size"], T.UINT32, None),
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.pre", "default", T.STRING, None),
        ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", [3, 3] + [1] * (len(tokens) - 2), T.ARRAY, T.INT32),
        ("tokenizer.ggml.bos_token_id", config["bos_token_id"], T.UINT32, None),
        ("tokenizer.ggml.eos_token_id", config["eos_token_id"], T.UINT32, None),
        ("tokenizer.ggml.add_bos_token", False, T.BOOL, None),
        ("tokenizer.chat_template", CHAT_TEMPLATE, T.STRING, None),
    ]


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_tensors(config: dict = TINY_CONFIG, seed: int = 0) -> list[tuple]:
    """(llama.cpp name, float32 array, storage type): F32 norms, Q8_0 / F16 matrices."""
    from gguf import GGMLQuantizationType as Q

    from q35f.io.gguf import permute_rotary

    out = []
    for name, w in tiny_weights(config, seed).items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{_GGUF_NAMES[rest.rsplit('.', 1)[0]]}.weight"
        if name.endswith("q_proj.weight"):
            w = permute_rotary(w, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = permute_rotary(w, config["num_key_value_heads"])
        kind = Q.F32 if w.ndim == 1 else (Q.Q8_0 if "ffn" in gname else Q.F16)
        out.append((gname, w, kind))
    return out


def write_gguf(path: Path, metadata: list[tuple] | None = None,
               tensors: list[tuple] | None = None) -> Path:
    """A GGUF file from (key, value, type, item type) metadata and (name, array, type) tensors."""
    import gguf

    metadata = gguf_metadata() if metadata is None else metadata
    tensors = gguf_tensors() if tensors is None else tensors
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.kv_data[0].clear()  # the architecture comes from `metadata`, like every other key
    for key, value, vtype, sub in metadata:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for name, w, kind in tensors:
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(w, kind),
                              raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


SEED_KINDS = ("hf", "hf-bf16", "hf-sharded", "q35f", "q35f-int4", "gguf")


def write_seeds(root: Path) -> dict[str, Path]:
    """Every seed under `root`: kind -> path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seeds = {
        "hf": write_hf(root / "hf"),
        "hf-bf16": write_hf(root / "hf-bf16", dtype=_bfloat16()),
        "hf-sharded": write_hf(root / "hf-sharded", shards=2),
        "gguf": write_gguf(root / "tiny.gguf"),
    }
    seeds["q35f"] = write_q35f(root / "q35f", seeds["hf"])
    seeds["q35f-int4"] = write_q35f(root / "q35f-int4", seeds["hf"], bits="int4",
                                    head_bits="fp16")
    return seeds


def _bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16
