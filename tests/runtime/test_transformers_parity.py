"""The numpy forward pass against PyTorch transformers' LlamaForCausalLM on the same float32 weights.

The HF model is built from the checkpoint's config and tensors (no hub access). Tolerance: every
logit within 1e-4 of the reference, relative to the largest reference logit of its row.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from q35f.io.checkpoint import default_model_path, open_checkpoint  # noqa: E402
from q35f.runtime.model import LlamaConfig, Model, Weights  # noqa: E402

PROMPT = ("It is a truth universally acknowledged, that a single man in possession of a good "
          "fortune, must be in want of a wife.")


def hf_model(config: dict, tensors: dict):
    """LlamaForCausalLM with exactly these float32 tensors (eager attention, float32)."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
            "rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings")
    cfg = HFConfig(**{k: config[k] for k in keys if config.get(k) is not None},
                   attn_implementation="eager")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("meta"):  # no random initialisation: every parameter is assigned below
        model = LlamaForCausalLM(cfg)
    state = {name: torch.from_numpy(np.ascontiguousarray(w)) for name, w in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}  # tied heads share the embedding
    model.tie_weights()
    model.model.rotary_emb = LlamaRotaryEmbedding(cfg)  # its buffers were on the meta device
    model.eval()
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    if config.get("tie_word_embeddings"):
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_logits_close(ours, ref, rel=1e-4):
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    err = np.abs(ours - ref) / scale
    assert err.max() < rel, f"max relative logit error {err.max():.2e}"


class FakeCheckpoint:
    def __init__(self, config, tensors):
        self.config = config
        self.tensors = tensors

    def names(self):
        return list(self.tensors)

    def get(self, name):
        return self.tensors[name]


@pytest.mark.slow
def test_embedded_model_logits_match_transformers():
    with open_checkpoint(default_model_path()) as ck:
        tensors = {name: ck.get(name) for name in ck.names()}
        config = dict(ck.config)
        ids = ck.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    assert len(ids) > 20
    cfg = LlamaConfig.from_hf(config)
    ours = Model(cfg, Weights.from_checkpoint(FakeCheckpoint(config, tensors), cfg),
                 max_seq_len=64)
    logits = ours.forward(ids, 0, all_logits=True)
    reference = hf_logits(hf_model(config, tensors), ids)
    assert_logits_close(logits, reference)
    # the model really predicts text: "wife" follows "in want of a"
    assert np.argmax(logits[-3]) == ids[-2]


@pytest.mark.parametrize("rope_scaling,tied", [
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}, False),
    ({"rope_type": "linear", "factor": 2.0}, True),
    (None, False),
])
def test_random_model_matches_transformers(rope_scaling, tied):
    """Rope scaling types, an untied head and GQA (4 query heads per KV head), positions to 200."""
    rng = np.random.default_rng(1)
    config = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
              "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "rope_scaling": rope_scaling, "max_position_embeddings": 256,
              "tie_word_embeddings": tied}
    tensors = random_llama_tensors(config, rng)
    cfg = LlamaConfig.from_hf(config)
    ours = Model(cfg, Weights.from_checkpoint(FakeCheckpoint(config, tensors), cfg))
    ids = rng.integers(0, 300, size=200).tolist()
    reference = hf_logits(hf_model(config, tensors), ids)
    assert_logits_close(ours.forward(ids, 0, all_logits=True), reference)


def random_llama_tensors(config, rng):
    h, f = config["hidden_size"], config["intermediate_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(config["vocab_size"], h, scale=1.0),
               "model.norm.weight": 1 + w(h, scale=0.1)}
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = w(config["vocab_size"], h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": 1 + w(h, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + w(h, scale=0.1),
            p + "self_attn.q_proj.weight": w(q, h, scale=0.3),
            p + "self_attn.k_proj.weight": w(kv, h, scale=0.3),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, q),
            p + "mlp.gate_proj.weight": w(f, h),
            p + "mlp.up_proj.weight": w(f, h),
            p + "mlp.down_proj.weight": w(h, f),
        })
    return tensors
