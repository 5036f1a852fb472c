"""llama_config.check_config: each field's type and range, with the file and field named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ on the path only while the harness is imported: it also holds kernels.py, which
# would pass for the `kernels` package that transformers looks for.
BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, BENCH)

from fuzzing.seeds import TINY_CONFIG  # noqa: E402
sys.path.remove(BENCH)

from q35f.io.llama import check_config  # noqa: E402


def test_the_tiny_config_is_sound():
    assert check_config(dict(TINY_CONFIG), "config.json") == TINY_CONFIG


@pytest.mark.parametrize("field, value", [
    ("hidden_size", "32"), ("hidden_size", 32.0), ("hidden_size", True), ("hidden_size", 0),
    ("hidden_size", [32]), ("num_attention_heads", 0), ("num_attention_heads", False),
    ("num_attention_heads", 3), ("num_attention_heads", 64), ("num_key_value_heads", 3),
    ("num_key_value_heads", 8), ("num_hidden_layers", 10**7), ("num_hidden_layers", -1),
    ("num_hidden_layers", 2**31 - 1), ("vocab_size", 2**40), ("intermediate_size", None),
    ("head_dim", 7), ("max_position_embeddings", 2**32 - 1), ("max_position_embeddings", 0),
    ("max_position_embeddings", 1e308), ("rms_norm_eps", float("nan")), ("rms_norm_eps", 0),
    ("rms_norm_eps", "1e-5"), ("rope_theta", float("inf")), ("rope_theta", -1),
    ("eos_token_id", 1e308), ("eos_token_id", -1), ("eos_token_id", [1, "2"]),
    ("bos_token_id", [[[]]]), ("tie_word_embeddings", "yes"), ("hidden_act", "gelu"),
    ("attention_bias", True), ("rope_scaling", 3), ("rope_scaling", {"rope_type": "yarn"}),
    ("rope_scaling", {"rope_type": "linear", "factor": 0}),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
])
def test_a_bad_field_is_named_with_its_file(field, value):
    config = dict(TINY_CONFIG, **{field: value})
    with pytest.raises(ValueError) as err:
        check_config(config, "/models/x/config.json")
    message = str(err.value)
    assert message.startswith("/models/x/config.json: config field ")
    assert field in message and "\n" not in message
