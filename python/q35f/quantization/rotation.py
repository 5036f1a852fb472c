"""Rotations folded into the model before quantization (QuaRot / SpinQuant style, offline only).

An orthogonal change of basis of the residual stream leaves a Llama's function unchanged once
the RMSNorm weights are folded into the linears that read the norm's output (RMSNorm is then a
pure division by the RMS, which an orthogonal Q preserves). Row-vector convention, y = x W^T:

    h' = h Q                      the residual stream, rotated
    E' = E Q                      token embedding (rows)
    W' = W diag(g) Q              q/k/v and gate/up (read a norm with weight g); g -> 1
    W' = Q^T W                    o and down (write into the stream)
    W_head' = W_head diag(g_f) Q  output head (final norm g_f); g_f -> 1

A tied head is untied: E Q and E diag(g_f) Q differ unless g_f is constant (the file gains one
8-bit vocabulary x hidden matrix; the run-time cost is nil, the head GEMV was there already).
Within each head, the values get an orthogonal H too (v' = H^T v, o's columns of that head times
H): attention averages values over positions, which commutes with H. Nothing changes at run
time: the result is an ordinary Llama checkpoint whose weights have no outlier channels along
the rotated dimensions, which the per-group grid of a q35 row quantizes with less error.
The intermediate channels (input of down) cannot be rotated offline (SwiGLU is elementwise).
"""

from __future__ import annotations

import numpy as np

_READS_NORM = {"self_attn.q_proj": "input_layernorm", "self_attn.k_proj": "input_layernorm",
               "self_attn.v_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm",
               "mlp.up_proj": "post_attention_layernorm"}
_WRITES_STREAM = ("self_attn.o_proj", "mlp.down_proj")
EMBED, HEAD, FINAL_NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal (n, n) float64 matrix (QR of a Gaussian, signs fixed)."""
    a = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(a)
    return q * np.sign(np.diag(r))


def hadamard(n: int) -> np.ndarray:
    """The normalised Sylvester Hadamard matrix of order n (a power of two), symmetric."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


class RotatedCheckpoint:
    """A read-only view of a float Llama checkpoint with the rotations folded in."""

    def __init__(self, ck, seed: int = 0):
        from q35f.io.checkpoint import TensorInfo

        self._ck = ck
        self.seed = int(seed)
        cfg = ck.config
        hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads") or self.heads
        self.head_dim = cfg.get("head_dim") or hidden // self.heads
        self.q = random_orthogonal(hidden, self.seed)
        d = self.head_dim
        self.h = hadamard(d) if d & (d - 1) == 0 else random_orthogonal(d, self.seed + 1)
        self.config = dict(cfg, tie_word_embeddings=False)
        self._infos = {i.name: i for i in ck.infos()}
        if HEAD not in self._infos:  # tied: the rotated head is its own tensor
            e = self._infos[EMBED]
            self._infos[HEAD] = TensorInfo(HEAD, e.shape, "F32", 4 * e.n_params)
        self._cache = (None, None)  # (name, rotated tensor): get_rows reads bands of one tensor

    def describe(self) -> dict:
        return {"residual": "random orthogonal", "values": "hadamard" if self._is_pow2() else
                "random orthogonal", "seed": self.seed}

    def _is_pow2(self):
        return self.head_dim & (self.head_dim - 1) == 0

    def __getattr__(self, attr):
        return getattr(self._ck, attr)

    def __contains__(self, name):
        return name in self._infos

    def names(self):
        return list(self._infos)

    def infos(self):
        return list(self._infos.values())

    def info(self, name):
        return self._infos[name]

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.get(name)[start:stop]

    def get(self, name: str) -> np.ndarray:
        if self._cache[0] != name:
            self._cache = (name, np.ascontiguousarray(self._rotated(name), dtype=np.float32))
        return self._cache[1]

    def _rotated(self, name: str) -> np.ndarray:
        if name == HEAD:
            w = self._ck.get(HEAD if HEAD in self._ck else EMBED)
            return (w * self._ck.get(FINAL_NORM).astype(np.float64)) @ self.q
        if name == EMBED:
            return self._ck.get(EMBED) @ self.q
        if name == FINAL_NORM or name.endswith(("input_layernorm.weight",
                                                "post_attention_layernorm.weight")):
            return np.ones_like(self._ck.get(name))
        w = self._ck.get(name)
        parts = name.split(".")
        if len(parts) != 6 or parts[:2] != ["model", "layers"]:
            return w
        layer, proj = parts[2], f"{parts[3]}.{parts[4]}"
        if proj in _READS_NORM:
            g = self._ck.get(f"model.layers.{layer}.{_READS_NORM[proj]}.weight")
            w = (w * g.astype(np.float64)) @ self.q
            if proj == "self_attn.v_proj":  # rows of each kv head: H^T v
                d = self.head_dim
                w = np.einsum("ji,hjk->hik", self.h, w.reshape(self.kv_heads, d, -1))
                w = w.reshape(self.kv_heads * d, -1)
            return w
        if proj in _WRITES_STREAM:
            w = self.q.T @ w.astype(np.float64)
            if proj == "self_attn.o_proj":  # columns of each query head: times H
                d = self.head_dim
                w = (w.reshape(-1, self.heads, d) @ self.h).reshape(w.shape[0], -1)
            return w
        return w
