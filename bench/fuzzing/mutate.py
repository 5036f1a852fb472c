"""Mutators: each takes a random generator, a seed model and a destination, writes a mutated copy
there and returns a one-line description (what a reproducer needs to know).

Families, per format:
    HF / q35f directory   config.json fields (type and range), broken config.json, safetensors
                          header entries (dtype, shape, offsets), __metadata__ and q35f tensor
                          metadata, the header length field, truncation, byte flips, non-finite
                          values in weights / scales / offsets, chat templates, tokenizer.json,
                          the shard index, a missing file
    GGUF file             metadata values and types (rewritten with gguf's writer), the header
                          counts, key/string/array length fields, tensor info fields (dims, type,
                          offset), truncation, byte flips, non-finite tensor data
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

# Values a careless or hostile config carries: zero, negative, huge, wrong types, deep nesting.
HOSTILE_VALUES = [0, -1, 1, 3, -2**31, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64, 10**7,
                  10**18, 1e308, -1e308, 1e-308, 0.5, -0.5, float("nan"), float("inf"),
                  float("-inf"), "32", "", "llama", "0x10", None, True, False, [], {}, [1, 2],
                  {"a": 1}, [[[[[]]]]], "\u00ff" * 3]
NONFINITE_F32 = [np.float32(np.nan), np.float32(np.inf), np.float32(-np.inf), np.float32(3e38)]
NONFINITE_F16 = [0x7E00, 0x7C00, 0xFC00, 0x7D01, 0xFE00]  # NaN, +Inf, -Inf, signalling NaN, -NaN
NONFINITE_BF16 = [0x7FC0, 0x7F80, 0xFF80]
CUT_POINTS = (0, 1, 4, 7, 8, 9, 16, 24)
HEADER_LENGTHS = [0, 1, 2, 7, 2**31, 2**32, 2**63, 2**64 - 1, 10**8, 10**8 + 1]

HOSTILE_TEMPLATES = [
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ 'x' * 100000000 }}",
    "{% set s = 'ab' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{{ s }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% for m in messages %}{{ m.content",
    "{{ raise_exception('refused by the template') }}",
    "{{ messages.__class__.__mro__ }}",
    "{{ undefined_function() }}",
    "{% for m in messages %}{{ m['missing']['deeper'] }}{% endfor %}",
    "{{ 1 / 0 }}",
    "{{ range(10**9) | list | length }}",
    "",
]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _copy(seed: Path, out: Path) -> None:
    if seed.is_dir():
        shutil.copytree(seed, out)
    else:
        shutil.copyfile(seed, out)


def _deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


# --- safetensors ---------------------------------------------------------------------------------


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict, data: bytes, dumps=json.dumps) -> None:
    blob = dumps(header).encode("utf-8", errors="surrogatepass")
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


def _weight_file(rng, directory: Path) -> Path:
    return _pick(rng, sorted(directory.glob("*.safetensors")))


def _tensor_entries(header: dict) -> list[str]:
    return sorted(name for name in header if name != "__metadata__")


# --- directory mutators --------------------------------------------------------------------------


def dir_config_field(rng, out: Path) -> str:
    path = out / "config.json"
    config = json.loads(path.read_text())
    nested = isinstance(config.get("quantization_config"), dict) and rng.random() < 0.3
    target = config["quantization_config"] if nested else config
    extra = ["group_size", "bits", "format_version", "quant_method", "head_bits"] if nested else \
        ["head_dim", "rope_scaling", "rope_parameters", "hidden_act", "attention_bias",
         "quantization_config", "rope_theta", "eos_token_id"]
    key = _pick(rng, sorted(target) + extra)
    if rng.random() < 0.1:
        target.pop(key, None)
        what = "removed"
    else:
        value = _pick(rng, HOSTILE_VALUES)
        if key == "rope_scaling" and rng.random() < 0.7:
            value = {"rope_type": _pick(rng, ["linear", "llama3", "yarn", "dynamic", 7]),
                     "factor": _pick(rng, HOSTILE_VALUES),
                     "original_max_position_embeddings": _pick(rng, HOSTILE_VALUES)}
        target[key] = value
        what = f"= {json.dumps(value)[:80]}"
    path.write_text(json.dumps(config))
    return f"config.json {'quantization_config.' if nested else ''}{key} {what}"


def dir_config_broken(rng, out: Path) -> str:
    path = out / "config.json"
    text = path.read_text()
    choice = int(rng.integers(7))
    if choice == 0:
        cut = int(rng.integers(len(text)))
        path.write_text(text[:cut])
        return f"config.json cut at {cut}"
    if choice == 1:
        path.write_bytes(b"\xff\xfe" + text.encode())
        return "config.json starts with invalid UTF-8"
    if choice == 2:
        kind = _pick(rng, ["list", "dict"])
        depth = _pick(rng, [1000, 100_000])
        path.write_text(_deep(depth, kind))
        return f"config.json is a {kind} nested {depth} deep"
    if choice == 3:
        config = json.loads(text)
        key = _pick(rng, sorted(config))
        depth = _pick(rng, [500, 5000, 100_000])
        config[key] = "DEEP"  # spliced in as text: the json module cannot build it
        path.write_text(json.dumps(config).replace('"DEEP"', _deep(depth, "list")))
        return f"config.json {key} = a list nested {depth} deep"
    if choice == 4:
        value = _pick(rng, ["[]", "null", "7", '"config"', "[{}]"])
        path.write_text(value)
        return f"config.json is {value}"
    if choice == 5:
        path.write_text("")
        return "config.json is empty"
    path.write_text(text.replace("}", ', "hidden_size": 99999999999999999999999}', 1))
    return "config.json has a duplicate hidden_size with a 20-digit value"


def dir_header_entry(rng, out: Path) -> str:
    file = _weight_file(rng, out)
    header, data = read_safetensors(file)
    name = _pick(rng, _tensor_entries(header))
    entry = header[name]
    field = _pick(rng, ["dtype", "shape", "data_offsets", "entry"])
    if field == "dtype":
        entry["dtype"] = _pick(rng, ["F32", "F16", "BF16", "F64", "I32", "U8", "I8", "BOOL",
                                     "F8_E4M3", "Q4", "", 5, None])
    elif field == "shape":
        shape = list(entry["shape"])
        choice = int(rng.integers(6))
        if choice == 0:
            entry["shape"] = shape[::-1]
        elif choice == 1:
            entry["shape"] = shape + [1]
        elif choice == 2:
            entry["shape"] = shape[:-1] or []
        elif choice == 3 and shape:
            shape[int(rng.integers(len(shape)))] = _pick(rng, [0, -1, 2**31, 2**62, 2**64, "8",
                                                                1.5, None])
            entry["shape"] = shape
        elif choice == 4:
            entry["shape"] = _pick(rng, [None, "32", {}, [[32]]])
        else:
            entry["shape"] = [2**20, 2**20]
    elif field == "data_offsets":
        begin, end = entry["data_offsets"]
        choice = int(rng.integers(5))
        if choice == 0:
            entry["data_offsets"] = [end, begin]
        elif choice == 1:
            shift = int(rng.integers(-64, 64))
            entry["data_offsets"] = [begin + shift, end + shift]
        elif choice == 2:
            entry["data_offsets"] = [begin, _pick(rng, [2**40, 2**63, 2**64, -1])]
        elif choice == 3:
            entry["data_offsets"] = _pick(rng, [[begin], [], None, [begin, end, end], "0"])
        else:
            entry["data_offsets"] = [begin - 2**62, end - 2**62]
    else:
        header[name] = _pick(rng, [None, 1, "x", [], {}])
    write_safetensors(file, header, data)
    return f"{file.name}: tensor {name} {field} -> {json.dumps(header[name])[:100]}"


def dir_metadata(rng, out: Path) -> str:
    file = _weight_file(rng, out)
    header, data = read_safetensors(file)
    meta = header.get("__metadata__") or {}
    quantized = [k for k in meta if k.endswith(".weight")]
    if quantized and rng.random() < 0.6:
        key = _pick(rng, quantized)
        entry = json.loads(meta[key])
        field = _pick(rng, ["shape", "bits", "group_size", "whole"])
        if field == "whole":
            meta[key] = _pick(rng, ["", "{", "[]", "null", "1", json.dumps({"shape": [1]})])
        else:
            entry[field] = _pick(rng, HOSTILE_VALUES + [[32, 32], [2**31, 32], [32], "int4",
                                                        "int8", 16, 48, 2**31])
            meta[key] = json.dumps(entry)
        header["__metadata__"] = meta
        write_safetensors(file, header, data)
        return f"{file.name}: __metadata__[{key}] {field} -> {meta[key][:100]}"
    if meta and rng.random() < 0.3:
        meta["q35f_format_version"] = _pick(rng, ["2", "-1", "x", "1e9", "99999999999999999999"])
        header["__metadata__"] = meta
        write_safetensors(file, header, data)
        return f"{file.name}: q35f_format_version -> {meta['q35f_format_version']}"
    header["__metadata__"] = _pick(rng, [1, [], "x", {"format": 5}, {"format": {"a": [1]}},
                                         json.loads(_deep(500, "dict")), None, True])
    write_safetensors(file, header, data)
    return f"{file.name}: __metadata__ -> {json.dumps(header['__metadata__'])[:80]}"


def dir_header_length(rng, out: Path) -> str:
    file = _weight_file(rng, out)
    raw = bytearray(file.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    value = _pick(rng, HEADER_LENGTHS + [n - 1, n + 1, len(raw) - 8, len(raw)])
    raw[:8] = value.to_bytes(8, "little", signed=False) if value >= 0 else raw[:8]
    file.write_bytes(bytes(raw))
    return f"{file.name}: header length {n} -> {value}"


def _truncate(rng, file: Path) -> str:
    size = file.stat().st_size
    cut = _pick(rng, [c for c in CUT_POINTS if c < size] + [int(rng.integers(size)), size - 1])
    with open(file, "r+b") as f:
        f.truncate(cut)
    return f"{file.name} cut from {size} to {cut} bytes"


def _flip(rng, file: Path, header_bytes: int | None = None) -> str:
    raw = bytearray(file.read_bytes())
    limit = min(len(raw), header_bytes) if header_bytes else len(raw)
    count = int(rng.integers(1, 17))
    where = sorted(int(i) for i in rng.integers(0, limit, size=count))
    for i in where:
        raw[i] = int(rng.integers(256)) if rng.random() < 0.5 else raw[i] ^ (1 << int(rng.integers(8)))
    file.write_bytes(bytes(raw))
    return f"{file.name}: {count} bytes changed at {where[:6]}{'...' if count > 6 else ''}"


def dir_truncate(rng, out: Path) -> str:
    files = sorted(out.glob("*.safetensors")) * 3 + sorted(out.glob("*.json"))
    return _truncate(rng, _pick(rng, files))


def dir_flip(rng, out: Path) -> str:
    file = _weight_file(rng, out)
    n = int.from_bytes(file.read_bytes()[:8], "little")
    return _flip(rng, file, 8 + n if rng.random() < 0.7 else None)


def dir_nonfinite(rng, out: Path) -> str:
    file = _weight_file(rng, out)
    header, data = read_safetensors(file)
    floats = [k for k in _tensor_entries(header) if header[k]["dtype"] in ("F32", "F16", "BF16")]
    name = _pick(rng, floats)
    entry = header[name]
    begin, end = entry["data_offsets"]
    data = bytearray(data)
    dtype = entry["dtype"]
    item = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    index = int(rng.integers((end - begin) // item))
    if dtype == "F32":
        value = _pick(rng, NONFINITE_F32)
        data[begin + 4 * index:begin + 4 * index + 4] = value.tobytes()
        shown = str(value)
    else:
        bits = _pick(rng, NONFINITE_F16 if dtype == "F16" else NONFINITE_BF16)
        data[begin + 2 * index:begin + 2 * index + 2] = struct.pack("<H", bits)
        shown = f"0x{bits:04x}"
    write_safetensors(file, header, bytes(data))
    return f"{file.name}: tensor {name} [{index}] = {shown} ({dtype})"


def dir_template(rng, out: Path) -> str:
    template = _pick(rng, HOSTILE_TEMPLATES)
    if rng.random() < 0.2:
        value = _pick(rng, [7, None, [{"name": "default", "template": template}], {"x": 1},
                            [{"name": 1}]])
        (out / "tokenizer_config.json").write_text(json.dumps({"chat_template": value}))
        return f"tokenizer_config.json chat_template = {json.dumps(value)[:80]}"
    if rng.random() < 0.2:
        (out / "chat_template.jinja").write_bytes(template.encode() + b"\xff")
        return f"chat_template.jinja = {template[:60]!r} + invalid UTF-8"
    (out / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return f"chat template {template[:70]!r}"


def dir_tokenizer(rng, out: Path) -> str:
    path = out / "tokenizer.json"
    choice = int(rng.integers(5))
    if choice == 0:
        return _truncate(rng, path)
    if choice == 1:
        return _flip(rng, path)
    if choice == 2:
        path.unlink()
        return "tokenizer.json removed"
    if choice == 3:
        value = _pick(rng, ["{}", "[]", "null", _deep(100_000, "list")])
        path.write_text(value)
        return f"tokenizer.json = {value[:20]}"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    token = _pick(rng, sorted(vocab))
    vocab[token] = _pick(rng, [-1, 2**40, 10**6, "a", None])
    path.write_text(json.dumps(tok))
    return f"tokenizer.json vocab[{token!r}] = {vocab[token]}"


def dir_index(rng, out: Path) -> str:
    path = out / "model.safetensors.index.json"
    if not path.is_file():
        return dir_header_entry(rng, out)
    index = json.loads(path.read_text())
    weight_map = index["weight_map"]
    name = _pick(rng, sorted(weight_map))
    choice = int(rng.integers(5))
    if choice == 0:
        weight_map[name] = _pick(rng, ["missing.safetensors", "../config.json", "", "/etc/passwd",
                                       7, None])
    elif choice == 1:
        del weight_map[name]
    elif choice == 2:
        other = sorted(set(weight_map.values()) - {weight_map[name]})
        weight_map[name] = other[0] if other else "x"
    elif choice == 3:
        index["weight_map"] = _pick(rng, [[], None, "x", {}])
    else:
        weight_map["model.layers.99.mlp.up_proj.weight"] = weight_map[name]
    path.write_text(json.dumps(index))
    return f"index: {name} -> {json.dumps(index['weight_map'] if choice == 3 else weight_map.get(name))}"


def dir_remove(rng, out: Path) -> str:
    file = _pick(rng, sorted(p for p in out.iterdir()))
    file.unlink()
    return f"{file.name} removed"


DIR_MUTATORS = [(dir_config_field, 6), (dir_config_broken, 1), (dir_header_entry, 4),
                (dir_metadata, 3), (dir_header_length, 1), (dir_truncate, 2), (dir_flip, 3),
                (dir_nonfinite, 4), (dir_template, 2), (dir_tokenizer, 1), (dir_index, 1),
                (dir_remove, 1)]


# --- GGUF mutators -------------------------------------------------------------------------------


def _gguf_hostile(rng, vtype):
    from gguf import GGUFValueType as T

    if rng.random() < 0.25:  # a different type altogether
        return _pick(rng, [("32", T.STRING), (3.5, T.FLOAT32), (2**40, T.UINT64),
                           (-5, T.INT32), (True, T.BOOL), ([1, 2], T.ARRAY), (b"\xff\xfe", T.STRING)])
    if vtype in (T.UINT32, T.INT32, T.UINT64, T.INT64, T.UINT16, T.UINT8):
        limit = {T.UINT32: 2**32 - 1, T.INT32: 2**31 - 1, T.UINT64: 2**64 - 1,
                 T.INT64: 2**63 - 1, T.UINT16: 2**16 - 1, T.UINT8: 255}[vtype]
        low = -2**31 if vtype == T.INT32 else (-2**63 if vtype == T.INT64 else 0)
        return _pick(rng, [0, 1, 2, 3, 7, limit, limit - 1, 2**31 - 1, 10**7, low, 100_000]) \
            if limit >= 2**31 else _pick(rng, [0, 1, limit]), vtype
    if vtype in (T.FLOAT32, T.FLOAT64):
        return _pick(rng, [0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e38, 1e-45,
                           1e30]), vtype
    if vtype == T.STRING:
        return _pick(rng, ["", "x", "llama2", b"\xff\xfe\xfa", "a" * 10_000, "linear",
                           "yarn"]), vtype
    if vtype == T.BOOL:
        return (not rng.random() < 0.5), vtype
    return None, vtype


def gguf_metadata_value(rng, seed: Path, out: Path) -> str:
    from gguf import GGUFValueType as T

    from fuzzing.seeds import gguf_metadata, write_gguf

    metadata = gguf_metadata()
    choice = rng.random()
    if choice < 0.1:  # a key removed
        index = int(rng.integers(len(metadata)))
        key = metadata.pop(index)[0]
        write_gguf(out, metadata)
        return f"GGUF metadata {key} removed"
    if choice < 0.2:  # rope scaling keys added
        kind = _pick(rng, ["linear", "yarn", "llama3", "none", "", b"\xff"])
        factor = _pick(rng, [0.0, -1.0, float("nan"), float("inf"), 1e30, 4.0])
        metadata += [("llama.rope.scaling.type", kind, T.STRING, None),
                     ("llama.rope.scaling.factor", factor, T.FLOAT32, None)]
        if rng.random() < 0.5:
            metadata.append(("llama.rope.scaling.original_context_length",
                             _pick(rng, [0, 2**32 - 1, 1]), T.UINT32, None))
        write_gguf(out, metadata)
        return f"GGUF rope scaling {kind!r} factor {factor}"
    index = int(rng.integers(len(metadata)))
    key, value, vtype, sub = metadata[index]
    if vtype == T.ARRAY:
        tokens = list(value)
        change = int(rng.integers(5))
        if change == 0:
            tokens[int(rng.integers(len(tokens)))] = _pick(rng, [b"\xff\xfe", b"\x80", "", "a" * 5000])
            what = "one item invalid UTF-8 / empty / long"
            sub = T.STRING if sub == T.STRING else sub
            if sub != T.STRING:
                tokens = [_pick(rng, [-1, 2**31 - 1, 99])] * len(tokens)
        elif change == 1:
            tokens = tokens[: int(rng.integers(1, len(tokens)))]
            what = f"cut to {len(tokens)} items"
        elif change == 2:
            tokens = tokens + tokens
            what = "doubled"
        elif change == 3:
            tokens = [tokens[0]] * len(tokens)
            what = "all items equal"
        else:
            metadata[index] = (key, [_pick(rng, [1.5, 2.5])] * 3, T.ARRAY, T.FLOAT32)
            write_gguf(out, metadata)
            return f"GGUF {key} is an array of float32"
        metadata[index] = (key, tokens, vtype, sub)
        write_gguf(out, metadata)
        return f"GGUF {key} {what}"
    new, new_type = _gguf_hostile(rng, vtype)
    if new_type == T.ARRAY:
        metadata[index] = (key, new, T.ARRAY, T.INT32)
    else:
        metadata[index] = (key, new, new_type, None)
    try:
        write_gguf(out, metadata)
    except (struct.error, ValueError, OverflowError):  # not representable: keep the seed value
        _copy(seed, out)
        return f"GGUF {key} unchanged ({new!r} not representable)"
    return f"GGUF {key} = {new!r:.80} ({new_type.name})"


def _gguf_parts(seed: Path):
    """(what, file offset, dtype) of every header length/count/type field of the seed."""
    import gguf

    reader = gguf.GGUFReader(str(seed))
    base = reader.data.ctypes.data
    parts = [("tensor count", 8, np.uint64), ("kv count", 16, np.uint64), ("version", 4, np.uint32)]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        offsets = [p.ctypes.data - base for p in field.parts]
        parts.append((f"{key} key length", offsets[0], np.uint64))
        parts.append((f"{key} value type", offsets[2], np.uint32))
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            parts.append((f"{key} array item type", offsets[3], np.uint32))
            parts.append((f"{key} array count", offsets[4], np.uint64))
            if len(field.types) > 1 and field.types[1] == gguf.GGUFValueType.STRING:
                parts.append((f"{key} first string length", offsets[5], np.uint64))
        elif field.types and field.types[0] == gguf.GGUFValueType.STRING:
            parts.append((f"{key} string length", offsets[3], np.uint64))
    for tensor in reader.tensors:
        offsets = [p.ctypes.data - base for p in tensor.field.parts]
        parts.append((f"tensor {tensor.name} name length", offsets[0], np.uint64))
        parts.append((f"tensor {tensor.name} n_dims", offsets[2], np.uint32))
        parts.append((f"tensor {tensor.name} dim 0", offsets[3], np.uint64))
        parts.append((f"tensor {tensor.name} type", offsets[4], np.uint32))
        parts.append((f"tensor {tensor.name} data offset", offsets[5], np.uint64))
    return parts


_PARTS_CACHE: dict = {}


def gguf_length_field(rng, seed: Path, out: Path) -> str:
    if seed not in _PARTS_CACHE:
        _PARTS_CACHE[seed] = _gguf_parts(seed)
    what, offset, dtype = _pick(rng, _PARTS_CACHE[seed])
    raw = bytearray(seed.read_bytes())
    size = np.dtype(dtype).itemsize
    old = int(np.frombuffer(bytes(raw[offset:offset + size]), dtype)[0])
    limit = 2**(8 * size) - 1
    value = _pick(rng, [0, 1, 2, 3, old + 1, max(0, old - 1), old * 2, 2**31 - 1, 2**31,
                        2**32 - 1, limit, limit // 2, 10**7, 2**40, len(raw), 31, 13, 100])
    value = min(value, limit)
    raw[offset:offset + size] = int(value).to_bytes(size, "little")
    out.write_bytes(bytes(raw))
    return f"GGUF {what} {old} -> {value}"


def gguf_truncate(rng, seed: Path, out: Path) -> str:
    _copy(seed, out)
    return _truncate(rng, out)


def gguf_flip(rng, seed: Path, out: Path) -> str:
    _copy(seed, out)
    return _flip(rng, out, 5600 if rng.random() < 0.7 else None)


def gguf_nonfinite(rng, seed: Path, out: Path) -> str:
    import gguf

    reader = gguf.GGUFReader(str(seed))
    tensor = _pick(rng, list(reader.tensors))
    raw = bytearray(seed.read_bytes())
    start = int(tensor.data_offset)
    kind = tensor.tensor_type
    if kind == gguf.GGMLQuantizationType.F32:
        index = int(rng.integers(tensor.n_elements))
        value = _pick(rng, NONFINITE_F32)
        raw[start + 4 * index:start + 4 * index + 4] = value.tobytes()
        shown = str(value)
    else:
        # F16 element, or the float16 scale d at the start of a Q8_0 block (34 bytes)
        step = 2 if kind == gguf.GGMLQuantizationType.F16 else 34
        index = int(rng.integers(int(tensor.n_bytes) // step))
        bits = _pick(rng, NONFINITE_F16)
        raw[start + step * index:start + step * index + 2] = struct.pack("<H", bits)
        shown = f"0x{bits:04x}"
    out.write_bytes(bytes(raw))
    return f"GGUF tensor {tensor.name} ({kind.name}) element/block {index} = {shown}"


GGUF_MUTATORS = [(gguf_metadata_value, 6), (gguf_length_field, 5), (gguf_truncate, 2),
                 (gguf_flip, 3), (gguf_nonfinite, 3)]


def mutate(rng: np.random.Generator, seed: Path, out: Path) -> str:
    """Write one mutated copy of `seed` at `out`; returns what was done."""
    seed, out = Path(seed), Path(out)
    if seed.is_dir():
        mutators = DIR_MUTATORS
        fn = _weighted(rng, mutators)
        _copy(seed, out)
        return f"{fn.__name__}: {fn(rng, out)}"
    fn = _weighted(rng, GGUF_MUTATORS)
    return f"{fn.__name__}: {fn(rng, seed, out)}"


def _weighted(rng, mutators):
    weights = np.array([w for _, w in mutators], dtype=float)
    return mutators[int(rng.choice(len(mutators), p=weights / weights.sum()))][0]
