"""The safetensors container, read and written one tensor (or band of rows) at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
            "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


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
            itemsize = ITEMSIZE.get(dtype)
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


class SafetensorsWriter:
    """A safetensors file whose header is written first; tensor bytes then go to their offsets."""

    def __init__(self, path: Path, planned, metadata):
        header = {"__metadata__": metadata}
        self.offsets = {}
        offset = 0
        for p in planned:
            for raw, dtype, shape, nbytes in p.entries:
                header[raw] = {"dtype": dtype, "shape": list(shape),
                               "data_offsets": [offset, offset + nbytes]}
                self.offsets[raw] = (offset, nbytes)
                offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # tensor data 8-byte aligned, as safetensors does
        self.data_start = 8 + len(blob)
        self.size = self.data_start + offset
        self.path = path
        self._file = open(path, "wb")
        self._file.write(len(blob).to_bytes(8, "little"))
        self._file.write(blob)
        self._file.truncate(self.size)
        self._written = {raw: 0 for raw in self.offsets}

    def write(self, raw: str, array: np.ndarray, first_byte: int = 0):
        """Write array's bytes at byte first_byte of tensor raw."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        offset, nbytes = self.offsets[raw]
        if first_byte + data.size > nbytes:
            raise AssertionError(f"{raw}: write past its end")
        self._file.seek(self.data_start + offset + first_byte)
        self._file.write(memoryview(data))
        self._written[raw] += data.size

    def abort(self):
        self._file.close()

    def close(self):
        incomplete = [raw for raw, n in self._written.items() if n != self.offsets[raw][1]]
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if incomplete:
            raise AssertionError(f"{self.path}: tensors not fully written: {incomplete[:3]}")
