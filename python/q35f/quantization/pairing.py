"""Importance-aware pairing: put each layer's important input channels on the 4-bit positions.

In a q35 row the even weight of every pair gets 4 bits and the odd one 3 (FORMAT.md §2), so
the order of a layer's input channels decides which weights get the finer grid. We sort the
channels by importance and send the top half to the even positions (in decreasing order), the
rest to the odd ones:

    perm[0::2] = order[:K/2],  perm[1::2] = order[K/2:],   W' = W[:, perm],  x' = x[perm]

and x' @ W'.T == x @ W.T. The permutation is *folded into the model* instead of being applied
at run time, so the file stays a plain format-version-1 q35f model that any reader loads and
the kernels never see a permutation:

- hidden channels (input of q/k/v and gate/up, one order for the whole residual stream): the
  embedding's and head's columns, every RMSNorm weight, the columns of q/k/v/gate/up and the
  rows of o/down are permuted alike (RMSNorm is invariant under a permutation of channels);
- intermediate channels of layer l (input of down): the rows of gate/up and the columns of down;
- attention output of layer l (input of o): within each head only, one order per kv head shared
  by the query heads that read it: the rows of v and the columns of o.

Importance of channel c of an input: "activation": E[x_c^2] * ||W[:, c]||^2 summed over the
layers reading that input (calibration data, q35f.quantization.calibrate); "weight": ||W[:, c]||^2 alone.
Each layer's importances are normalised to sum 1 before the hidden channels add them up.
"""

from __future__ import annotations

import numpy as np

PAIRINGS = ("none", "weight", "activation")


def pairing_order(importance: np.ndarray) -> np.ndarray:
    """perm with the most important half of the channels on even positions (stable)."""
    importance = np.asarray(importance, dtype=np.float64)
    order = np.argsort(-importance, kind="stable")
    k = order.size
    perm = np.empty(k, dtype=np.int64)
    n_even = (k + 1) // 2
    perm[0::2] = order[:n_even]
    perm[1::2] = order[n_even:]
    return perm


def _col_norms(w):
    return (np.asarray(w, dtype=np.float64) ** 2).sum(axis=0)


def _normalised(v):
    total = v.sum()
    return v / total if total > 0 else v


def build_permutations(ck, config: dict, mode: str, calib=None) -> dict:
    """name -> (row_perm or None, col_perm or None) for every tensor the pairing touches."""
    if mode not in PAIRINGS:
        raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {mode!r}")
    if mode == "none":
        return {}
    if mode == "activation" and calib is None:
        raise ValueError("pairing 'activation' needs calibration data (--calibration)")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    group = heads // kv_heads

    def act(layer, key, k):
        return calib.mean_square[(layer, key)] if mode == "activation" else np.ones(k)

    perms = {}
    hidden_importance = np.zeros(hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names = {s: p + ("self_attn." if s in "qkvo" else "mlp.") + f"{s}_proj.weight"
                 for s in ("q", "k", "v", "o", "gate", "up", "down")}
        qkv = sum(_col_norms(ck.get(names[s])) for s in "qkv")
        gate_up = sum(_col_norms(ck.get(names[s])) for s in ("gate", "up"))
        hidden_importance += _normalised(act(i, "attn_in", hidden) * qkv)
        hidden_importance += _normalised(act(i, "mlp_in", hidden) * gate_up)
        # intermediate channels: rows of gate/up, columns of down
        down = ck.get(names["down"])
        inter = pairing_order(act(i, "mlp_hidden", down.shape[1]) * _col_norms(down))
        perms[names["gate"]] = (inter, None)
        perms[names["up"]] = (inter, None)
        perms[names["down"]] = (None, inter)
        # attention output: one within-head order per kv head
        wo = ck.get(names["o"])
        imp = (act(i, "attn_out", wo.shape[1]) * _col_norms(wo)).reshape(kv_heads, group, head_dim)
        within = [pairing_order(imp[h].sum(axis=0)) for h in range(kv_heads)]
        perms[names["v"]] = (np.concatenate([h * head_dim + within[h]
                                             for h in range(kv_heads)]), None)
        perms[names["o"]] = (None, np.concatenate([q * head_dim + within[q // group]
                                                   for q in range(heads)]))
    hperm = pairing_order(hidden_importance)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            rows, _ = perms.get(p + name + ".weight", (None, None))
            perms[p + name + ".weight"] = (rows, hperm)
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            _, cols = perms.get(p + name + ".weight", (None, None))
            perms[p + name + ".weight"] = (hperm, cols)
        for name in ("input_layernorm", "post_attention_layernorm"):
            perms[p + name + ".weight"] = (hperm, None)
    perms["model.norm.weight"] = (hperm, None)
    perms["model.embed_tokens.weight"] = (None, hperm)
    if "lm_head.weight" in ck.names():
        perms["lm_head.weight"] = (None, hperm)
    return perms


class PermutedCheckpoint:
    """A read-only view of a checkpoint with the permutations folded in (same model function)."""

    def __init__(self, ck, perms: dict):
        self._ck = ck
        self.perms = perms

    def __getattr__(self, attr):
        return getattr(self._ck, attr)

    def __contains__(self, name):
        return name in self._ck

    def get(self, name: str):
        w = self._ck.get(name)
        rows, cols = self.perms.get(name, (None, None))
        if w.ndim == 1:
            return w if rows is None else np.ascontiguousarray(w[rows])
        if rows is not None:
            w = w[rows]
        if cols is not None:
            w = w[:, cols]
        return np.ascontiguousarray(w)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        rows, cols = self.perms.get(name, (None, None))
        if rows is None:
            w = self._ck.get_rows(name, start, stop)
        else:
            w = self._ck.get(name)[rows[start:stop]]
        if cols is not None:
            w = w[:, cols]
        return np.ascontiguousarray(w)

    def input_perm(self, name: str):
        """The column permutation applied to weight `name` (None if unchanged)."""
        return self.perms.get(name, (None, None))[1]
