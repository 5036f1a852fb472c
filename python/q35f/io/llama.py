"""The Llama family's facts in one place: tensor names, their shapes for a config, the config
defaults a config.json may leave out. Every reader, the converter and the model use these."""

from __future__ import annotations

import math
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
        if config.get(key) is None:
            raise ValueError(f"config has no {key!r}")
    config.setdefault("model_type", "llama")
    if config.get("num_key_value_heads") is None:  # transformers reads null as "no GQA" too
        config["num_key_value_heads"] = config["num_attention_heads"]
    hidden = config["hidden_size"]
    if isinstance(hidden, int):  # otherwise check_config names hidden_size itself
        config.setdefault("intermediate_size", 4 * hidden)
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


# --- config checks: every field the model reads, its type and range, in one place ------------

# A config reaches q35f from config.json or from GGUF metadata; either way each field the model
# reads must have its type (an int is never a bool, a string or a float) and a sane range (no
# zero heads, no 2^31 layers, no NaN epsilon), checked before anything is sized from it.
# Far beyond any released model, far below what would take minutes or GiB to set up.
LIMITS = {
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "head_dim": 4096,
    "vocab_size": 1 << 24,
    "max_position_embeddings": (1 << 31) - 1,
}
TOKEN_ID_LIMIT = 1 << 31
ROPE_TYPES = ("default", "linear", "llama3")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    def __init__(self, config: dict, where, prefix: str = ""):
        self.config, self.where, self.prefix = config, where, prefix

    def fail(self, key: str, value, problem: str):
        raise ValueError(f"{self.where}: config field {self.prefix}{key} = {_show(value)} "
                         f"{problem}")

    def integer(self, key: str, low: int, high: int, optional: bool = False):
        value = self.config.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, value, "must be an integer")
        if not low <= value <= high:
            self.fail(key, value, f"must lie in [{low}, {high}]")
        return value

    def number(self, key: str, low: float, high: float, optional: bool = True):
        value = self.config.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, value, "must be a number")
        if not (math.isfinite(value) and low < value <= high):
            self.fail(key, value, f"must be finite and in ({low:g}, {high:g}]")
        return float(value)

    def boolean(self, key: str):
        value = self.config.get(key)
        if value is not None and not isinstance(value, bool):
            self.fail(key, value, "must be true or false")
        return value


def check_config(config: dict, where) -> dict:
    """`config` (a Hugging Face LlamaConfig dict, defaults filled in) if every field is sound."""
    c = _Checker(config, where)
    hidden = c.integer("hidden_size", 1, LIMITS["hidden_size"])
    c.integer("intermediate_size", 1, LIMITS["intermediate_size"])
    c.integer("num_hidden_layers", 1, LIMITS["num_hidden_layers"])
    heads = c.integer("num_attention_heads", 1, min(hidden, LIMITS["num_attention_heads"]))
    kv_heads = c.integer("num_key_value_heads", 1, heads, optional=True) or heads
    if heads % kv_heads:
        c.fail("num_key_value_heads", kv_heads, f"must divide num_attention_heads = {heads}")
    head_dim = c.integer("head_dim", 2, LIMITS["head_dim"], optional=True)
    if head_dim is None:
        head_dim = hidden // heads
        if hidden % heads:
            c.fail("hidden_size", hidden, f"must be a multiple of num_attention_heads = {heads} "
                   "when head_dim is not given")
    if head_dim % 2:
        c.fail("head_dim", head_dim, "must be even (rotary embeddings rotate pairs)")
    c.integer("vocab_size", 1, LIMITS["vocab_size"])
    c.integer("max_position_embeddings", 1, LIMITS["max_position_embeddings"], optional=True)
    c.number("rms_norm_eps", 0.0, 1.0, optional=False)
    c.number("rope_theta", 0.0, 1e12, optional="rope_theta" not in config)
    c.boolean("tie_word_embeddings")
    for key in ("attention_bias", "mlp_bias"):
        if c.boolean(key):
            c.fail(key, True, "is not supported (Llama without biases only)")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        c.fail("hidden_act", act, "is not supported (only 'silu')")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        ids = value if isinstance(value, list) and key == "eos_token_id" else [value]
        if value is None or not ids:
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < TOKEN_ID_LIMIT
                   for i in ids):
            c.fail(key, value, f"must be a token id (an integer in [0, 2^31)) or a list of them")
    _check_rope_scaling(c, config.get("rope_scaling"))
    parameters = config.get("rope_parameters")
    if parameters is not None and not isinstance(parameters, dict):
        c.fail("rope_parameters", parameters, "must be an object")
    return config


def _check_rope_scaling(c: _Checker, scaling) -> None:
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        c.fail("rope_scaling", scaling, "must be an object or null")
    s = _Checker(scaling, c.where, "rope_scaling.")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        s.fail("rope_type", kind, f"is not supported ({', '.join(ROPE_TYPES)})")
    if kind == "default":
        return
    s.number("factor", 0.0, 1e6, optional=False)
    if kind == "llama3":
        s.integer("original_max_position_embeddings", 1, LIMITS["max_position_embeddings"])
        low = s.number("low_freq_factor", 0.0, 1e6) or 1.0
        high = s.number("high_freq_factor", 0.0, 1e6) or 4.0
        if high == low:
            s.fail("high_freq_factor", high, "must differ from low_freq_factor")
