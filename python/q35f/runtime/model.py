"""A Llama-family transformer in numpy, float32 throughout, read top to bottom like the paper.

    x = embed(tokens)
    for each layer:
        x = x + Wo · attention(rope(Wq · rms(x)), rope(Wk · rms(x)), Wv · rms(x))   (GQA, KV cache)
        x = x + Wdown · (silu(Wgate · rms(x)) * (Wup · rms(x)))                      (SwiGLU)
    logits = Whead · rms(x)

Every linear layer is a `Linear`: a float32 (N, K) matrix multiplied by numpy/BLAS, or a
`QuantizedTensor` multiplied by the Fortran kernels (`q35f.matmul`: GEMV for one token, tiled GEMM
for a prompt). A quantized weight is never turned back into a float matrix; the embedding table,
when quantized, is read one row per token (`take_rows`).

Decoding one token through a model whose block weights are all quantized runs each block as one
Fortran call (`decode_block`, fortran/q35_decode.f90): the same arithmetic as the numpy block
below, without a Python operation or an OpenMP fork per step (`Model.fused_decode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from q35f.io.llama import LLAMA_DEFAULTS

# Prompts longer than this are run in chunks, so attention scores stay small (T x S per head).
PREFILL_CHUNK = 512
# Rotary tables and the KV cache start with room for this many positions and double as the
# positions used grow (up to max_seq_len): a config promising a context of 2^32 tokens costs
# nothing until they are used.
INITIAL_POSITIONS = 256


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = LLAMA_DEFAULTS["rms_norm_eps"]
    rope_theta: float = LLAMA_DEFAULTS["rope_theta"]
    rope_scaling: dict | None = None
    max_position_embeddings: int = LLAMA_DEFAULTS["max_position_embeddings"]
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, cfg: dict) -> "LlamaConfig":
        """From a Hugging Face `config.json` dictionary (LlamaConfig field names)."""
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise ValueError(f"config {key}=true is not supported (Llama without biases only)")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config hidden_act={act!r} is not supported (only 'silu')")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (
            () if eos is None else (int(eos),))
        scaling = cfg.get("rope_scaling")
        theta = cfg.get("rope_theta")
        rope_parameters = cfg.get("rope_parameters")  # newer transformers spelling
        if theta is None and isinstance(rope_parameters, dict):
            theta = rope_parameters.get("rope_theta")
            if scaling is None and rope_parameters.get("rope_type", "default") != "default":
                scaling = rope_parameters
        config = cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", LLAMA_DEFAULTS["rms_norm_eps"])),
            rope_theta=float(theta if theta is not None else LLAMA_DEFAULTS["rope_theta"]),
            rope_scaling=dict(scaling) if scaling else None,
            max_position_embeddings=int(cfg.get("max_position_embeddings",
                                                LLAMA_DEFAULTS["max_position_embeddings"])),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
        if config.num_attention_heads % config.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={heads} is not a multiple of "
                f"num_key_value_heads={config.num_key_value_heads}"
            )
        if config.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {config.head_dim}")
        return config


# --- linear layers -------------------------------------------------------------------------------


class Linear:
    """y = x @ W.T with W float32 (N, K) (BLAS) or a QuantizedTensor (Fortran kernels)."""

    def __init__(self, weight):
        self.weight = weight
        self.shape = tuple(weight.shape)
        self.quantized = not isinstance(weight, np.ndarray)
        if self.quantized:
            from q35f.kernels.tensor import matmul

            self._matmul = matmul
        elif weight.dtype != np.float32 or weight.ndim != 2:
            raise TypeError(f"float weights must be float32 2-D, got {weight.dtype} {weight.shape}")
        else:
            self._weight_t = weight.T  # a view: BLAS reads W transposed without a copy

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.quantized:
            return self._matmul(x, self.weight)
        return x @ self._weight_t

    @property
    def n_params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return int(self.weight.nbytes)

    @property
    def stored_bits(self) -> float:
        """Bits of the weight as its format stores it (compact group parameters count as the
        file has them, not as the float16 they are decoded to in memory)."""
        if self.quantized:
            return self.weight.bits_per_weight * self.n_params
        return 8.0 * self.nbytes


def _same_layout(a, b) -> bool:
    """Whether two weights' rows can be stacked into one matrix."""
    from q35f.kernels.tensor import QuantizedTensor

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    return (isinstance(a, QuantizedTensor) and isinstance(b, QuantizedTensor)
            and a.config == b.config and a.shape[1] == b.shape[1])


def stack_rows(weights: list) -> list:
    """The rows of `weights` in order as few matrices as possible (fuses q/k/v and gate/up
    matmuls): each run of consecutive weights stored alike becomes one. Float matrices are
    concatenated; quantized ones in their packed form (rows are quantized independently, so
    this is exact). A mix (q in one format, k and v in another) gives one matrix per run."""
    from q35f.kernels.tensor import QuantizedTensor

    runs = [[weights[0]]]
    for w in weights[1:]:
        if _same_layout(runs[-1][-1], w):
            runs[-1].append(w)
        else:
            runs.append([w])
    out = []
    for run in runs:
        first = run[0]
        if len(run) == 1:
            out.append(first)
        elif isinstance(first, np.ndarray):
            out.append(np.concatenate(run, axis=0))
        else:
            out.append(QuantizedTensor.from_packed(
                np.concatenate([w.packed for w in run]),
                np.concatenate([w.scale for w in run]),
                np.concatenate([w.offset for w in run]),
                (sum(w.shape[0] for w in run), first.shape[1]),
                first.group_size, first.bits, first.rotation, first.group_params))
    return out


class FusedLinear:
    """Several linear layers on the same input, computed as few matmuls as stack_rows allows."""

    def __init__(self, weights: list):
        self.sizes = [int(w.shape[0]) for w in weights]
        self.parts = [Linear(w) for w in stack_rows(weights)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0](x)
        return np.concatenate([part(x) for part in self.parts], axis=-1)


# --- weights -------------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # (hidden,)
    wq: object  # (heads*head_dim, hidden), HF layout (rotate-half rotary pairs)
    wk: object  # (kv_heads*head_dim, hidden)
    wv: object
    wo: object  # (hidden, heads*head_dim)
    mlp_norm: np.ndarray
    w_gate: object  # (intermediate, hidden)
    w_up: object
    w_down: object  # (hidden, intermediate)


@dataclass
class Weights:
    embed: object  # (vocab, hidden): float32 or QuantizedTensor
    layers: list[LayerWeights]
    norm: np.ndarray
    lm_head: object | None = None  # None when tied to the embedding

    @classmethod
    def from_checkpoint(cls, ckpt, config: LlamaConfig) -> "Weights":
        """Read HF-named tensors from a q35f.io.checkpoint.Checkpoint (float32 or quantized)."""

        def get(name):
            return check_finite(ckpt, name, ckpt.get(name))

        layers = []
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            layers.append(
                LayerWeights(
                    attn_norm=_vector(get(p + "input_layernorm.weight")),
                    wq=get(p + "self_attn.q_proj.weight"),
                    wk=get(p + "self_attn.k_proj.weight"),
                    wv=get(p + "self_attn.v_proj.weight"),
                    wo=get(p + "self_attn.o_proj.weight"),
                    mlp_norm=_vector(get(p + "post_attention_layernorm.weight")),
                    w_gate=get(p + "mlp.gate_proj.weight"),
                    w_up=get(p + "mlp.up_proj.weight"),
                    w_down=get(p + "mlp.down_proj.weight"),
                )
            )
        names = set(ckpt.names())
        lm_head = None
        if "lm_head.weight" in names and not config.tie_word_embeddings:
            lm_head = get("lm_head.weight")
        embed = get("model.embed_tokens.weight")
        return cls(embed=embed, layers=layers, norm=_vector(get("model.norm.weight")),
                   lm_head=lm_head)

    def check(self, config: LlamaConfig) -> None:
        """Every shape must agree with the config; errors name the tensor."""
        h, d = config.hidden_size, config.head_dim
        q, kv, f = config.num_attention_heads * d, config.num_key_value_heads * d, \
            config.intermediate_size
        expect = {"model.embed_tokens.weight": (self.embed, (config.vocab_size, h)),
                  "model.norm.weight": (self.norm, (h,))}
        if self.lm_head is not None:
            expect["lm_head.weight"] = (self.lm_head, (config.vocab_size, h))
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            expect.update({
                p + "input_layernorm.weight": (layer.attn_norm, (h,)),
                p + "self_attn.q_proj.weight": (layer.wq, (q, h)),
                p + "self_attn.k_proj.weight": (layer.wk, (kv, h)),
                p + "self_attn.v_proj.weight": (layer.wv, (kv, h)),
                p + "self_attn.o_proj.weight": (layer.wo, (h, q)),
                p + "post_attention_layernorm.weight": (layer.mlp_norm, (h,)),
                p + "mlp.gate_proj.weight": (layer.w_gate, (f, h)),
                p + "mlp.up_proj.weight": (layer.w_up, (f, h)),
                p + "mlp.down_proj.weight": (layer.w_down, (h, f)),
            })
        for name, (tensor, shape) in expect.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}, "
                                 f"the config implies {shape}")


def check_finite(ckpt, name: str, tensor):
    """`tensor` if it holds no NaN/Inf (for a quantized one: no NaN/Inf scale or offset);
    otherwise a ValueError naming the file, the tensor and the first bad index."""
    if isinstance(tensor, np.ndarray):
        parts = {"": tensor}
    else:
        parts = {".scales": tensor.scale, ".offsets": tensor.offset}
    for suffix, values in parts.items():
        bad = ~np.isfinite(values)
        if bad.any():
            index = tuple(int(i) for i in np.unravel_index(np.flatnonzero(bad)[0], values.shape))
            info = ckpt.info(name)
            source = getattr(info, "source", None) or ckpt.path
            raise ValueError(f"{source}: tensor {name}{suffix} holds {values[index]} at index "
                             f"{list(index)} ({int(bad.sum())} non-finite values); the file is "
                             "corrupt")
    return tensor


def _vector(w) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        w = w.dequantize().reshape(-1)  # norms are tiny; a quantized one is unusual but valid
    return np.ascontiguousarray(w, dtype=np.float32).reshape(-1)


# --- rotary embeddings ---------------------------------------------------------------------------


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies (head_dim/2,) float32, with the config's rope_scaling applied.

    Mirrors transformers' `ROPE_INIT_FUNCTIONS` for the types Llama checkpoints use:
    default, linear and llama3.
    """
    d = config.head_dim
    exponents = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_context = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_context / low
        high_wavelen = old_context / high
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        # long wavelengths are slowed down by `factor`, short ones kept, the band between blended
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (default, linear, llama3)")


def rope_tables(config: LlamaConfig, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (n_positions, head_dim/2) float32."""
    positions = np.arange(n_positions, dtype=np.float32)[:, None]
    angles = positions * rope_inv_freq(config)[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """Rotate (T, heads, head_dim) in place; pairs are (i, i + head_dim/2) ("rotate half")."""
    half = x.shape[-1] // 2
    x1 = x[..., :half]
    x2 = x[..., half:]
    c = cos[:, None, :]
    s = sin[:, None, :]
    rotated1 = x1 * c - x2 * s
    x2 *= c
    x2 += x1 * s
    x1[...] = rotated1


# --- the model -----------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis of x (..., hidden)."""
    mean_square = np.einsum("...i,...i->...", x, x)[..., None] / np.float32(x.shape[-1])
    return x * (weight / np.sqrt(mean_square + np.float32(eps)))


def keep_freed_memory() -> None:
    """Make glibc reuse freed memory in-process instead of handing it back (no mmap, no trim).

    On VMs that report free pages to the host (virtio-balloon), memory unmapped for a second or
    more comes back cold: faulting a fresh 100 MB array in again took 0.16-0.25 s here against
    0.015 s warm, and the calibrated quantizer frees and reallocates arrays that size all the
    time (4 blocks of the embedded model: 27.8 -> 22.3 s). RSS then stays at its peak, which is
    what a quantizer reports anyway; release_free_memory still trims. A no-op without glibc."""
    import ctypes

    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim), so RSS counts live data only.

    Fusing q/k/v and gate/up frees the separate matrices after the fused ones are allocated; glibc
    keeps such holes mapped, which would make resident memory look 1.5x the model. A no-op where
    the C library has no malloc_trim.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rotated_qkv(layer, x: np.ndarray, eps, cos, sin, n_heads: int, n_kv: int, d: int):
    """q (T, heads, d), k and v (T, kv heads, d) of one layer for rows x, q and k rotated."""
    t, qk_size = x.shape[0], (n_heads + n_kv) * d
    qkv = layer.qkv(rms_norm(x, layer.attn_norm, eps))
    qk = qkv[:, :qk_size].reshape(t, n_heads + n_kv, d)  # a view: q and k heads rotate together
    apply_rope(qk, cos, sin)
    v = qkv[:, qk_size:].reshape(t, n_kv, d)
    return qk[:, :n_heads], qk[:, n_heads:], v


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, mask, scale) -> np.ndarray:
    """softmax(q k^T * scale) v of T tokens, query heads grouped over their shared kv heads (GQA).

    q is (T, heads, d); keys and values are (kv heads, S, d) with the T tokens' own positions
    last. mask (T, T) float32, 0 or -inf, is added to the scores of those own positions (None:
    all seen; see visible_mask); every earlier position is seen by every token. Returns
    (T, heads * d).
    """
    t, n_heads, d = q.shape
    n_kv, s = keys.shape[0], keys.shape[1]
    group = n_heads // n_kv
    # query heads h*group..h*group+group-1 share kv head h: (n_kv, group*T, d)
    qg = q.reshape(t, n_kv, group, d).transpose(1, 2, 0, 3).reshape(n_kv, group * t, d)
    from q35f.kernels import tensor, torch_matmul

    # Prompts multiplied by torch keep numpy's OpenBLAS threads idle (q35f.kernels.torch_matmul).
    bf16 = t >= tensor.GEMM_MIN_ROWS and tensor.prompt_gemm() == "bf16"
    mm = torch_matmul.matmul if bf16 else np.matmul
    scores = mm(qg * scale, keys.transpose(0, 2, 1))  # (n_kv, group*T, S)
    if mask is not None:  # an add, 5x faster than assigning -inf through a boolean index
        own = scores.reshape(n_kv, group, t, s)[:, :, :, s - t:]
        np.add(own, mask, out=own)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1 / scores.sum(axis=-1, keepdims=True)
    out = mm(scores, values)  # (n_kv, group*T, d)
    return out.reshape(n_kv, group, t, d).transpose(2, 0, 1, 3).reshape(t, n_heads * d)


def visible_mask(visible: np.ndarray) -> np.ndarray:
    """The additive attention mask of a boolean one: 0 where seen, -inf elsewhere (float32)."""
    return np.where(visible, np.float32(0), np.float32(-np.inf))


def feed_forward(layer, x: np.ndarray, eps) -> np.ndarray:
    """x + SwiGLU(RMSNorm(x)) of one layer, for rows x (T, hidden)."""
    h = rms_norm(x, layer.mlp_norm, eps)
    gate_up = layer.gate_up(h)
    f = gate_up.shape[1] // 2
    return x + layer.down(swiglu(gate_up[:, :f], gate_up[:, f:]))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, written over gate: one temporary instead of three, since a fresh array
    can come back cold on these VMs (keep_freed_memory; 16384 x 1536 float32 in the calibration
    stream 0.05 s warm, 0.3 s cold)."""
    denominator = np.negative(gate)
    with np.errstate(over="ignore"):  # exp overflow gives silu -0, as it should
        np.exp(denominator, out=denominator)
    denominator += 1
    np.divide(gate, denominator, out=gate)
    gate *= up
    return gate


def positions_in_segments(segments: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... restarting wherever the segment id changes (segments are contiguous runs)."""
    starts = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
    lengths = np.diff(np.r_[starts, segments.size])
    return np.arange(segments.size) - np.repeat(starts, lengths)


@dataclass
class Layer:
    """One transformer block, with its q/k/v and gate/up projections fused into one matmul each."""

    attn_norm: np.ndarray
    qkv: FusedLinear
    wo: Linear
    mlp_norm: np.ndarray
    gate_up: FusedLinear
    down: Linear


@dataclass
class Model:
    config: LlamaConfig
    weights: Weights
    max_seq_len: int | None = None
    # One token at a time through decode_block where every block allows it (see _decode_args).
    fused_decode: bool = True
    layers: list[Layer] = field(init=False)

    def __post_init__(self):
        c = self.config
        self.weights.check(c)
        self.max_seq_len = int(self.max_seq_len or c.max_position_embeddings)
        self.layers = [
            Layer(
                attn_norm=lw.attn_norm,
                qkv=FusedLinear([lw.wq, lw.wk, lw.wv]),
                wo=Linear(lw.wo),
                mlp_norm=lw.mlp_norm,
                gate_up=FusedLinear([lw.w_gate, lw.w_up]),
                down=Linear(lw.w_down),
            )
            for lw in self.weights.layers
        ]
        # the fused copies replace the separate matrices
        for lw in self.weights.layers:
            lw.wq = lw.wk = lw.wv = lw.w_gate = lw.w_up = None
        embed = self.weights.embed
        self.embed_quantized = not isinstance(embed, np.ndarray)
        self.head = Linear(self.weights.lm_head if self.weights.lm_head is not None else embed)
        self.positions = 0  # rotary table rows and KV cache slots allocated so far
        self.ensure_positions(min(self.max_seq_len, INITIAL_POSITIONS))
        self.scale = np.float32(1.0 / math.sqrt(c.head_dim))
        self._decode = self._decode_args()
        release_free_memory()  # fusing left the separate matrices' memory free but mapped

    def ensure_positions(self, end: int) -> None:
        """Room in the rotary tables and the KV cache for positions 0..end-1 (end <=
        max_seq_len): grown by doubling, the cached keys and values copied over."""
        if end <= self.positions:
            return
        c = self.config
        size = min(self.max_seq_len, max(end, 2 * self.positions))
        self.cos, self.sin = rope_tables(c, size)
        # np.zeros maps untouched pages lazily, so only the used prefix is resident.
        shape = (c.num_hidden_layers, c.num_key_value_heads, size, c.head_dim)
        k_cache, v_cache = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
        if self.positions:
            k_cache[:, :, :self.positions] = self.k_cache
            v_cache[:, :, :self.positions] = self.v_cache
        self.k_cache, self.v_cache, self.positions = k_cache, v_cache, size

    def _decode_args(self) -> list[tuple] | None:
        """decode_block's weight arguments per block, or None where a block has a float linear
        layer or one decode_block cannot take (gate and up apart, q/k/v in three formats, q's
        rows not whole tiles beside a separate k/v): those decode through numpy."""
        from q35f.kernels import fortran

        args = []
        for layer in self.layers:
            qkv = layer.qkv.parts
            if len(qkv) == 1:
                qkv = [qkv[0], None]  # k and v fused with q: no separate k/v tiles
            elif len(qkv) != 2 or qkv[0].shape[0] != layer.qkv.sizes[0] or (
                    qkv[0].shape[0] % fortran.TILE_ROWS):
                return None
            linears = (*qkv, layer.wo, *layer.gate_up.parts, layer.down)
            if len(layer.gate_up.parts) != 1 or any(
                    lin is not None and not lin.quantized for lin in linears):
                return None
            if qkv[1] is not None and (fortran.rotation_args(qkv[0].weight)[0]
                                       != fortran.rotation_args(qkv[1].weight)[0]):
                return None
            if layer.gate_up.sizes[0] != layer.gate_up.sizes[1]:
                return None
            args.append(tuple(a for i, lin in enumerate(linears)
                              for a in (fortran.kv_args(lin and lin.weight) if i == 1
                                        else fortran.tile_args(lin.weight)
                                        + fortran.rotation_args(lin.weight)))
                        + (layer.gate_up.sizes[0], layer.attn_norm, layer.mlp_norm))
        return args

    # parameters and sizes

    def linears(self) -> list[Linear]:
        out = []
        for layer in self.layers:
            for lin in (layer.qkv, layer.gate_up):
                out.extend(lin.parts)
            out.extend([layer.wo, layer.down])
        return out

    def stats(self) -> dict:
        """Parameter counts, the block linears' bits per weight as their format stores them,
        and the bytes (and bits per weight) of what is held in memory."""
        block = self.linears()
        block_params = sum(lin.n_params for lin in block)
        block_bytes = sum(lin.nbytes for lin in block)
        block_bits = sum(lin.stored_bits for lin in block)
        tensors = [self.weights.embed, self.weights.norm]
        tensors += [t for lw in self.weights.layers for t in (lw.attn_norm, lw.mlp_norm)]
        if self.weights.lm_head is not None:
            tensors.append(self.weights.lm_head)
        other_params = sum(int(np.prod(t.shape)) for t in tensors)
        other_bytes = sum(int(t.nbytes) for t in tensors)
        total_params = block_params + other_params
        return {
            "params": total_params,
            "block_params": block_params,
            "block_bits_per_weight": block_bits / block_params,
            "bits_per_weight": 8 * (block_bytes + other_bytes) / total_params,
            "weight_bytes": block_bytes + other_bytes,
        }

    # the forward pass

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        if self.embed_quantized:
            return self.weights.embed.take_rows(token_ids)
        return self.weights.embed[token_ids]

    def forward(self, token_ids, start_pos: int, all_logits: bool = False) -> np.ndarray:
        """Run tokens at positions start_pos.. through the model, filling the KV cache.

        Returns logits (T, vocab) for every token when all_logits, else (vocab,) for the last.
        """
        hidden = self.hidden_states(token_ids, start_pos)
        return self.head(hidden) if all_logits else self.head(hidden[-1:])[0]

    def hidden_states(self, token_ids, pos: int, segments=None) -> np.ndarray:
        """Final-normed hidden states (T, hidden) of tokens continuing the cached positions 0..pos-1.

        Without segments the tokens are one sequence at positions pos..pos+T-1, run in chunks of
        PREFILL_CHUNK and written into the KV cache. With segments (T,) the tokens are several
        independent branches (contiguous runs of equal ids) that each continue the cache: every
        branch starts again at position pos and sees the cache and its own earlier tokens only;
        the cache is read, never written (the lm-eval scorer runs all continuations at once).
        """
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("token_ids must not be empty")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        if segments is None:
            self._check_positions(pos, ids.size)
            parts = [self._blocks(ids[i:i + PREFILL_CHUNK], pos + i, None)
                     for i in range(0, ids.size, PREFILL_CHUNK)]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        segments = np.asarray(segments).reshape(-1)
        if segments.shape != ids.shape:
            raise ValueError(f"segments must have one id per token, got {segments.shape} "
                             f"for {ids.size} tokens")
        offsets = positions_in_segments(segments)
        self._check_positions(pos, int(offsets.max()) + 1)
        return self._blocks(ids, pos, (segments, offsets))

    def _check_positions(self, pos: int, length: int) -> None:
        if pos < 0 or pos + length > self.max_seq_len:
            raise ValueError(f"positions {pos}..{pos + length - 1} exceed the context of "
                             f"{self.max_seq_len} tokens")
        self.ensure_positions(pos + length)

    def _blocks(self, ids: np.ndarray, pos: int, branches) -> np.ndarray:
        """The transformer blocks and the final norm for one chunk (see hidden_states)."""
        if ids.size == 1 and branches is None and self.fused_decode and self._decode is not None:
            return self._decode_token(ids, pos)
        c = self.config
        eps = c.rms_norm_eps
        t = ids.size
        n_heads, n_kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        if branches is None:  # one sequence, causal, written into the cache
            positions = slice(pos, pos + t)
            visible = np.tri(t, dtype=bool) if t > 1 else None
        else:
            segments, offsets = branches
            positions = pos + offsets
            visible = (segments[:, None] == segments[None, :]) & np.tri(t, dtype=bool)
        cos, sin = self.cos[positions], self.sin[positions]
        mask = None if visible is None else visible_mask(visible)

        x = self.embed(ids)  # (T, hidden)
        for li, layer in enumerate(self.layers):
            q, k, v = rotated_qkv(layer, x, eps, cos, sin, n_heads, n_kv, d)
            k_cache, v_cache = self.k_cache[li], self.v_cache[li]  # (n_kv, S, d)
            if branches is None:
                k_cache[:, pos:pos + t] = k.transpose(1, 0, 2)
                v_cache[:, pos:pos + t] = v.transpose(1, 0, 2)
                keys, values = k_cache[:, :pos + t], v_cache[:, :pos + t]
            else:
                keys = np.concatenate([k_cache[:, :pos], k.transpose(1, 0, 2)], axis=1)
                values = np.concatenate([v_cache[:, :pos], v.transpose(1, 0, 2)], axis=1)
            x = x + layer.wo(attention(q, keys, values, mask, self.scale))
            x = feed_forward(layer, x, eps)
        return rms_norm(x, self.weights.norm, eps)

    def _decode_token(self, ids: np.ndarray, pos: int) -> np.ndarray:
        """_blocks for one token at pos, each block one decode_block call."""
        from q35f.kernels.fortran import decode_block

        c = self.config
        x = np.array(self.embed(ids)[0], dtype=np.float32)  # a private copy, updated in place
        for li, args in enumerate(self._decode):
            *weights, intermediate, attn_norm, mlp_norm = args
            decode_block(c.num_attention_heads, intermediate, pos, c.rms_norm_eps, self.scale, x,
                         attn_norm, mlp_norm, self.cos[pos], self.sin[pos],
                         self.k_cache[li], self.v_cache[li], weights)
        return rms_norm(x[None, :], self.weights.norm, c.rms_norm_eps)


def load_model(path=None, max_seq_len: int | None = None):
    """Open a checkpoint (GGUF, HF directory or q35f directory; None = the embedded default).

    Returns (model, checkpoint). Quantized layers stay packed.
    """
    from q35f.io import checkpoint

    ckpt = checkpoint.open_checkpoint(path if path is not None else checkpoint.default_model_path())
    config = LlamaConfig.from_hf(ckpt.config)
    model = Model(config, Weights.from_checkpoint(ckpt, config), max_seq_len=max_seq_len)
    return model, ckpt
