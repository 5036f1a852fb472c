"""Tuning of the float16 group scales and offsets once GPTQ has fixed the levels.

A dequantized weight is offset + step * level per group (FORMAT.md §4; on the q35 grid the odd
columns' step is 15/7 of the scale), so with the levels fixed it is LINEAR in (scale, offset).
Two refinements use that, neither changes the file format (only the float16 values change):

* `refit_rows`: per row, the (scale, offset) of every group minimising the layer's output error
  (w - w_hat)^T H (w - w_hat), H = X^T X of its calibration inputs: a 2G x 2G least-squares
  problem per row. GPTQ chose its parameters before the error feedback moved the weights, so
  they are not the best ones for the final levels.
* `tune_block`: the parameters of all seven linears of one Llama block by Adam, minimising the
  block's output MSE against a float target on the calibration hidden states (OmniQuant /
  EfficientQAT-style block reconstruction, levels fixed). Needs torch.

Both round to float16 and keep the old parameters wherever the new ones do not lower the
objective (per row for the refit, per block for the tuning), so neither can do worse on what it
optimises.
"""

from __future__ import annotations

import numpy as np

from q35f.format.spec import get_format, n_groups
from q35f.kernels import reference

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TUNE_STEPS = 100
DEFAULT_TUNE_LR = 1e-3  # relative: scale *= 1 + a, offset += scale * b, with a, b trained
DEFAULT_TUNE_BATCH = 8  # calibration sequences per Adam step


def _column_factors(k: int, bits: str) -> np.ndarray:
    """float32 (K,): each column's step in units of its group's scale (15/7 on q35's odd)."""
    odd = (np.arange(k) % 2) == 1
    if get_format(bits).name == "q35":
        return np.where(odd, np.float32(15) / np.float32(7), np.float32(1)).astype(np.float32)
    return np.ones(k, np.float32)


def levels_of(qt) -> np.ndarray:
    """Unsigned grid levels int64 (N, K) of a QuantizedTensor."""
    return reference.unpack_levels(qt.packed, qt.shape[1], qt.bits)


def _with_params(qt, scale16, offset16):
    from q35f.kernels.tensor import QuantizedTensor

    return QuantizedTensor.from_packed(qt.packed, np.ascontiguousarray(scale16),
                                       np.ascontiguousarray(offset16), qt.shape, qt.group_size,
                                       qt.bits)


def _to_float16(scale, offset):
    """Finite float16 parameters, scales >= 0."""
    big = float(np.finfo(np.float16).max)
    scale = np.clip(np.nan_to_num(scale, nan=0.0), 0, big).astype(np.float16)
    offset = np.clip(np.nan_to_num(offset, nan=0.0), -big, big).astype(np.float16)
    return scale, offset


def row_errors(w, w_hat, hessian) -> np.ndarray:
    """Per row (w - w_hat)^T H (w - w_hat), float64 (N,)."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return ((d @ np.asarray(hessian, np.float64)) * d).sum(axis=1)


def refit_rows(qt, w, hessian, band: int = 256):
    """qt with every row's group parameters refitted in the Hessian metric (levels fixed);
    rows where the float16-rounded refit does not lower row_errors keep their old parameters.

    Row n's w_hat = E o + diag(l) E s (E: column -> group indicator, l: levels times step
    factors), so the normal equations of min (w - w_hat)^T H (w - w_hat) over (s, o) are
    [[E'LHLE, E'LHE], [E'HLE, E'HE]] [s; o] = [E'L H w; E'H w]."""
    n, k = qt.shape
    gs = qt.group_size
    groups = n_groups(k, gs)
    kp = groups * gs  # padded to whole groups: padding has level 0 and H 0, it adds nothing
    h = np.zeros((kp, kp))
    h[:k, :k] = hessian
    h4 = h.reshape(groups, gs, kp)
    lev = np.zeros((n, kp))
    lev[:, :k] = levels_of(qt) * _column_factors(k, qt.bits)
    w = np.asarray(w, np.float64)
    he = h.reshape(kp, groups, gs).sum(axis=2)  # H E (Kp, G)
    moo = he.reshape(groups, gs, groups).sum(axis=1)  # E'HE (G, G), the same for every row
    new_scale = np.empty((n, groups))
    new_offset = np.empty((n, groups))
    for first in range(0, n, band):
        rows = slice(first, min(first + band, n))
        lv = lev[rows]
        b = lv.shape[0]
        lv3 = lv.reshape(b, groups, gs)
        hl = np.einsum("bgi,gij->bjg", lv3, h4, optimize=True)  # H diag(l) E per row (b, Kp, G)
        mss = np.einsum("bgi,bgih->bgh", lv3, hl.reshape(b, groups, gs, groups), optimize=True)
        mso = np.einsum("bgi,gih->bgh", lv3, he.reshape(groups, gs, groups), optimize=True)
        hw = np.zeros((b, kp))
        hw[:, :k] = w[rows] @ hessian
        rs = (lv * hw).reshape(b, groups, gs).sum(axis=2)
        ro = hw.reshape(b, groups, gs).sum(axis=2)
        m = np.empty((b, 2 * groups, 2 * groups))
        m[:, :groups, :groups] = mss
        m[:, :groups, groups:] = mso
        m[:, groups:, :groups] = mso.transpose(0, 2, 1)
        m[:, groups:, groups:] = moo
        rhs = np.concatenate([rs, ro], axis=1)
        # a tiny ridge: a group whose levels are all equal has scale and offset collinear
        ridge = 1e-9 * np.trace(m, axis1=1, axis2=2)[:, None, None] / (2 * groups) + 1e-30
        theta = np.linalg.solve(m + ridge * np.eye(2 * groups), rhs[..., None])[..., 0]
        new_scale[rows], new_offset[rows] = theta[:, :groups], theta[:, groups:]
    s16, o16 = _to_float16(new_scale, new_offset)
    candidate = _with_params(qt, s16, o16)
    better = (row_errors(w, candidate.dequantize(), hessian)
              < row_errors(w, qt.dequantize(), hessian))
    s16 = np.where(better[:, None], s16, qt.scale)
    o16 = np.where(better[:, None], o16, qt.offset)
    return _with_params(qt, s16, o16)


# --- block reconstruction (torch) ----------------------------------------------------------------


def torch_block(x, weights: dict, attn_norm, mlp_norm, config, cos, sin):
    """One Llama block in torch, the same arithmetic as q35f.quantization.sequential's numpy one:
    x (B, T, hidden) -> (B, T, hidden); weights {proj: (N, K) tensor}; cos/sin (T, head_dim/2)."""
    import torch

    eps = config.rms_norm_eps
    n_heads, n_kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    b, t, _ = x.shape

    def norm(v, weight):
        return v * (weight / torch.sqrt((v * v).mean(-1, keepdim=True) + eps))

    def rope(v):  # (B, T, heads, d), rotate half
        half = d // 2
        v1, v2 = v[..., :half], v[..., half:]
        c, s = cos[:t, None, :], sin[:t, None, :]
        return torch.cat([v1 * c - v2 * s, v2 * c + v1 * s], dim=-1)

    h = norm(x, attn_norm)
    q = rope((h @ weights["q_proj"].T).reshape(b, t, n_heads, d))
    k = rope((h @ weights["k_proj"].T).reshape(b, t, n_kv, d))
    v = (h @ weights["v_proj"].T).reshape(b, t, n_kv, d)
    group = n_heads // n_kv
    q = q.permute(0, 2, 1, 3)  # (B, heads, T, d); head i reads kv head i // group
    k = k.permute(0, 2, 1, 3).repeat_interleave(group, dim=1)
    v = v.permute(0, 2, 1, 3).repeat_interleave(group, dim=1)
    scores = (q * (1 / np.sqrt(d))) @ k.transpose(-1, -2)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    scores = scores.masked_fill(mask, float("-inf")).softmax(-1)
    attn = (scores @ v).permute(0, 2, 1, 3).reshape(b, t, n_heads * d)
    x = x + attn @ weights["o_proj"].T
    h = norm(x, mlp_norm)
    gate = h @ weights["gate_proj"].T
    hidden = torch.nn.functional.silu(gate) * (h @ weights["up_proj"].T)
    return x + hidden @ weights["down_proj"].T


class _Dequantized:
    """W_hat(a, b) = (offset + scale * b) + scale * (1 + a) * step_factor * level, per group; a, b
    start at 0 (the given parameters), so one relative learning rate fits every tensor."""

    def __init__(self, qt):
        import torch

        self.qt = qt
        n, k = qt.shape
        gs = qt.group_size
        lev = levels_of(qt).astype(np.float32) * _column_factors(k, qt.bits)
        self.lev = torch.from_numpy(lev)
        self.scale = torch.from_numpy(qt.scale.astype(np.float32))
        self.offset = torch.from_numpy(qt.offset.astype(np.float32))
        self.a = torch.zeros_like(self.scale, requires_grad=True)
        self.b = torch.zeros_like(self.scale, requires_grad=True)
        self.expand = lambda p: p.repeat_interleave(gs, dim=1)[:, :k]

    def params(self):
        s = self.scale * (1 + self.a)
        return s, self.offset + self.scale * self.b

    def weight(self, rounded=False):
        import torch

        s, o = self.params()
        if rounded:  # what the file will hold
            s16, o16 = _to_float16(s.detach().numpy(), o.detach().numpy())
            s, o = (torch.from_numpy(v.astype(np.float32)) for v in (s16, o16))
        return self.expand(o) + self.expand(s) * self.lev

    def tuned(self):
        s, o = self.params()
        s16, o16 = _to_float16(s.detach().numpy(), o.detach().numpy())
        return _with_params(self.qt, s16, o16)


def _mse(x, target, weights, norms, config, cos, sin, batch):
    import torch

    total = 0.0
    with torch.no_grad():
        for first in range(0, x.shape[0], batch):
            out = torch_block(x[first:first + batch], weights, *norms, config, cos, sin)
            total += float(((out - target[first:first + batch]) ** 2).sum())
    return total / target.numel()


def tune_block(x, target, quantized: dict, norms, config, cos, sin,
               steps: int = DEFAULT_TUNE_STEPS, lr: float = DEFAULT_TUNE_LR,
               batch: int = DEFAULT_TUNE_BATCH, seed: int = 0):
    """Adam on the group parameters of one block's quantized linears {proj: QuantizedTensor}
    (levels fixed) for the least MSE of torch_block(x) against target (both (n, T, hidden)
    float32 numpy). Returns ({proj: QuantizedTensor}, mse before, mse after): the tuned
    float16 parameters if they lower the MSE over all of x, else the given ones."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    target = torch.from_numpy(np.ascontiguousarray(target, np.float32))
    norms = tuple(torch.from_numpy(np.asarray(v, np.float32)) for v in norms)
    cos, sin = torch.from_numpy(cos), torch.from_numpy(sin)
    deq = {p: _Dequantized(qt) for p, qt in quantized.items()}
    before = _mse(x, target, {p: d.weight(True) for p, d in deq.items()}, norms, config, cos,
                  sin, batch)
    opt = torch.optim.Adam([v for d in deq.values() for v in (d.a, d.b)], lr=lr)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    for _ in range(steps):
        pick = torch.from_numpy(rng.choice(n, size=min(batch, n), replace=False))
        out = torch_block(x[pick], {p: d.weight() for p, d in deq.items()}, *norms, config,
                          cos, sin)
        loss = ((out - target[pick]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _mse(x, target, {p: d.weight(True) for p, d in deq.items()}, norms, config, cos,
                 sin, batch)
    if after < before:
        return {p: d.tuned() for p, d in deq.items()}, before, after
    return dict(quantized), before, before
