"""Sequential, layer-by-layer calibrated quantization with bounded memory.

The calibration tokens' hidden states (n_sequences, length, hidden) are carried from block to
block. In block l, each linear input's Hessian X^T X and mean square E[x^2] are gathered from
what that input really is once the layers before it are quantized, the layers reading it are
quantized (by a callback, e.g. GPTQ), and their *quantized* outputs feed what follows:

    attn_in  -> q, k, v    attention with quantized q/k/v -> attn_out -> o
    x + o(..) -> mlp_in -> gate, up    silu(gate) * up (quantized) -> mlp_hidden -> down

so each layer's error feedback compensates the errors already made upstream (GPTQ's "true
sequential" order). Memory holds the hidden states (tokens x hidden float32), one block's float
weights and its four Hessians (hidden^2 and intermediate^2 float64), never the whole model's:
for a 7B Llama (hidden 4096, intermediate 11008) about 0.13 + 0.8 + 1.4 GB.

With `propagation` a > 0 the float model's own hidden states are carried too, and each linear
quantizes W* = W + a W D^T X (X^T X + damping)^-1 instead of W, D = X_float - X the difference
of its float and quantized inputs (QEP, Arai & Ichikawa 2025; GPTAQ): with a = 1, W* is the
least-squares weight for which the quantized input reproduces the float model's output,
min ||X W*^T - X_float W^T||, so GPTQ's ||X (W* - Q)^T|| also works off the errors of the
blocks before; a < 1 shrinks that correction (it is fitted to the calibration text). Memory: one
more copy of the hidden states, the float inputs of one block and one more K^2 matrix.

Optionally (q35f.quantization.tune) each linear's float16 parameters are refitted to its final
levels right after GPTQ (`refit`), and once all seven linears of a block are quantized their
parameters are tuned together against a float target (`tune_steps`); the stream then carries
the outputs of the block as finally stored.
"""

from __future__ import annotations

import sys
import time

import numpy as np

_PARTS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
          "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


# What block l's tuning matches: the float block on the quantized-so-far inputs, or the float
# model's own hidden states after block l (which also asks it to undo the earlier blocks' error).
TARGETS = ("float-block", "float-stream")


def weight_name(layer: int, proj: str) -> str:
    return f"model.layers.{layer}.{_PARTS[proj]}.{proj}.weight"


class _Stats:
    """Running X^T X (float64) and token count of one input."""

    def __init__(self):
        self.hessian = None
        self.tokens = 0

    def add(self, x: np.ndarray):
        x = x.reshape(-1, x.shape[-1])
        if self.hessian is None:
            self.hessian = np.zeros((x.shape[1], x.shape[1]))
        self.hessian += x.T @ x  # float32 per sequence, summed in float64
        self.tokens += x.shape[0]

    @property
    def mean_square(self) -> np.ndarray:
        return np.diag(self.hessian) / max(self.tokens, 1)


def propagation_correction(x, x_float, hessian, damping) -> np.ndarray:
    """C (K, K) float64 with W* = W + W C the least-squares weight of min ||X W*^T - X_float
    W^T||: C = (X_float - X)^T X (X^T X + damping * mean(diag) I)^-1 (X (T, K) the quantized
    stream's input, X_float the float model's; hessian = X^T X)."""
    x = x.reshape(-1, x.shape[-1])
    cross = ((x_float.reshape(x.shape) - x).T @ x).astype(np.float64)
    h = np.array(hessian, dtype=np.float64, copy=True)
    h[np.diag_indices_from(h)] += damping * max(float(np.diag(h).mean()), 1e-30)
    # C = M H^-1 with H symmetric: C^T = H^-1 M^T
    return np.linalg.solve(h, cross.T).T


class LayerStream:
    """Quantizes the blocks of `source` in order over calibration `batches` (n, length).

    quantize(name, w, hessian, mean_square) -> QuantizedTensor is called for every linear
    weight of a block, with its input's statistics; `block(l)` returns block l's quantized
    tensors {name: QuantizedTensor}, running the blocks before it first and keeping those until
    asked for (the writer's progress bar moves as blocks finish).
    """

    def __init__(self, source, config: dict, batches: np.ndarray, quantize, refit=False,
                 tune_steps=0, target="float-block", tune_options=None, progress=False,
                 propagation=0.0, damping=None):
        from q35f.runtime.model import LlamaConfig, keep_freed_memory, rope_tables

        if target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
        if not 0 <= float(propagation) <= 1:
            raise ValueError(f"propagation must lie in [0, 1], got {propagation}")
        self.propagation = float(propagation)
        if damping is None:
            from q35f.quantization.gptq import DEFAULT_DAMPING as damping
        self.damping = float(damping)
        self.refit = bool(refit)
        self.tune_steps = int(tune_steps)
        self.target = target
        self.tune_options = dict(tune_options or {})
        self.tune_log = []  # (layer, mse before, mse after) of every tuned block
        self.seconds = {"refit": 0.0, "tune": 0.0}
        self.progress = progress

        keep_freed_memory()  # block after block frees and reallocates arrays of the same sizes
        self.source = source
        self.config = LlamaConfig.from_hf(config)
        self.quantize = quantize
        embed = source.get("model.embed_tokens.weight")
        self.x = np.ascontiguousarray(embed[np.asarray(batches)], dtype=np.float32)  # (n, T, h)
        del embed
        # the float model's hidden states, carried for the propagation or the tuning's target
        carry = self.propagation > 0 or (self.tune_steps and target == "float-stream")
        self.x_float = self.x.copy() if carry else None
        self.cos, self.sin = rope_tables(self.config, batches.shape[1])
        self.done = 0  # blocks already quantized and applied to self.x
        self.waiting = {}  # quantized blocks not asked for yet (a file listing 0, 1, 10, ..., 2)

    def block(self, layer: int) -> dict:
        """Block `layer`'s quantized tensors, once: running the blocks up to it if needed."""
        while self.done <= layer:
            self.waiting[self.done] = self._run_block(self.done)
            self.done += 1
        if layer not in self.waiting:
            raise ValueError(f"block {layer} was already handed out")
        return self.waiting.pop(layer)

    def _weights(self, layer, proj):
        return self.source.get(weight_name(layer, proj))

    def _run_block(self, layer: int) -> dict:
        from q35f.kernels.tensor import matmul

        norms = self.norms(layer)
        quantized = {}
        float_inputs = {}  # projs -> the float model's input to them (for the propagation)
        x_in = self.x if self.tune_steps else None
        if self.x_float is not None:  # the float model's own stream, first: its inputs are needed
            def keep(projs, x):
                if self.propagation:
                    float_inputs[projs] = x
            self.x_float = self.forward(self.x_float, norms, self.float_linear(layer), keep)

        def quantize_all(projs, x):
            stats = _Stats()
            stats.add(x)
            correction = None
            if self.propagation:
                correction = propagation_correction(x, float_inputs.pop(projs), stats.hessian,
                                                    self.damping)
                correction = (self.propagation * correction).astype(np.float32)  # float32 GEMMs
            for proj in projs:
                name = weight_name(layer, proj)
                w = self._weights(layer, proj)
                if correction is not None:  # the weight that undoes the upstream error
                    w = (w + w @ correction).astype(np.float32, copy=False)
                qt = self.quantize(name, w, stats.hessian, stats.mean_square)
                if self.refit:  # levels fixed: the best float16 parameters for them
                    from q35f.quantization.tune import refit_rows

                    started = time.perf_counter()
                    qt = refit_rows(qt, w, stats.hessian)
                    self.seconds["refit"] += time.perf_counter() - started
                quantized[name] = qt

        def linear(proj, x):
            return matmul(np.ascontiguousarray(x.reshape(-1, x.shape[-1])),
                          quantized[weight_name(layer, proj)]).reshape(*x.shape[:-1], -1)

        self.x = self.forward(self.x, norms, linear, quantize_all)
        if self.tune_steps:
            from q35f.quantization.tune import tune_block

            started = time.perf_counter()
            if self.target == "float-stream":
                target = self.x_float
            else:  # the float block on the quantized-so-far inputs
                target = self.forward(x_in, norms, self.float_linear(layer))
            by_proj = {proj: quantized[weight_name(layer, proj)] for proj in _PARTS}
            tuned, before, after = tune_block(x_in, target, by_proj, norms, self.config,
                                              self.cos, self.sin, steps=self.tune_steps,
                                              **self.tune_options)
            self.tune_log.append((layer, before, after))
            self.seconds["tune"] += time.perf_counter() - started
            if self.progress:
                print(f"\nblock {layer}: tuned output MSE {before:.4g} -> {after:.4g} "
                      f"({self.seconds['tune']:.0f} s tuning so far)", file=sys.stderr)
            if after < before:
                quantized.update({weight_name(layer, proj): qt for proj, qt in tuned.items()})
                self.x = self.forward(x_in, norms, linear)
        return quantized

    def norms(self, layer: int) -> tuple:
        """Block `layer`'s two RMSNorm weights (attention, feed-forward)."""
        p = f"model.layers.{layer}."
        return (self.source.get(p + "input_layernorm.weight"),
                self.source.get(p + "post_attention_layernorm.weight"))

    def float_linear(self, layer):
        """linear(proj, x) of block `layer` with the source's float weights."""
        def linear(proj, x):
            w = self._weights(layer, proj)
            return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], -1)
        return linear

    def forward(self, x, norms, linear, before=None) -> np.ndarray:
        """Block output (n, T, hidden) of x with linear(proj, input); before(projs, input) is
        called before the projections reading `input` are first used (to quantize them)."""
        from q35f.runtime.model import apply_rope, attention, rms_norm, swiglu, visible_mask

        c = self.config
        eps = c.rms_norm_eps
        n_heads, n_kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        attn_norm, mlp_norm = norms
        before = before or (lambda projs, inputs: None)
        n, t, _ = x.shape
        # attention
        h = rms_norm(x, attn_norm, eps)
        before(("q_proj", "k_proj", "v_proj"), h)
        q = linear("q_proj", h).reshape(n, t, n_heads, d)
        k = linear("k_proj", h).reshape(n, t, n_kv, d)
        v = linear("v_proj", h).reshape(n, t, n_kv, d)
        del h
        apply_rope(q, self.cos, self.sin)  # (n, T, heads, d): rotated along T
        apply_rope(k, self.cos, self.sin)
        mask = visible_mask(np.tril(np.ones((t, t), dtype=bool)))
        scale = np.float32(1 / np.sqrt(d))
        attn = np.stack([attention(q[s], k[s].transpose(1, 0, 2), v[s].transpose(1, 0, 2),
                                   mask, scale) for s in range(n)])  # (n, T, heads * d)
        del q, k, v
        before(("o_proj",), attn)
        x = x + linear("o_proj", attn)
        del attn
        # feed-forward
        h = rms_norm(x, mlp_norm, eps)
        before(("gate_proj", "up_proj"), h)
        hidden = swiglu(linear("gate_proj", h), linear("up_proj", h))
        del h
        before(("down_proj",), hidden)
        return x + linear("down_proj", hidden)
