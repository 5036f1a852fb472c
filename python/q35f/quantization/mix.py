"""Mixes: which block linears a q35 file stores in another format, inside the same budget.

Measured on the embedded model (`python bench/linear_sensitivity.py`: one class of linears
quantized by the default recipe at a time, the rest float, KL divergence to the float model on
generated text past the calibration tokens; docs/RESULTS.md "Session 12"): per weight, v_proj
costs 8x and k_proj 4x what q_proj does, and they are a third of its size (grouped-query attention). So "kv4-q3" stores k
and v in int4 and pays for it with q in int3: 0.016 bits per weight fewer than q35 everywhere
on this model. That holds where k and v together are at most q's size (grouped-query attention
with at least two query heads per kv head); elsewhere the mix would cost bits and is not used
(`applicable`). q, k and v stay one input of the fused decode step (decode_block takes q and
the stacked k/v as two GEMVs).
"""

from __future__ import annotations

MIXES = {
    "none": {},
    "kv4-q3": {"q_proj": "int3", "k_proj": "int4", "v_proj": "int4"},
}


def check_mix(mix: str) -> str:
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {list(MIXES)}, got {mix!r}")
    return mix


def applicable(mix: str, config: dict) -> bool:
    """Whether `mix` keeps a model with HF `config` within q35's budget: kv4-q3 pays 1/2 bit
    per k/v weight with 1/2 bit per q weight, so k and v together must be at most q's size."""
    if check_mix(mix) == "none":
        return True
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    return 2 * kv_heads <= heads


def tensor_bits(name: str, bits: str, mix: str = "none") -> str:
    """The format of linear weight `name` (HF name) in a `bits` file with `mix`: mixes change
    q35 files only (the int formats are the baselines they are compared with)."""
    if bits != "q35":
        return bits
    for proj, other in MIXES[check_mix(mix)].items():
        if name.endswith(f".{proj}.weight"):
            return other
    return bits
