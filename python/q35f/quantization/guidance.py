"""End-loss guidance for the layer-wise objective: which calibration tokens matter for each linear.

GPTQ minimises ||X (W - Q)^T||^2, every token and output channel alike. To second order the
model's loss moves by sum_t sum_j g_tj^2 (dY_tj)^2 (diagonal Fisher on the linear's outputs
Y = X W^T, g = dL/dY; GuidedQuant, Kim et al. 2025), so a token whose outputs the loss is
sensitive to should weigh more. With one weight per token, w_t = sum_j g_tj^2, the objective
is ||diag(w)^1/2 X (W - Q)^T||^2: GPTQ with the Hessian X^T diag(w) X.

`output_gradient_weights` runs the float model (torch) over the calibration sequences once,
forward and backward through the next-token cross-entropy, and returns those w_t per linear
and token. The calibration text is the model's own sampled text, so the squared gradients
estimate the model's Fisher information (labels drawn from the model itself). The weights are
normalised to mean 1 and mixed with uniform ones (`strength`), since the square of a gradient
is spiky and a few tokens must not decide a layer. Memory: the float model in torch plus one
batch's activations; time: about one forward and one backward of the model over the tokens.
"""

from __future__ import annotations

import numpy as np

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_GUIDANCE_STRENGTH = 1.0


class FloatModel:
    """The source's float Llama in torch (the arithmetic of q35f.quantization.tune.torch_block),
    for the loss of next-token prediction and the gradients at every linear's output."""

    def __init__(self, source, config: dict, length: int):
        import torch

        from q35f.quantization.sequential import weight_name
        from q35f.runtime.model import LlamaConfig, rope_tables

        self.config = c = LlamaConfig.from_hf(config)
        self.cos, self.sin = (torch.from_numpy(v) for v in rope_tables(c, length))

        def tensor(name):
            return torch.from_numpy(np.ascontiguousarray(source.get(name), np.float32))

        self.embed = tensor("model.embed_tokens.weight")
        tied = c.tie_word_embeddings or "lm_head.weight" not in source.names()
        self.head = self.embed if tied else tensor("lm_head.weight")
        self.final_norm = tensor("model.norm.weight")
        self.layers = []
        for layer in range(c.num_hidden_layers):
            p = f"model.layers.{layer}."
            self.layers.append(({proj: tensor(weight_name(layer, proj)) for proj in PROJS},
                                tensor(p + "input_layernorm.weight"),
                                tensor(p + "post_attention_layernorm.weight")))

    def loss(self, ids, taps=None):
        """Summed next-token cross-entropy of ids (B, T) int64 tensor; taps: a list that
        receives each block's {proj: output}, gradients retained."""
        import torch

        from q35f.quantization.tune import torch_block

        x = self.embed[ids]
        if taps is not None:
            x.requires_grad_(True)  # so every linear output has a gradient
        for weights, attn_norm, mlp_norm in self.layers:
            tapped = None if taps is None else {}
            x = torch_block(x, weights, attn_norm, mlp_norm, self.config, self.cos, self.sin,
                            tapped)
            if taps is not None:
                taps.append(tapped)
        eps = self.config.rms_norm_eps
        x = x * (self.final_norm / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))
        logits = x[:, :-1] @ self.head.T
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1), reduction="sum")


def output_gradient_weights(source, config: dict, batches: np.ndarray, batch: int = 8,
                            strength: float = DEFAULT_GUIDANCE_STRENGTH) -> dict:
    """{(layer, proj): float32 (n, T) token weights} for calibration `batches` (n, T): per
    linear, (1 - strength) + strength * w_t / mean(w), w_t = ||dL/dY_t||^2 of the float model.
    The last position of a sequence predicts nothing, so its w_t is 0."""
    import torch

    if not 0 <= float(strength) <= 1:
        raise ValueError(f"guidance strength must lie in [0, 1], got {strength}")
    batches = np.asarray(batches)
    n, t = batches.shape
    model = FloatModel(source, config, t)
    out = {(layer, proj): np.zeros((n, t), np.float32)
           for layer in range(model.config.num_hidden_layers) for proj in PROJS}
    for first in range(0, n, batch):
        ids = torch.from_numpy(batches[first:first + batch].astype(np.int64))
        taps = []
        model.loss(ids, taps).backward()
        for layer, tapped in enumerate(taps):
            for proj, y in tapped.items():
                out[layer, proj][first:first + ids.shape[0]] = (y.grad ** 2).sum(-1).numpy()
        del taps
    for key, w in out.items():
        mean = float(w.mean())
        w = w / mean if mean > 0 else np.ones_like(w)
        out[key] = ((1 - strength) + strength * w).astype(np.float32)
    return out
