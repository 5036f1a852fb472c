"""llama.cpp GGUF files of Llama-architecture models: tensors dequantized to float32 under Hugging
Face names, the config from the metadata, and a `tokenizers` tokenizer rebuilt from it.

GGUF files written by llama.cpp's converter store attn_q / attn_k with the rows of every head
permuted for its interleaved rotary layout; `get` undoes that, so all kinds share the Hugging Face
(rotate-half) layout.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import numpy as np

from q35f.io.checkpoint import Checkpoint, StoredInfo
from q35f.io.llama import LLAMA_DEFAULTS, check_config, check_shapes

# llama.cpp tensor names -> Hugging Face names (per layer: blk.N.<key>)
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# llama.cpp pre-tokenizer names whose regexes are "split every digit" then GPT-2's.
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")
_GPT2_PRE = ("default", "gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "olmo", "jais")
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def gguf_to_hf_name(name: str) -> str:
    """Map a llama.cpp tensor name to its Hugging Face name; unknown names are an error."""
    match = _GGUF_LAYER.fullmatch(name)
    if match and match.group(2) in _GGUF_LAYER_NAMES:
        layer, key, kind = match.groups()
        return f"model.layers.{layer}.{_GGUF_LAYER_NAMES[key]}.{kind}"
    base, _, kind = name.rpartition(".")
    if base in _GGUF_GLOBAL_NAMES and kind in ("weight", "bias"):
        return f"{_GGUF_GLOBAL_NAMES[base]}.{kind}"
    raise ValueError(f"tensor {name} has no Hugging Face Llama equivalent")


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of attn_q / attn_k (convert_hf_to_gguf.py).

    llama.cpp stores row `h*d + 2j + p` what Hugging Face stores at row `h*d + p*d/2 + j`
    (d = head_dim, p in {0, 1}): its rotary rotates adjacent pairs, Hugging Face's rotates halves.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return np.ascontiguousarray(
        w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of `unpermute_rotary`), for tests and export."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    return np.ascontiguousarray(
        w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _gguf_reader_class():
    import gguf

    class Reader(gguf.GGUFReader):
        """GGUFReader whose errors name the tensor whose data is missing or malformed.

        It also keeps the mapped file as a plain ndarray view: np.memmap's per-slice
        bookkeeping made parsing the ~100k tokenizer fields of a GGUF several times slower.
        """

        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            self.mapping = getattr(value, "_mmap", None)  # the mmap.mmap, to drop read pages
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

        def _get_field_parts(self, orig_offs, raw_type):
            # An array's element count is read from the file: every element takes at least one
            # byte, so a count beyond the bytes left is corrupt (gguf would loop over it: a hang).
            if raw_type == gguf.GGUFValueType.ARRAY:
                count = self._get(orig_offs + 4, np.uint64)
                left = len(self.data) - orig_offs - 12
                if count.size == 0 or int(count[0]) > left:
                    raise ValueError(f"an array at byte {orig_offs} claims "
                                     f"{int(count[0]) if count.size else '?'} elements, more than "
                                     f"the {max(left, 0)} bytes left in the file")
            return super()._get_field_parts(orig_offs, raw_type)

        def _build_tensors(self, start_offs, fields):
            tensors = []
            for field in fields:
                name = bytes(field.parts[1]).decode("utf-8", errors="replace")
                try:
                    super()._build_tensors(start_offs, [field])
                except Exception as err:
                    raise ValueError(
                        f"tensor {name}: data does not fit the file of {len(self.data)} bytes "
                        f"(truncated or corrupt: {err})"
                    ) from None
                tensors.extend(self.tensors)
            self.tensors = tensors

    return Reader


def _short_float(value) -> float:
    """GGUF stores float32; give the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _field_value(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except UnicodeDecodeError as err:
        raise ValueError(f"GGUF field {key} is not valid UTF-8 ({err})") from None


class GGUFCheckpoint(Checkpoint):
    """A llama.cpp GGUF file of a Llama-architecture model; tensors dequantized to float32."""

    kind = "gguf"

    def __init__(self, path: Path):
        try:
            self._reader = _gguf_reader_class()(str(path), "r")
        except Exception as err:
            raise ValueError(f"{path}: corrupt or truncated GGUF file: {err}") from None
        reader = self._reader
        try:
            arch = _field_value(reader, "general.architecture")
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
        self._tensors = {}
        infos = {}
        for tensor in reader.tensors:
            try:
                name = gguf_to_hf_name(tensor.name)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            if name in self._tensors:
                raise ValueError(f"{path}: tensor {tensor.name} appears twice")
            self._tensors[name] = tensor
            shape = tuple(int(v) for v in reversed(tensor.shape.tolist()))
            infos[name] = StoredInfo(
                name, shape, tensor.tensor_type.name, int(tensor.n_bytes), None, str(path)
            )
        self._infos = infos
        try:
            config = check_config(self._config(reader, path), f"{path}: GGUF metadata")
            chat_template = _field_value(reader, "tokenizer.chat_template")
        except (TypeError, OverflowError, ValueError) as err:
            message = str(err)
            raise ValueError(message if message.startswith(str(path)) else
                             f"{path}: GGUF metadata: {message}") from None
        super().__init__(
            path,
            config,
            chat_template,
            None,
            path.stat().st_size,
        )
        check_shapes(infos, config, path)

    def _config(self, reader, path):
        def get(key, default=None):
            return _field_value(reader, f"llama.{key}", default)

        if "rope_freqs.weight" in (t.name for t in reader.tensors):
            raise ValueError(f"{path}: Llama-3 rope scaling (rope_freqs) is not supported")
        hidden = get("embedding_length")
        heads = get("attention.head_count")
        if hidden is None or heads is None or get("block_count") is None:
            raise ValueError(f"{path}: GGUF metadata lacks llama.embedding_length/head_count/block_count")
        tokens = _field_value(reader, "tokenizer.ggml.tokens")
        vocab = get("vocab_size") or (len(tokens) if tokens else None)
        if vocab is None and "model.embed_tokens.weight" in self._infos:
            vocab = self._infos["model.embed_tokens.weight"].shape[0]
        rope_scaling = None
        scaling_type = get("rope.scaling.type")
        if scaling_type in ("linear", "yarn"):
            rope_scaling = {"rope_type": scaling_type, "factor": float(get("rope.scaling.factor", 1.0))}
            original = get("rope.scaling.original_context_length")
            if original:
                rope_scaling["original_max_position_embeddings"] = int(original)
        elif scaling_type not in (None, "none"):
            raise ValueError(f"{path}: rope scaling {scaling_type!r} is not supported")
        config = {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": int(hidden),
            "intermediate_size": int(get("feed_forward_length")),
            "num_hidden_layers": int(get("block_count")),
            "num_attention_heads": int(heads),
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "head_dim": int(get("attention.key_length", hidden // heads if heads else 0)),
            "rms_norm_eps": _short_float(get("attention.layer_norm_rms_epsilon", LLAMA_DEFAULTS["rms_norm_eps"])),
            "rope_theta": _short_float(get("rope.freq_base", LLAMA_DEFAULTS["rope_theta"])),
            "rope_scaling": rope_scaling,
            "vocab_size": int(vocab),
            "max_position_embeddings": int(get("context_length", LLAMA_DEFAULTS["max_position_embeddings"])),
            "tie_word_embeddings": "lm_head.weight" not in self._infos,
            "bos_token_id": _field_value(reader, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _field_value(reader, "tokenizer.ggml.eos_token_id"),
        }
        return config

    def get(self, name: str) -> np.ndarray:
        info = self._infos[self._check_name(name)]
        w = self._dequantize(name, self._tensors[name].data).reshape(info.shape)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rotary(w, self.config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rotary(w, self.config["num_key_value_heads"])
        return w

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self._infos[self._check_name(name)]
        if len(info.shape) != 2 or name.endswith(("q_proj.weight", "k_proj.weight")):
            return self.get(name)[start:stop]  # q/k rows move within heads: take them whole
        return self._dequantize(name, self._tensors[name].data[start:stop])

    def _dequantize(self, name, data) -> np.ndarray:
        import gguf

        tensor = self._tensors[name]
        try:
            w = gguf.quants.dequantize(data, tensor.tensor_type)
        except Exception as err:
            raise ValueError(f"{self.path}: cannot dequantize tensor {tensor.name} ({err})") from None
        w = np.array(w, dtype=np.float32, order="C", copy=True)
        self._drop_pages()
        return w

    def _drop_pages(self):
        """Let the kernel drop the file pages just read, so they stop counting as resident."""
        mapping = getattr(self._reader, "mapping", None)
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def _load_tokenizer(self):
        try:
            return gguf_tokenizer(self._reader)
        except Exception as err:  # the tokenizers library raises plain Exceptions
            raise ValueError(f"{self.path}: {err}") from None

    def close(self):
        # The reader's memmap closes when the last array viewing it goes away; returned arrays
        # are copies, so dropping the reader is enough.
        self._reader = None
        self._tensors = {}


def gguf_tokenizer(reader):
    """Byte-level BPE `tokenizers.Tokenizer` from a GGUF file's tokenizer.ggml.* metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    model = _field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = _field_value(reader, "tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError("tokenizer.ggml.tokens must be a non-empty array of strings")
    merges = _field_value(reader, "tokenizer.ggml.merges") or []
    if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
        raise ValueError("tokenizer.ggml.merges must be an array of strings")
    token_types = _field_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if not isinstance(token_types, list) or len(token_types) != len(tokens):
        raise ValueError(f"tokenizer.ggml.token_type must be an array of {len(tokens)} types, one "
                         "per token")
    pre = _field_value(reader, "tokenizer.ggml.pre", "default")

    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _GPT2_PRE:
        tokenizer.pre_tokenizer = byte_level
    elif pre in ("llama-bpe", "llama3"):
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise ValueError(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported")
    tokenizer.decoder = decoders.ByteLevel()

    tokenizer.add_special_tokens([
        AddedToken(tokens[i], special=True, normalized=False)
        for i, kind in enumerate(token_types) if kind == _GGUF_CONTROL
    ])
    tokenizer.add_tokens([
        AddedToken(tokens[i], special=False, normalized=False)
        for i, kind in enumerate(token_types) if kind == _GGUF_USER_DEFINED
    ])

    steps = [processors.ByteLevel(trim_offsets=False)]
    bos_id = _field_value(reader, "tokenizer.ggml.bos_token_id")
    eos_id = _field_value(reader, "tokenizer.ggml.eos_token_id")
    for key, token_id in (("bos", bos_id), ("eos", eos_id)):
        if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < len(tokens)):
            raise ValueError(f"tokenizer.ggml.{key}_token_id {token_id!r} is not a token id")
    add_bos = bool(_field_value(reader, "tokenizer.ggml.add_bos_token", False)) and bos_id is not None
    add_eos = bool(_field_value(reader, "tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    if add_bos or add_eos:
        special = {}
        single, pair = "$A", "$A $B:1"
        if add_bos:
            bos = tokens[bos_id]
            special[bos] = bos_id
            single, pair = f"{bos} {single}", f"{bos} $A {bos}:1 $B:1"
        if add_eos:
            eos = tokens[eos_id]
            special[eos] = eos_id
            single = f"{single} {eos}"
            pair = pair.replace(" $B:1", f" {eos} $B:1") + f" {eos}:1"
        steps.append(processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=list(special.items())
        ))
    tokenizer.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)
    return tokenizer
