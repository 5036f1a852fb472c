"""Hugging Face-style model directories: config.json, safetensors weights (one file or shards
with an index), tokenizer files. Read for Hugging Face and q35f directories alike; written for
q35f directories, whose quantized weights are stored as three safetensors entries each with their
shape, bits and group size in the file metadata (FORMAT.md §8). Reader and writer share the
names below, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from q35f.format.rotation import can_rotate
from q35f.format.group_params import COMPACT, FLOAT16
from q35f.format.group_params import decode as decode_group_params
from q35f.format.spec import (COMPACT_VERSION, FORMAT_VERSION, ROTATION_VERSION, get_format,
                              n_groups, row_bytes)
from q35f.io.checkpoint import Checkpoint, StoredInfo
from q35f.kernels.tensor import QuantConfig
from q35f.io.llama import check_config, check_shapes, normalize_config
from q35f.io import staging
from q35f.io.safetensors import FLOAT_DTYPES, ITEMSIZE, SafetensorsFile

QUANT_METHOD = "q35f"
# A quantized weight NAME.weight is stored as three safetensors entries (FORMAT.md §8).
QWEIGHT, SCALES, OFFSETS = ".qweight", ".scales", ".offsets"
EXPONENTS = ".scale_exponents"  # e4m4 group parameters only (FORMAT.md §10)
# safetensors file metadata key holding the format version of the file's layout
FILE_VERSION_KEY = "q35f_format_version"


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: invalid JSON (nested too deeply)") from None


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
        check_config(config, config_path)

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
                if not isinstance(file, str) or not file:
                    raise ValueError(f"{index_path}: weight_map entry of tensor {name} must be a "
                                     f"file name, got {file!r}")
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
            size = ITEMSIZE.get(dtype, 0) * int(np.prod(shape, dtype=np.int64))
            if raw.endswith(QWEIGHT):
                base = raw[: -len(QWEIGHT)]
                name = base + ".weight"
                infos[name] = self._describe_quantized(name, base, stored, file, file_meta[file])
            elif (raw.endswith((SCALES, OFFSETS, EXPONENTS))
                  and raw.rsplit(".", 1)[0] + QWEIGHT in stored):
                continue  # part of a quantized weight
            else:
                if dtype not in FLOAT_DTYPES:
                    raise ValueError(
                        f"{file}: tensor {raw} has dtype {dtype}; expected F32, F16 or BF16"
                    )
                infos[raw] = StoredInfo(raw, shape, dtype, size, None, str(file))
        return infos

    def _describe_quantized(self, name, base, stored, file, meta):
        if self.kind != "q35f":
            raise ValueError(
                f"{file}: tensor {base + QWEIGHT} is quantized but config.json has no "
                f"q35f quantization_config"
            )
        version = meta.get(FILE_VERSION_KEY)
        if version is not None and not version.isdigit():
            raise ValueError(f"{file}: {FILE_VERSION_KEY} {version!r} is not a version number")
        if version is not None and int(version) > FORMAT_VERSION:
            raise ValueError(
                f"{file}: written with q35f format_version {version}, but this q35f reads up to "
                f"format_version {FORMAT_VERSION}; upgrade q35f"
            )
        try:
            entry = json.loads(meta[name])
            shape = tuple(int(v) for v in entry["shape"])
            config = QuantConfig(entry["bits"], entry["group_size"],
                                 entry.get("rotation", "none"),
                                 entry.get("group_params", FLOAT16))
        except (KeyError, TypeError, ValueError, OverflowError, json.JSONDecodeError):
            raise ValueError(
                f"{file}: tensor {name} has no valid q35f metadata (shape, bits, group_size, "
                "rotation, group_params)"
            ) from None
        bits, group_size = config.bits, config.group_size
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"{file}: tensor {name} has invalid q35f metadata {entry}")
        k = shape[1]
        expect = {raw: (dtype, part_shape) for raw, dtype, part_shape, _ in
                  quantized_entries(name, shape, bits, group_size, config.group_params)}
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
            nbytes += ITEMSIZE[dtype] * int(np.prod(part_shape))
        if config.rotation != "none" and not can_rotate(k, group_size):
            raise ValueError(f"{file}: tensor {name} is marked rotation {config.rotation!r}, "
                             f"but rows of {k} weights in groups of {group_size} cannot be")
        return StoredInfo(name, shape, bits, nbytes, group_size, str(file),
                          (bits, group_size, config.rotation, config.group_params))

    # tensors

    def _read(self, raw: str, source: str, start=None, stop=None, as_float32=True):
        return self._handles[Path(source)].read(raw, start, stop, as_float32)

    def get(self, name: str):
        info = self._infos[self._check_name(name)]
        if not info.quantized:
            return self._read(name, info.source)
        from q35f.kernels.tensor import QuantizedTensor

        base = name[: -len(".weight")]
        bits, group_size, rotation, group_params = info.meta
        parts = [self._read(base + s, info.source, as_float32=False)
                 for s in (QWEIGHT, SCALES, OFFSETS)]
        try:
            if group_params == COMPACT:  # codes -> the float16 pairs they stand for
                exponents = self._read(base + EXPONENTS, info.source, as_float32=False)
                parts[2], parts[1] = decode_group_params(exponents, parts[1], parts[2],
                                                         get_format(bits).even_levels - 1)
            return QuantizedTensor.from_packed(*parts, info.shape, group_size, bits, rotation,
                                               group_params)
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


def _read_chat_template(path: Path):
    """The chat template of tokenizer_config.json (or chat_template.jinja), if any."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{jinja}: not valid UTF-8 ({err})") from None
    tc_path = path / "tokenizer_config.json"
    if not tc_path.is_file():
        return None
    template = _read_json(tc_path).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


# ----------------------------------------------------------------------------------------------
# writing a q35f directory


def quantized_entries(name: str, shape, bits: str, group_size: int,
                      group_params: str = FLOAT16) -> list:
    """The safetensors entries (raw name, dtype, shape, nbytes) of quantized weight `name`."""
    n, k = shape
    base = name[: -len(".weight")]
    groups = n_groups(k, group_size)
    entries = [(base + QWEIGHT, "U8", (n, row_bytes(k, bits)), n * row_bytes(k, bits))]
    if group_params == COMPACT:
        return entries + [(base + SCALES, "U8", (n, groups), n * groups),
                          (base + OFFSETS, "I8", (n, groups), n * groups),
                          (base + EXPONENTS, "I8", (n,), n)]
    return entries + [(base + SCALES, "F16", (n, groups), 2 * n * groups),
                      (base + OFFSETS, "F16", (n, groups), 2 * n * groups)]


def required_version(rotations, group_params=()) -> int:
    """The oldest format version that describes tensors of these rotations and group
    parameters: files without either stay version 1, so older q35f releases keep reading
    them (FORMAT.md §9, §10)."""
    if any(g == COMPACT for g in group_params):
        return COMPACT_VERSION
    return ROTATION_VERSION if any(r != "none" for r in rotations) else 1


def tensor_metadata(planned, group_size):
    """safetensors metadata of one file: its format version and each quantized tensor's
    shape, bits, group size and (only when they have one) rotation and compact group
    parameters."""
    quantized = [p for p in planned if p.bits is not None]
    version = required_version([p.rotation for p in quantized],
                               [p.group_params for p in quantized])
    meta = {"format": "pt", FILE_VERSION_KEY: str(version)}
    for p in quantized:
        config = asdict(QuantConfig(p.bits, group_size, p.rotation, p.group_params))
        if config["rotation"] == "none":
            del config["rotation"]  # exactly a version-1 entry
        if config["group_params"] == FLOAT16:
            del config["group_params"]  # exactly a version-1 or 2 entry
        meta[p.name] = json.dumps({"shape": list(p.shape), **config}, separators=(",", ":"))
    return meta


def write_side_files(src, tmp: Path, config: dict):
    """config.json, tokenizer files and the chat template, copied when the source has them; the
    remote code that lets transformers load the directory (q35f.io.remote_code)."""
    from q35f.io.remote_code import write_transformers_files  # it imports this module

    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    copied = []
    if src.path.is_dir():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json", "chat_template.jinja"):
            if (src.path / name).is_file():
                shutil.copyfile(src.path / name, tmp / name)
                copied.append(name)
    if "tokenizer.json" not in copied:
        try:
            src.tokenizer.save(str(tmp / "tokenizer.json"))
            copied.append("tokenizer.json")
        except FileNotFoundError:
            print(f"warning: {src.path} has no tokenizer; the output has none either",
                  file=sys.stderr)
    if "tokenizer_config.json" not in copied and "chat_template.jinja" not in copied:
        tc = {"chat_template": src.chat_template}
        if "tokenizer.json" in copied:
            tok = src.tokenizer
            for key in ("bos_token_id", "eos_token_id"):
                token_id = config.get(key)
                if isinstance(token_id, int) and tok.id_to_token(token_id) is not None:
                    tc[key.replace("_id", "")] = tok.id_to_token(token_id)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n", encoding="utf-8")
    write_transformers_files(tmp)  # modeling_q35f.py + auto_map: transformers and lm-eval load it


def shard_plan(planned, max_bytes):
    """Consecutive tensors per file, each file at most max_bytes (or one tensor if larger)."""
    shards, current, size = [], [], 0
    for p in planned:
        if current and size + p.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(p)
        size += p.nbytes
    if current:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    """File names of `count` shards, as transformers names them."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(directory: Path, names, shards) -> None:
    """model.safetensors.index.json for a sharded directory."""
    weight_map = {e[0]: file for file, shard in zip(names, shards) for p in shard for e in p.entries}
    index = {"metadata": {"total_size": sum(p.nbytes for shard in shards for p in shard)},
             "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def partial_directory(out: Path) -> Path:
    """A fresh hidden sibling of `out` to build it in (renamed into place by replace_directory);
    the leftovers of killed runs for the same `out` are removed first (q35f.io.staging)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.remove_stale(out)
    return staging.create(out)


def discard_partial(tmp: Path) -> None:
    """Remove the partial directory of a run that failed."""
    staging.discard(tmp)


def replace_directory(tmp: Path, out: Path):
    """Move the finished directory into place; an old `out` (force) goes only after that."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    staging.release(tmp)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


