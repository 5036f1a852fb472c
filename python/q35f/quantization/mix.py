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

Per block, the first and last three blocks cost about twice what the middle ones do (the same
probe). "kv4-q3-ends" adds a rule by depth to kv4-q3: o/gate/up/down in int4 in the first and
the last eighth of the blocks (as llama.cpp's _M mixes give them more bits) and in int3 in as
many blocks at the middle of the stack, so the budget is the same (the same tensors' shapes
gain and lose half a bit each). 64 windows (docs/RESULTS.md "Session 13"): KL divergence
-9 % on Pride and Prejudice, -6 % on `pydoc` calibrated, -6 % / -3.5 % data-free.
"""

from __future__ import annotations

_KV4_Q3 = {"q_proj": "int3", "k_proj": "int4", "v_proj": "int4"}
MIXES = {"none": {}, "kv4-q3": _KV4_Q3, "kv4-q3-ends": _KV4_Q3}
# the mixes with the rule by depth, and the linears it moves
BY_DEPTH = {"kv4-q3-ends": ("o_proj", "gate_proj", "up_proj", "down_proj")}


def depth_formats(n_layers: int) -> dict:
    """{block: "int4" | "int3"} of the rule by depth: the first and last round(n/8) blocks
    (at least one) in int4, as many at the middle in int3; {} where the stack is too short for
    the two sets to be apart (fewer than four times the ends)."""
    ends = max(1, round(n_layers / 8))
    if n_layers < 4 * ends:
        return {}
    first_low = (n_layers - 2 * ends) // 2
    out = {layer: "int4" for layer in range(ends)}
    out.update({layer: "int4" for layer in range(n_layers - ends, n_layers)})
    out.update({layer: "int3" for layer in range(first_low, first_low + 2 * ends)})
    return out


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


def tensor_bits(name: str, bits: str, mix: str = "none", n_layers: int | None = None) -> str:
    """The format of linear weight `name` (HF name, model.layers.L...) in a `bits` file with
    `mix` of a model with `n_layers` blocks (needed by a mix with a rule by depth): mixes
    change q35 files only (the int formats are the baselines they are compared with)."""
    if bits != "q35":
        return bits
    for proj, other in MIXES[check_mix(mix)].items():
        if name.endswith(f".{proj}.weight"):
            return other
    if mix in BY_DEPTH and any(name.endswith(f".{p}.weight") for p in BY_DEPTH[mix]):
        if n_layers is None:
            raise ValueError(f"--mix {mix} sets formats by depth: it needs the number of blocks")
        return depth_formats(int(n_layers)).get(int(name.split(".")[2]), bits)
    return bits
