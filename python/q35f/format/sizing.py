"""Exact model memory in each format, which devices a model fits, and a bandwidth-bound decode
estimate: the calculator behind `q35f size` and the paper's scalability table.

Memory is computed from the format (docs/FORMAT.md §5, §6), not from a bits-per-weight average:
every linear layer of the transformer blocks is a quantized tensor (packed stream + float16 scale
and offset per group), the token embedding and output head are stored at the *head policy*
(`head_bits`: a packed format or a dense dtype), and the RMSNorm weights stay dense (`norm_dtype`).
Model shapes are the published configurations of the Llama models (config.json on the Hub).

The decode speed is an *estimate*, never a measurement: decoding one token at batch size 1 reads
every weight once plus the KV cache, so a device cannot decode faster than
`bandwidth / bytes read per token`. Real systems reach a fraction of that bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from q35f.format.spec import FORMATS, n_groups, tensor_nbytes

DENSE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
METHODS = ("fp32", "fp16", "int8", "int4", "q35", "int3")  # dense references, then packed formats
GB = 1e9  # sizes and capacities in decimal gigabytes, as vendors state them


@dataclass(frozen=True)
class ModelShape:
    """The tensor shapes of a Llama-architecture decoder (names as in Hugging Face config.json)."""

    name: str
    hidden: int  # hidden_size
    intermediate: int  # intermediate_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    vocab: int  # vocab_size
    tied: bool  # tie_word_embeddings: the head is the embedding matrix
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """(name, out_features N, in_features K) of the quantized linear layers of one block."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        return [
            ("q_proj", h, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, h),
            ("gate_proj", i, h),
            ("up_proj", i, h),
            ("down_proj", h, i),
        ]

    @property
    def linear_params(self) -> int:
        return self.layers * sum(n * k for _, n, k in self.linear_shapes())

    @property
    def embedding_params(self) -> int:
        """Embedding plus, when untied, the output head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden  # two RMSNorms per block, one final

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params


SHAPES = {
    s.name: s
    for s in (
        ModelShape("llama-2-7b", 4096, 11008, 32, 32, 32, 32000, False, "meta-llama/Llama-2-7b-hf"),
        ModelShape("llama-2-13b", 5120, 13824, 40, 40, 40, 32000, False, "meta-llama/Llama-2-13b-hf"),
        ModelShape("llama-3-8b", 4096, 14336, 32, 32, 8, 128256, False, "meta-llama/Meta-Llama-3-8B"),
        ModelShape("llama-3-70b", 8192, 28672, 80, 64, 8, 128256, False, "meta-llama/Meta-Llama-3-70B"),
        ModelShape(
            "llama-3.1-405b", 16384, 53248, 126, 128, 8, 128256, False, "meta-llama/Llama-3.1-405B"
        ),
        ModelShape("smollm2-135m", 576, 1536, 30, 9, 3, 49152, True, "HuggingFaceTB/SmolLM2-135M"),
    )
}
ALIASES = {
    "135m": "smollm2-135m",
    "7b": "llama-2-7b",
    "8b": "llama-3-8b",
    "13b": "llama-2-13b",
    "70b": "llama-3-70b",
    "405b": "llama-3.1-405b",
    "llama-7b": "llama-2-7b",
    "llama-8b": "llama-3-8b",
    "llama-13b": "llama-2-13b",
    "llama-70b": "llama-3-70b",
    "llama-405b": "llama-3.1-405b",
}
PAPER_SHAPES = ("llama-2-7b", "llama-2-13b", "llama-3-70b", "llama-3.1-405b")


def get_shape(name: str) -> ModelShape:
    """A shape by name (`llama-3-70b`, `llama-70b`) or parameter count (`70B`)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in SHAPES:
        known = sorted(SHAPES) + sorted(k.upper() for k in ALIASES if not k.startswith("llama"))
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(known)}")
    return SHAPES[key]


@dataclass(frozen=True)
class Device:
    name: str
    memory_gb: float  # capacity as the vendor states it (decimal GB)
    bandwidth_gb_s: float  # peak memory bandwidth from the vendor's data sheet
    source: str


DEVICES = (
    Device("RTX 4090 24 GB", 24, 1008, "NVIDIA GeForce RTX 4090 spec: 24 GB GDDR6X, 1008 GB/s"),
    Device("A100 40 GB", 40, 1555, "NVIDIA A100 data sheet: 40 GB HBM2, 1555 GB/s"),
    Device("host 64 GB DDR5", 64, 76.8, "DDR5-4800, 2 channels x 38.4 GB/s"),
    Device("A100 80 GB", 80, 2039, "NVIDIA A100 data sheet: 80 GB HBM2e SXM, 2039 GB/s"),
    Device("H100 80 GB", 80, 3350, "NVIDIA H100 data sheet: 80 GB HBM3 SXM, 3.35 TB/s"),
    Device("H200 141 GB", 141, 4800, "NVIDIA H200 data sheet: 141 GB HBM3e, 4.8 TB/s"),
)


def dense_nbytes(n: int, k: int, dtype: str) -> int:
    return n * k * DENSE_BYTES[dtype]


def matrix_nbytes(n: int, k: int, storage: str, group_size: int) -> int:
    """Bytes of an (n, k) matrix stored packed (q35/int8/int4/int3) or dense (fp32/fp16/bf16)."""
    if storage in DENSE_BYTES:
        return dense_nbytes(n, k, storage)
    return tensor_nbytes(n, k, group_size, storage)


def check_method(bits: str, what: str = "bits") -> str:
    if bits not in DENSE_BYTES and bits not in FORMATS:
        raise ValueError(f"{what} must be one of {sorted(DENSE_BYTES) + sorted(FORMATS)}, got {bits!r}")
    return bits


@dataclass(frozen=True)
class Memory:
    """Bytes of a whole model, by part."""

    shape: ModelShape
    bits: str
    group_size: int
    head_bits: str
    norm_dtype: str
    linear_payload: int  # packed streams (or dense weights) of the block linear layers
    linear_params: int  # their float16 scales and offsets (0 when dense)
    embedding: int  # embedding (+ untied head), including its scales/offsets when packed
    embedding_row: int  # bytes of one embedding row (what a token lookup reads)
    norms: int

    @property
    def total(self) -> int:
        return self.linear_payload + self.linear_params + self.embedding + self.norms

    @property
    def linear_bits_per_weight(self) -> float:
        return 8 * (self.linear_payload + self.linear_params) / self.shape.linear_params

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.total / self.shape.params

    def head_nbytes(self) -> int:
        """Bytes of the output head (the whole embedding when tied)."""
        return self.embedding if self.shape.tied else self.embedding // 2


def model_memory(
    shape: ModelShape,
    bits: str = "q35",
    group_size: int = 128,
    head_bits: str = "int8",
    norm_dtype: str = "fp32",
) -> Memory:
    """Exact bytes of `shape` with its block linear layers in `bits`.

    Dense methods (fp32/fp16/bf16) store everything but the norms in that dtype; packed methods
    store the embedding and head at `head_bits`.
    """
    check_method(bits)
    check_method(head_bits, "head_bits")
    if norm_dtype not in DENSE_BYTES:
        raise ValueError(f"norm_dtype must be one of {sorted(DENSE_BYTES)}, got {norm_dtype!r}")
    if bits in DENSE_BYTES:
        head_bits = bits
    payload = params = 0
    for _, n, k in shape.linear_shapes():
        if bits in DENSE_BYTES:
            payload += dense_nbytes(n, k, bits)
        else:
            groups = n * n_groups(k, group_size)
            total = tensor_nbytes(n, k, group_size, bits)
            params += 4 * groups  # float16 scale + float16 offset per group
            payload += total - 4 * groups
    embedding_one = matrix_nbytes(shape.vocab, shape.hidden, head_bits, group_size)
    return Memory(
        shape=shape,
        bits=bits,
        group_size=group_size,
        head_bits=head_bits,
        norm_dtype=norm_dtype,
        linear_payload=shape.layers * payload,
        linear_params=shape.layers * params,
        embedding=embedding_one * (1 if shape.tied else 2),
        embedding_row=matrix_nbytes(1, shape.hidden, head_bits, group_size),
        norms=shape.norm_params * DENSE_BYTES[norm_dtype],
    )


def kv_cache_nbytes(shape: ModelShape, context: int, kv_dtype: str = "fp16") -> int:
    """Keys and values of every layer for `context` tokens (batch 1)."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * context * DENSE_BYTES[kv_dtype]


def bytes_per_token(memory: Memory, context: int, kv_dtype: str = "fp16") -> int:
    """Bytes one decode step reads: every block linear layer, the head, the norms, one embedding
    row, and the KV cache of `context` tokens."""
    weights = memory.linear_payload + memory.linear_params + memory.head_nbytes() + memory.norms
    return weights + memory.embedding_row + kv_cache_nbytes(memory.shape, context, kv_dtype)


DECODE_FORMULA = (
    "tok/s <= bandwidth / bytes_per_token; bytes_per_token = block linear layers + head + norms "
    "+ one embedding row + fp16 KV cache of {context} tokens (batch 1)"
)


def decode_estimate(device: Device, memory: Memory, context: int) -> float:
    """Upper bound on batch-1 decode tokens/s when the weights are read once per token."""
    return device.bandwidth_gb_s * GB / bytes_per_token(memory, context)


def fits(device: Device, memory: Memory, context: int) -> bool:
    """Weights plus the KV cache of `context` tokens fit in the device's memory."""
    return memory.total + kv_cache_nbytes(memory.shape, context) <= device.memory_gb * GB


def scalability_rows(
    shapes=PAPER_SHAPES,
    methods=METHODS,
    group_size: int = 128,
    head_bits: str = "int8",
    context: int = 2048,
    devices=DEVICES,
) -> list[dict]:
    """One row per (model, method, device): the paper's scalability table, all computed."""
    rows = []
    for name in shapes:
        shape = get_shape(name)
        for bits in methods:
            mem = model_memory(shape, bits, group_size, head_bits)
            kv = kv_cache_nbytes(shape, context)
            for device in devices:
                rows.append(
                    {
                        "model": shape.name,
                        "method": bits,
                        "memory_gb": round(mem.total / GB, 3),
                        "hardware": device.name,
                        "throughput_toks": round(decode_estimate(device, mem, context), 2),
                        "fits": fits(device, mem, context),
                        "params": shape.params,
                        "bits_per_weight": round(mem.bits_per_weight, 4),
                        "linear_bits_per_weight": round(mem.linear_bits_per_weight, 4),
                        "payload_gb": round(mem.linear_payload / GB, 3),
                        "scales_offsets_gb": round(mem.linear_params / GB, 3),
                        "embedding_head_gb": round(mem.embedding / GB, 3),
                        "norms_gb": round(mem.norms / GB, 6),
                        "kv_cache_gb": round(kv / GB, 3),
                        "context": context,
                        "group_size": group_size if bits in FORMATS else "",
                        "head_bits": mem.head_bits,
                        "device_memory_gb": device.memory_gb,
                        "device_bandwidth_gb_s": device.bandwidth_gb_s,
                        "bytes_per_token": bytes_per_token(mem, context),
                        "source": "estimate",
                        "formula": "memory: exact from FORMAT.md §5-6; throughput: "
                        + DECODE_FORMULA.format(context=context),
                        "note": f"shape of {shape.source}; device: {device.source}",
                    }
                )
    return rows


# command line


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "size",
        help="exact memory of a Llama-shaped model in a format, the devices it fits, a decode estimate",
        description="Exact memory of a Llama-architecture model in each format (packed stream + "
        "float16 scales/offsets + embedding/head at the head policy + norms), whether it fits "
        "common accelerators and hosts, and a bandwidth-bound decode estimate "
        "(bandwidth / bytes read per token). Shapes: "
        + ", ".join(f"{s.name} ({s.source})" for s in SHAPES.values()),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--params", help="parameter count: 135M, 7B, 8B, 13B, 70B or 405B")
    which.add_argument("--model-shape", help="shape name, e.g. llama-3-70b or llama-70b")
    p.add_argument("--bits", default="q35", help="q35, int8, int4, int3, fp16 or fp32 (default q35)")
    p.add_argument("--group-size", type=int, default=128, help="weights per group (default 128)")
    p.add_argument("--head-bits", default="int8", help="format of embedding and head (default int8)")
    p.add_argument("--context", type=int, default=2048, help="KV-cache tokens (default 2048)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_size)


def _run_size(args) -> int:
    from q35f.format.spec import check_group_size

    shape = get_shape(args.params or args.model_shape)
    check_group_size(args.group_size)
    if args.context < 0:
        raise ValueError(f"--context must be >= 0, got {args.context}")
    mem = model_memory(shape, args.bits, args.group_size, args.head_bits)
    kv = kv_cache_nbytes(shape, args.context)
    per_token = bytes_per_token(mem, args.context)
    devices = [
        {
            "device": d.name,
            "memory_gb": d.memory_gb,
            "bandwidth_gb_s": d.bandwidth_gb_s,
            "fits": fits(d, mem, args.context),
            "decode_tok_s_estimate": decode_estimate(d, mem, args.context),
        }
        for d in DEVICES
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "model": shape.name,
                    "source": shape.source,
                    "params": shape.params,
                    "bits": args.bits,
                    "group_size": args.group_size,
                    "head_bits": mem.head_bits,
                    "linear_payload_bytes": mem.linear_payload,
                    "linear_scales_offsets_bytes": mem.linear_params,
                    "embedding_head_bytes": mem.embedding,
                    "norm_bytes": mem.norms,
                    "total_bytes": mem.total,
                    "bits_per_weight": mem.bits_per_weight,
                    "linear_bits_per_weight": mem.linear_bits_per_weight,
                    "kv_cache_bytes": kv,
                    "context": args.context,
                    "bytes_per_token": per_token,
                    "devices": devices,
                    "formula": DECODE_FORMULA.format(context=args.context),
                }
            )
        )
        return 0
    s = shape
    print(
        f"{s.name} ({s.source}): {s.params / 1e9:.2f} B parameters; hidden {s.hidden}, "
        f"intermediate {s.intermediate}, {s.layers} layers, {s.heads} heads, {s.kv_heads} KV heads, "
        f"vocab {s.vocab}, {'tied' if s.tied else 'untied'} head"
    )
    dense = args.bits in DENSE_BYTES
    label = args.bits if dense else f"{args.bits}, group size {args.group_size}"
    print(f"format: {label}; embedding/head: {mem.head_bits}; norms: {mem.norm_dtype}")
    parts = [
        ("block linear layers, payload", mem.linear_payload, s.linear_params),
        ("block linear layers, fp16 scales+offsets", mem.linear_params, None),
        ("embedding" + ("" if s.tied else " + head"), mem.embedding, s.embedding_params),
        ("norms", mem.norms, s.norm_params),
    ]
    for text, nbytes, count in parts:
        extra = f"  ({count:,} weights)" if count else ""
        print(f"  {text:<42} {nbytes / GB:10.3f} GB  {nbytes:>17,} B{extra}")
    print(
        f"  {'total':<42} {mem.total / GB:10.3f} GB  {mem.total:>17,} B  "
        f"= {mem.bits_per_weight:.4f} bits/weight overall, "
        f"{mem.linear_bits_per_weight:.4f} in the block linear layers"
    )
    print(f"KV cache, fp16, {args.context} tokens: {kv / GB:.3f} GB")
    print(f"bytes read per decoded token: {per_token / GB:.3f} GB")
    print("devices (fits = weights + KV cache <= capacity; decode = ESTIMATE, not measured):")
    for d in devices:
        mark = "fits" if d["fits"] else "does not fit"
        tok = d["decode_tok_s_estimate"]
        print(
            f"  {d['device']:<17} {d['memory_gb']:>5g} GB  {d['bandwidth_gb_s']:>6g} GB/s  "
            f"{mark:<12}  decode <= {tok:8.1f} tok/s" + ("" if d["fits"] else " (if it fit)")
        )
    print("estimate: " + DECODE_FORMULA.format(context=args.context))
    return 0
