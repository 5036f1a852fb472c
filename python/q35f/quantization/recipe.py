"""Beyond round-to-nearest, behind `q35f quantize` options: clip search, importance-aware
pairing, error feedback (GPTQ), calibration data. The file format does not change: pairing is
folded into the model (q35f.quantization.pairing) and the other two only choose parameters and levels.

`Improver(ck, ...)` prepares everything a conversion needs from the open source checkpoint:
`source` (the checkpoint as the writer should read it, permuted when pairing), `quantize(name,
w, group_size, bits)` (one band of rows of one tensor) and `describe()` (what goes into
quantization_config).
"""

from __future__ import annotations

import sys
import time

from q35f.quantization.calibrate import DEFAULT_SEQUENCE_LENGTH, calibrate_checkpoint, input_key
from q35f.quantization.pairing import PAIRINGS, PermutedCheckpoint, build_permutations

DEFAULT_CALIBRATION = "emma"
DEFAULT_CALIBRATION_TOKENS = 8192


class Improver:
    def __init__(self, ck, clip_search=False, pairing="none", gptq=False, calibration=None,
                 calibration_tokens=DEFAULT_CALIBRATION_TOKENS,
                 sequence_length=DEFAULT_SEQUENCE_LENGTH, progress=True):
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {pairing!r}")
        self.clip_search = bool(clip_search)
        self.pairing = pairing
        self.gptq = bool(gptq)
        self.calib = None
        self.seconds = {}
        needs_data = self.gptq or pairing == "activation"
        if calibration is not None and not needs_data:
            raise ValueError("--calibration is used only by --gptq or --pairing activation")
        if needs_data:
            started = time.perf_counter()
            self.calib = calibrate_checkpoint(
                ck, calibration or DEFAULT_CALIBRATION, int(calibration_tokens),
                sequence_length, hessians=self.gptq, progress=progress)
            self.seconds["calibration"] = round(time.perf_counter() - started, 3)
        self.perms = build_permutations(ck, ck.config, pairing, self.calib)
        self.source = PermutedCheckpoint(ck, self.perms) if self.perms else ck
        self._factors = {}
        if progress and needs_data:
            print(f"calibrated on {self.calib.tokens} tokens of {self.calib.source} in "
                  f"{self.seconds['calibration']:.1f} s", file=sys.stderr)

    def describe(self) -> dict:
        out = {"clip_search": self.clip_search, "pairing": self.pairing, "gptq": self.gptq}
        if self.calib is not None:
            out["calibration"] = self.calib.describe()
        return out

    def _factor(self, name):
        """Upper Cholesky factor of the inverse Hessian of weight `name`'s (permuted) input."""
        from q35f.quantization.gptq import inverse_hessian_factor

        key = input_key(name)
        cols = self.perms.get(name, (None, None))[1]
        cache_key = (key, None if cols is None else cols.tobytes())
        if cache_key not in self._factors:
            h = self.calib.hessian[key]
            if cols is not None:
                h = h[cols][:, cols]
            self._factors = {cache_key: inverse_hessian_factor(h)}  # one input at a time
        return self._factors[cache_key]

    def quantize(self, name, w, group_size, bits):
        from q35f.kernels.tensor import quantize

        if input_key(name) is None:  # embedding / head: plain round-to-nearest
            return quantize(w, group_size, bits)
        if self.gptq:
            from q35f.quantization.gptq import gptq_quantize

            return gptq_quantize(w, self._factor(name), group_size, bits, self.clip_search)
        return quantize(w, group_size, bits, clip_search=self.clip_search)
