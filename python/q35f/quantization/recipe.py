"""Beyond round-to-nearest, behind `q35f quantize` options: clip search, importance-aware
pairing, error feedback (GPTQ), importance-weighted searches, calibration data, and the two
additions to the file format: the input rotation (FORMAT.md §9) and compact group parameters
(§10, chosen inside GPTQ). Pairing is folded into the model (q35f.quantization.pairing); the
others choose parameters and levels.

Importance ("activation", with calibration): each input column's E[x_c^2] over the calibration
tokens, normalised to mean 1 and mixed with a uniform prior, imp = (1 - p) E[x^2]/mean + p,
weighs the clip search's squared error (llama.cpp's importance matrix); the prior p keeps
columns that happened to be quiet on the calibration text from being ignored (overfitting).

`Improver(ck, ...)` prepares everything a conversion needs from the open source checkpoint:
`source` (the checkpoint as the writer should read it, permuted when pairing), `quantize(name,
w, group_size, bits)` (one band of rows of one tensor) and `describe()` (what goes into
quantization_config).
"""

from __future__ import annotations

import sys
import time

from q35f.format.group_params import COMPACT, FLOAT16, check_group_params
from q35f.quantization.calibrate import DEFAULT_SEQUENCE_LENGTH, calibrate_checkpoint, input_key
from q35f.quantization.pairing import PAIRINGS, PermutedCheckpoint, build_permutations

DEFAULT_CALIBRATION = "generated"  # the model's own text (q35f.quantization.generated_corpus), no author
DEFAULT_CALIBRATION_TOKENS = 16384  # 8192 until session 9 (docs/RESULTS.md "Session 9")
PAIRING_TOKENS = 1024  # float-model tokens for the pairing's mean squares (sequential GPTQ)
IMPORTANCES = ("none", "activation")
# What `q35f quantize` does without options, and with --no-calibration / --round-to-nearest.
# The rotation (FORMAT.md §9) helps both; pairing helps only without GPTQ once inputs are
# rotated (16 windows, P&P / pydoc PPL, fp32 24.22 / 14.92: calibrated 31.12 / 19.05 ->
# rotated 29.71 / 18.36, with activation pairing 30.75 / 18.54, weight pairing 32.09; data-free
# 78.73 / 55.21 -> rotated 51.52 / 40.75 without pairing, 46.61 / 32.44 with weight pairing).
# Error propagation a = 0.5 (session 10, 64 windows, P&P / pydoc delta PPL): +22.34 / +23.66 %
# -> +21.83 / +20.99 %, KL 0.224 / 0.211 -> 0.208 / 0.193; a = 1 overfits the calibration text
# (16 windows: +25.2 / +26.4 % against +20.3 / +23.2 % without).
# Groups of 64 with one-byte parameters (FORMAT.md §10, session 11): the same 3.76 bits per
# weight as float16 parameters per 128, KL divergence -10 / -14 % calibrated, -5 / -15 %
# data-free (64 windows, P&P / pydoc; docs/RESULTS.md "Session 11").
# Session 12 (64 windows, P&P / pydoc, docs/RESULTS.md "Session 12"): GPTQ's 3-bit columns
# first, KL 0.185 / 0.166 -> 0.173 / 0.155; k/v in int4 and q in int3 (q35f.quantization.mix),
# -> 0.161 / 0.149 calibrated, 0.694 / 0.644 -> 0.632 / 0.608 data-free, 0.016 fewer bits.
# Session 13: the rule by depth on top (kv4-q3-ends), at the same bits: KL 0.159 / 0.149 ->
# 0.144 / 0.139 calibrated, 0.632 / 0.608 -> 0.592 / 0.587 data-free.
RECIPES = {
    "calibrated": {"clip_search": True, "pairing": "none", "gptq": True,
                   "importance": "activation", "rotation": "hadamard", "propagation": 0.5,
                   "group_params": COMPACT, "gptq_order": "coarse-first",
                   "mix": "kv4-q3-ends"},
    "data-free": {"clip_search": True, "pairing": "weight", "gptq": False, "importance": "none",
                  "rotation": "hadamard", "group_params": COMPACT, "mix": "kv4-q3-ends"},
    "round-to-nearest": {"clip_search": False, "pairing": "none", "gptq": False,
                         "importance": "none", "rotation": "none"},
}


def default_group_size(group_params: str = FLOAT16) -> int:
    """The group size when none is asked for: compact parameters (FORMAT.md §10) pay for
    groups of 64 at the cost of float16 ones per 128."""
    return 64 if group_params == COMPACT else 128


RECIPE_GROUP_SIZE = {name: default_group_size(r.get("group_params", FLOAT16))
                     for name, r in RECIPES.items()}
DEFAULT_IMPORTANCE_PRIOR = 0.1


def rotated_hessian(hessian, group_size: int):
    """R^T H R (float64, symmetric) for the inputs R^T x of a rotated tensor (FORMAT.md §9),
    rotated in float32 like the inputs themselves."""
    import numpy as np

    from q35f.kernels.fortran import rotate_rows

    h = np.ascontiguousarray(hessian, dtype=np.float32)
    hr = rotate_rows(np.ascontiguousarray(rotate_rows(h, group_size).T), group_size)
    hr = hr.astype(np.float64)
    return (hr + hr.T) / 2


def mixed_importance(mean_square, prior: float = DEFAULT_IMPORTANCE_PRIOR):
    """(1 - prior) * mean_square / its mean + prior, float32 (a uniform prior mixed in)."""
    import numpy as np

    ms = np.asarray(mean_square, dtype=np.float64)
    mean = ms.mean()
    rel = ms / mean if mean > 0 else np.ones_like(ms)
    return ((1 - prior) * rel + prior).astype(np.float32)


class Improver:
    def __init__(self, ck, clip_search=False, pairing="none", gptq=False, calibration=None,
                 calibration_tokens=DEFAULT_CALIBRATION_TOKENS,
                 sequence_length=DEFAULT_SEQUENCE_LENGTH, progress=True, importance="none",
                 importance_prior=DEFAULT_IMPORTANCE_PRIOR, damping=None, sequential=True,
                 symmetric=False, refit=False, tune_steps=0, tune_target="float-block",
                 tune_lr=None, rotation="none", group_size=128, propagation=0.0,
                 group_params=FLOAT16, gptq_order="natural", tensor_bits=None):
        from q35f.format.rotation import check_rotation
        from q35f.quantization.gptq import DEFAULT_DAMPING, ORDERS

        self.rotation = check_rotation(rotation)
        self.group_size = int(group_size)
        if self.rotation != "none" and (refit or tune_steps):
            raise ValueError("--rotation does not combine with --refit-scales or --tune-scales "
                             "(they fit parameters to unrotated weights)")
        if self.rotation != "none" and importance != "none" and not gptq:
            raise ValueError("--rotation with --importance activation needs --gptq: the "
                             "importance of rotated inputs comes from their Hessian")

        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {pairing!r}")
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {list(IMPORTANCES)}, got {importance!r}")
        if importance != "none" and not clip_search:
            raise ValueError("--importance weighs the clip search: it needs --clip-search")
        if not 0 <= float(importance_prior) <= 1:
            raise ValueError(f"importance_prior must lie in [0, 1], got {importance_prior}")
        if symmetric and not gptq:
            raise ValueError("symmetric group ranges are implemented for GPTQ only")
        if (refit or tune_steps) and not (gptq and sequential):
            raise ValueError("--refit-scales and --tune-scales refine sequential GPTQ's "
                             "parameters: they need --gptq (the default recipe)")
        if int(tune_steps) < 0:
            raise ValueError(f"tune_steps must be >= 0, got {tune_steps}")
        if tune_steps:
            import importlib.util

            if importlib.util.find_spec("torch") is None:  # autograd of the block tuning
                raise ValueError("--tune-scales needs torch (pip install torch)")
        if not 0 <= float(propagation) <= 1:
            raise ValueError(f"propagation must lie in [0, 1], got {propagation}")
        if propagation and not (gptq and sequential):
            raise ValueError("--propagation corrects sequential GPTQ's targets: it needs --gptq")
        self.propagation = float(propagation)
        if gptq_order not in ORDERS:
            raise ValueError(f"gptq_order must be one of {list(ORDERS)}, got {gptq_order!r}")
        if gptq_order != "natural" and not gptq:
            raise ValueError("--gptq-order is the column order of GPTQ: it needs --gptq")
        self.gptq_order = gptq_order
        # each linear's format (the plan's, q35f.quantization.mix): the sequential stream
        # quantizes a whole block at its first tensor's call
        self.tensor_bits = dict(tensor_bits or {})
        if check_group_params(group_params) != FLOAT16 and (refit or tune_steps):
            raise ValueError("--refit-scales and --tune-scales write float16 group parameters: "
                             "they do not combine with compact ones")
        self.group_params = group_params
        self.refit = bool(refit)
        self.tune_steps = int(tune_steps)
        self.tune_target = tune_target
        self.tune_lr = tune_lr
        self.clip_search = bool(clip_search)
        self.symmetric = bool(symmetric)
        self.pairing = pairing
        self.gptq = bool(gptq)
        self.importance = importance
        self.importance_prior = float(importance_prior)
        self.damping = DEFAULT_DAMPING if damping is None else float(damping)
        if self.damping <= 0:
            raise ValueError(f"damping must be positive, got {self.damping}")
        self.calib = None
        self.seconds = {}
        needs_data = self.gptq or pairing == "activation" or importance == "activation"
        if calibration is not None and not needs_data:
            raise ValueError("--calibration is used only by --gptq, --pairing activation or "
                             "--importance activation")
        # GPTQ block by block on quantized inputs (q35f.quantization.sequential); the float pass below then
        # only feeds the pairing, with fewer tokens (mean squares settle fast).
        self.sequential = self.gptq and bool(sequential)
        self.spec = calibration or DEFAULT_CALIBRATION
        self.calibration_tokens = int(calibration_tokens)
        self.sequence_length = int(sequence_length)
        self.progress = progress
        float_pass = needs_data and not (self.sequential and pairing != "activation")
        if float_pass:
            started = time.perf_counter()
            tokens = (min(self.calibration_tokens, PAIRING_TOKENS) if self.sequential
                      else self.calibration_tokens)
            self.calib = calibrate_checkpoint(
                ck, self.spec, tokens, sequence_length,
                hessians=self.gptq and not self.sequential, progress=progress)
            self.seconds["calibration"] = round(time.perf_counter() - started, 3)
            if progress:
                print(f"calibrated on {self.calib.tokens} tokens of {self.calib.source} in "
                      f"{self.seconds['calibration']:.1f} s", file=sys.stderr)
        self.perms = build_permutations(ck, ck.config, pairing, self.calib)
        self.source = PermutedCheckpoint(ck, self.perms) if self.perms else ck
        self._factors = {}
        self._stream = None  # sequential: the LayerStream, made at the first linear weight
        self._block = {}  # sequential: the current block's QuantizedTensors by name
        self._rows_done = {}  # sequential: rows of each of them already handed out

    def describe(self) -> dict:
        out = {"clip_search": self.clip_search, "pairing": self.pairing, "gptq": self.gptq,
               "importance": self.importance}
        if self.rotation != "none":
            out["rotation"] = self.rotation
        if self.importance != "none":
            out["importance_prior"] = self.importance_prior
        if self.symmetric:
            out["grid"] = "symmetric"
        if self.gptq:
            out["damping"] = self.damping
            out["gptq_order"] = self.gptq_order
            out["sequential"] = self.sequential
        if self.propagation:
            out["propagation"] = self.propagation
        if self.refit:
            out["refit"] = "hessian"
        if self.tune_steps:
            from q35f.quantization.tune import DEFAULT_TUNE_BATCH, DEFAULT_TUNE_LR

            out["tune"] = {"steps": self.tune_steps, "target": self.tune_target,
                           "lr": self.tune_lr or DEFAULT_TUNE_LR, "batch": DEFAULT_TUNE_BATCH}
        if self.sequential:
            out["calibration"] = {"source": self.spec, "tokens": self.calibration_tokens,
                                  "sequence_length": self.sequence_length}
            if self.calib is not None:
                out["calibration"]["pairing_tokens"] = self.calib.tokens
        elif self.calib is not None:
            out["calibration"] = self.calib.describe()
        return out

    def _factor(self, name, bits):
        """Upper Cholesky factor of the inverse Hessian of weight `name`'s (permuted, rotated)
        input in GPTQ's column order for `bits`, that order, and the Hessian's diagonal."""
        from q35f.quantization.gptq import column_order, inverse_hessian_factor

        key = input_key(name)
        cols = self.perms.get(name, (None, None))[1]
        cache_key = (key, None if cols is None else cols.tobytes(), bits)
        if cache_key not in self._factors:
            h = self.calib.hessian[key]
            if cols is not None:
                h = h[cols][:, cols]
            if self.rotates(name, h.shape[0]):
                h = rotated_hessian(h, self.group_size)
            order = column_order(h.shape[0], bits, self.gptq_order)
            # one input at a time
            self._factors = {cache_key: (inverse_hessian_factor(h, self.damping, order), order,
                                         h.diagonal())}
        return self._factors[cache_key]

    def rotates(self, name, k) -> bool:
        """Whether linear weight `name` with k inputs is stored rotated (the plan's rule)."""
        from q35f.quantization.convert import planned_rotation

        return planned_rotation(name, k, self.rotation, self.group_size) != "none"

    def _importance(self, name, bits):
        """Per input column (permuted like the weight) weights of the clip search, or None."""
        if self.importance == "none":
            return None
        if self.rotation != "none":  # only with GPTQ (__init__): the rotated Hessian's diagonal
            return mixed_importance(self._factor(name, bits)[2], self.importance_prior)
        imp = mixed_importance(self.calib.mean_square[input_key(name)], self.importance_prior)
        cols = self.perms.get(name, (None, None))[1]
        return imp if cols is None else imp[cols]

    def _sequential_rows(self, name, w, group_size, bits):
        """The next len(w) rows of `name` as quantized by the LayerStream."""
        import numpy as np

        from q35f.quantization.calibrate import calibration_batches
        from q35f.quantization.gptq import column_order, gptq_quantize, inverse_hessian_factor
        from q35f.quantization.sequential import LayerStream
        from q35f.kernels.fortran import rotate_rows
        from q35f.kernels.tensor import QuantizedTensor

        if self._stream is None:
            # (hessian, order, its factor): q/k/v and gate/up share an input, and its factor
            # while they are quantized in the same column order
            factor = [None, None, None]

            def quantize_full(tensor, weight, hessian, mean_square, base_bits=bits):
                bits = self.tensor_bits.get(tensor, base_bits)
                rotate = self.rotates(tensor, weight.shape[1])
                order = column_order(weight.shape[1], bits, self.gptq_order)
                order_key = None if order is None else order.tobytes()
                if factor[0] is not hessian or factor[1] != order_key:
                    h, ms = hessian, mean_square
                    if rotate:  # the rotated inputs' Hessian and mean squares diag(R^T H R) / T
                        h = rotated_hessian(hessian, group_size)
                        ms = np.diag(h) * (mean_square.mean() / max(np.diag(hessian).mean(),
                                                                    1e-300))
                    factor[:] = hessian, order_key, (
                        inverse_hessian_factor(h, self.damping, order), ms)
                u, ms = factor[2]
                imp = (mixed_importance(ms, self.importance_prior)
                       if self.importance != "none" else None)
                if rotate:
                    weight = rotate_rows(weight, group_size)
                qt = gptq_quantize(weight, u, group_size, bits, self.clip_search,
                                   importance=imp, symmetric=self.symmetric,
                                   group_params=self.group_params, order=order)
                return qt.as_rotated(self.rotation) if rotate else qt

            started = time.perf_counter()
            batches = calibration_batches(self.source, self.spec, self.calibration_tokens,
                                          self.sequence_length)
            self._stream = LayerStream(
                self.source, self.source.config, batches, quantize_full, refit=self.refit,
                tune_steps=self.tune_steps, target=self.tune_target,
                tune_options={} if self.tune_lr is None else {"lr": self.tune_lr},
                progress=self.progress, propagation=self.propagation, damping=self.damping)
            self.seconds["sequential_setup"] = round(time.perf_counter() - started, 3)
        if name not in self._block:
            self._block = self._stream.block(input_key(name)[0])
            self._rows_done = {}
        qt = self._block[name]
        if qt.bits != bits:
            raise ValueError(f"{name}: the stream quantized it as {qt.bits}, the plan says {bits}")
        start = self._rows_done.get(name, 0)
        stop = start + w.shape[0]
        self._rows_done[name] = stop
        return QuantizedTensor.from_packed(qt.packed[start:stop], qt.scale[start:stop],
                                           qt.offset[start:stop], (stop - start, qt.shape[1]),
                                           qt.group_size, qt.bits, qt.rotation,
                                           qt.group_params)

    def quantize(self, name, w, group_size, bits):
        from q35f.kernels.fortran import rotate_rows
        from q35f.kernels.tensor import quantize

        if input_key(name) is None:  # embedding / head: plain round-to-nearest
            return quantize(w, group_size, bits)
        if group_size != self.group_size:
            raise ValueError(f"group size {group_size} differs from the Improver's "
                             f"{self.group_size}")
        if self.sequential:
            return self._sequential_rows(name, w, group_size, bits)
        rotation = self.rotation if self.rotates(name, w.shape[1]) else "none"
        if not self.gptq:
            return quantize(w, group_size, bits, clip_search=self.clip_search,
                            importance=self._importance(name, bits), rotation=rotation,
                            group_params=self.group_params)
        from q35f.quantization.gptq import gptq_quantize

        if rotation != "none":
            w = rotate_rows(w, group_size)
        factor, order, _ = self._factor(name, bits)
        qt = gptq_quantize(w, factor, group_size, bits, self.clip_search,
                           importance=self._importance(name, bits), symmetric=self.symmetric,
                           group_params=self.group_params, order=order)
        return qt.as_rotated(rotation) if rotation != "none" else qt
