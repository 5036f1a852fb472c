"""The Llama family's facts in one place: tensor names, their shapes for a config, the config
defaults a config.json may leave out. Every reader, the converter and the model use these."""

from __future__ import annotations

import re

# Model types whose tensors follow the Llama naming and shapes checked below.
LLAMA_LIKE = ("llama", "mistral")

# Defaults of transformers' LlamaConfig for keys a config.json may leave out.
LLAMA_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# The linear layers of the transformer blocks (quantized with --bits) and the embedding / output
# head (quantized with --head-bits).
LINEAR = re.compile(
    r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight"
)
HEAD_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def normalize_config(config: dict) -> dict:
    """Fill the keys the model reads with transformers' LlamaConfig defaults (never overwrite)."""
    config = dict(config)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in config:
            raise ValueError(f"config has no {key!r}")
    config.setdefault("model_type", "llama")
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    config.setdefault("intermediate_size", 4 * config["hidden_size"])
    for key, value in LLAMA_DEFAULTS.items():
        config.setdefault(key, value)
    return config


def expected_shapes(config: dict) -> dict:
    """Hugging Face name -> shape of every weight of a Llama-family model with this config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    return shapes


def check_shapes(infos: dict, config: dict, where) -> None:
    """Every expected tensor present with its expected shape; errors name the file and tensor."""
    if config.get("model_type") not in LLAMA_LIKE:
        return
    for name, shape in expected_shapes(config).items():
        if name not in infos:
            raise ValueError(f"{where}: tensor {name} is missing")
        got = tuple(infos[name].shape)
        if got != tuple(shape):
            raise ValueError(
                f"{infos[name].source}: tensor {name} has shape {got}, but config.json "
                f"implies {tuple(shape)}"
            )
