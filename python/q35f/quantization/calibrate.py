"""Calibration activations: what each linear layer of a model sees on real text.

For every transformer block and each of its four distinct linear inputs

    attn_in    rms(x) before q/k/v        (hidden)
    attn_out   attention output before o  (heads * head_dim)
    mlp_in     rms(x) before gate/up      (hidden)
    mlp_hidden silu(gate) * up before down (intermediate)

`calibrate_checkpoint` gathers over the calibration tokens the per-input-channel mean square
E[x_c^2] (importance-aware pairing, q35f.quantization.pairing) and, optionally, the Hessian X^T X
(error feedback, q35f.quantization.gptq). Everything comes from the float model in one pass, block
by block: a layer's statistics do not see the quantization error of the layers before it (the
sequential GPTQ of q35f.quantization.sequential does).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INPUTS = ("attn_in", "attn_out", "mlp_in", "mlp_hidden")
# which input each linear layer reads
LAYER_INPUT = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in",
               "o_proj": "attn_out", "gate_proj": "mlp_in", "up_proj": "mlp_in",
               "down_proj": "mlp_hidden"}
_NAME = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.weight")
DEFAULT_SEQUENCE_LENGTH = 128
# Keep the last calibration for the next conversion of the same checkpoint (measurement runs
# that convert one model many ways; off by default: a calibration with Hessians is large).
CACHE = False
_CACHE: dict = {}


def input_key(name: str) -> tuple[int, str] | None:
    """(layer index, input) read by linear weight `name`; None for other tensors."""
    m = _NAME.fullmatch(name)
    if not m or m.group(2) not in LAYER_INPUT:
        return None
    return int(m.group(1)), LAYER_INPUT[m.group(2)]


@dataclass
class Calibration:
    """Per (layer, input): mean square per channel and (optionally) the Hessian X^T X."""

    source: str
    n_sequences: int
    sequence_length: int
    mean_square: dict = field(default_factory=dict)  # (layer, input) -> float64 (K,)
    hessian: dict = field(default_factory=dict)  # (layer, input) -> float64 (K, K)

    @property
    def tokens(self) -> int:
        return self.n_sequences * self.sequence_length

    def describe(self) -> dict:
        return {"source": self.source, "tokens": self.tokens, "sequences": self.n_sequences,
                "sequence_length": self.sequence_length}


def calibration_text(spec: str) -> str:
    """An existing text file's contents (a .gz file decompressed, as the generated corpus is
    written), else a corpus name of q35f.corpora."""
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".gz":
            import gzip

            return gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        return path.read_text(encoding="utf-8", errors="replace")
    from q35f.io import corpora

    try:
        return corpora.text(spec)
    except ValueError:
        raise ValueError(f"--calibration {spec!r} is neither a file nor a corpus "
                         f"({', '.join(corpora.NAMES)})") from None


def sequences(token_ids, n_tokens: int, sequence_length: int) -> np.ndarray:
    """(n, sequence_length) windows spread evenly over the text, n = n_tokens // length."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if sequence_length <= 0:
        raise ValueError(f"sequence length must be positive, got {sequence_length}")
    n = n_tokens // sequence_length
    if n < 1:
        raise ValueError(f"--calibration-tokens {n_tokens} is less than one sequence of "
                         f"{sequence_length} tokens")
    available = ids.size // sequence_length
    if n > available:
        raise ValueError(f"--calibration-tokens {n_tokens}: the text has only {ids.size} tokens "
                         f"({available} sequences of {sequence_length})")
    starts = (np.arange(n) * available // n) * sequence_length
    return np.stack([ids[s:s + sequence_length] for s in starts])


def calibration_batches(ck, spec: str, n_tokens: int,
                        sequence_length: int = DEFAULT_SEQUENCE_LENGTH) -> np.ndarray:
    """(n, sequence_length) token ids of calibration text `spec`, spread over the text."""
    try:
        tokenizer = ck.tokenizer
    except FileNotFoundError as err:
        raise ValueError(f"{err}: calibration needs the checkpoint's tokenizer; pass "
                         "--no-calibration for the data-free recipe") from None
    ids = tokenizer.encode(calibration_text(spec), add_special_tokens=False).ids
    return sequences(ids, n_tokens, sequence_length)


def calibrate_checkpoint(ck, spec: str, n_tokens: int, sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
                         hessians: bool = True, progress: bool = True) -> Calibration:
    """Calibration statistics of the float model of open checkpoint `ck` on text `spec`.

    Block by block (q35f.quantization.sequential.LayerStream with float weights): the hidden
    states of all calibration tokens are carried from one block to the next and only one
    block's weights are read at a time, so memory does not grow with the model's depth."""
    key = (str(ck.path), spec, int(n_tokens), int(sequence_length))
    if _CACHE.get("key") == key and (_CACHE["value"].hessian or not hessians):
        return _CACHE["value"]
    batches = calibration_batches(ck, spec, n_tokens, sequence_length)
    calib = stream_statistics(ck, batches, spec, hessians, progress)
    if CACHE:
        _CACHE.update(key=key, value=calib)
    return calib


def stream_statistics(ck, batches: np.ndarray, source: str = "?", hessians: bool = True,
                      progress: bool = False) -> Calibration:
    """Every block's input statistics of the float model `ck` (any object with get/config) on
    token batches (n, length), running the blocks one after the other."""
    from tqdm import tqdm

    from q35f.quantization.sequential import LayerStream

    calib = Calibration(source, *batches.shape)
    stream = LayerStream(ck, ck.config, batches, quantize=None)
    for layer in tqdm(range(stream.config.num_hidden_layers), desc="calibrate", unit="block",
                      disable=not progress, file=sys.stderr):

        def record(projs, x, layer=layer):
            key = (layer, LAYER_INPUT[projs[0]])
            x2 = x.reshape(-1, x.shape[-1])
            x64 = x2.astype(np.float64)
            calib.mean_square[key] = (x64 * x64).sum(axis=0) / x2.shape[0]
            if hessians:  # float32 products, kept in float64 as GPTQ reads them
                calib.hessian[key] = (x2.T @ x2).astype(np.float64)

        stream.x = stream.forward(stream.x, stream.norms(layer), stream.float_linear(layer),
                                  record)
    return calib
