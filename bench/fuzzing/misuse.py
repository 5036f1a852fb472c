"""Misuse calls of the public Python API, each run in a sandboxed child (fuzzing.tasks).

A case is a zero-argument call, whether it is valid (it must return a finite result, copying
nothing across the f2py boundary) or not (it must raise a one-line ValueError/TypeError naming
`names`), and a name to report it by. `valid=None` accepts either a result or a named refusal
(e.g. a numpy integer where an int is asked for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

N, K = 32, 256


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable
    valid: bool | None
    names: str = ""


def _w(n=N, k=K, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(dtype)


def _qt(bits="q35", n=N, k=K, group_size=128):
    import q35f

    return q35f.quantize(_w(n, k), group_size, bits)


def _x(m=1, k=K, dtype=np.float32):
    return np.random.default_rng(1).standard_normal((m, k)).astype(dtype)


def _big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def _unaligned(a):
    """The same values at an address that is not a multiple of the item size."""
    raw = np.empty(a.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


def _with(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def _quantize(*args, **kwargs):
    import q35f

    return lambda: q35f.quantize(*args, **kwargs).dequantize()


def _matmul(x, qt_factory=_qt):
    import q35f

    return lambda: q35f.matmul(x() if callable(x) else x, qt_factory())


def _cases() -> list[Case]:
    import q35f
    from q35f.format.spec import bits_per_weight
    from q35f.kernels.tensor import QuantConfig, QuantizedTensor

    cases: list[Case] = []

    def add(name, call, valid, names=""):
        cases.append(Case(name, call, valid, names))

    # q35f.quantize: the matrix
    w = _w()
    for label, bad in [
        ("list", w.tolist()), ("float64", w.astype(np.float64)), ("float16", w.astype(np.float16)),
        ("int32", w.astype(np.int32)), ("bool", w > 0), ("object", w.astype(object)),
        ("scalar", np.float32(1.0)), ("1-D", w[0]), ("3-D", w[None]), ("empty-rows", w[:0]),
        ("empty-cols", w[:, :0]), ("nan", _with(w, (3, 5), np.nan)),
        ("inf", _with(w, (0, 0), np.inf)), ("-inf", _with(w, (N - 1, K - 1), -np.inf)),
        ("beyond-float16", _with(w, (1, 1), 70000.0)), ("complex", w.astype(np.complex64)),
    ]:
        add(f"quantize w={label}", lambda bad=bad: q35f.quantize(bad), False, "w")
    for label, bad in [("big-endian", _big_endian(w)), ("unaligned", _unaligned(w))]:
        for bits in q35f.FORMATS:  # refused by name: the kernels would need a hidden copy
            add(f"quantize w={label} bits={bits}", _quantize(bad, 128, bits), False, "w")
    for label, ok in [("strided", _w(N, 2 * K)[:, ::2]), ("fortran", np.asfortranarray(w)),
                      ("1x1", w[:1, :1]), ("ragged-k", w[:, :250]), ("one-row", w[:1]),
                      ("zeros", np.zeros((N, K), np.float32)), ("float16-max", _with(w, (0, 0), 65504.0)),
                      ("subnormal", np.full((N, K), 1e-40, np.float32)),
                      ("negative-zero", np.full((N, K), -0.0, np.float32)),
                      ("read-only", np.frombuffer(w.tobytes(), np.float32).reshape(N, K))]:
        for bits in q35f.FORMATS:
            add(f"quantize w={label} bits={bits}", _quantize(ok, 128, bits), True)
    # the group size
    for label, bad in [("0", 0), ("-16", -16), ("8", 8), ("17", 17), ("2^30", 2**30),
                       ("2^31", 2**31),
                       ("2^31+16", 2**31 + 16), ("2^63", 2**63), ("2^64", 2**64),
                       ("float", 128.0), ("string", "128"), ("none", None), ("true", True),
                       ("-2^31", -2**31)]:
        add(f"quantize group_size={label}", lambda bad=bad: q35f.quantize(w, bad), False,
            "group_size")
    for size in (16, 2**20, 2**30 - 16):  # larger than K: one group per row
        for bits in q35f.FORMATS:
            add(f"quantize group_size={size} bits={bits}", _quantize(w, size, bits), True)
    add("quantize group_size=np.int64", _quantize(w, np.int64(128)), None, "group_size")
    for label, bad in [("q4", "q4"), ("none", None), ("35", 35), ("upper", "Q35"), ("bytes", b"q35"),
                       ("fp16", "fp16")]:
        add(f"quantize bits={label}", lambda bad=bad: q35f.quantize(w, 128, bad), False, "bits")
    # explicit parameters (error feedback)
    groups = (N, K // 128)
    good = (np.zeros(groups, np.float16), np.ones(groups, np.float16))
    for label, params in [
        ("float32", (good[0].astype(np.float32), good[1].astype(np.float32))),
        ("wrong-shape", (good[0][:, :1], good[1][:, :1])),
        ("nan-scale", (good[0], _with(good[1], (0, 0), np.nan))),
        ("inf-offset", (_with(good[0], (0, 0), np.inf), good[1])),
        ("negative-scale", (good[0], -good[1])), ("tuple-of-3", good + good[:1]),
        ("none", (None, None)),
    ]:
        add(f"quantize params={label}", lambda params=params: q35f.quantize(w, 128, params=params),
            False, "params")
    add("quantize params=zero-scale", _quantize(w, 128, params=(good[0], 0 * good[1])), None,
        "params")

    # q35f.matmul
    for bits in q35f.FORMATS:
        for m in (1, 7, 8, 9, 100):
            add(f"matmul M={m} bits={bits}", _matmul(lambda m=m: _x(m), lambda b=bits: _qt(b)), True)
        add(f"matmul x=1-D bits={bits}", _matmul(lambda: _x(1)[0], lambda b=bits: _qt(b)), True)
        add(f"matmul x=ragged bits={bits}",
            _matmul(lambda: _x(3, 250), lambda b=bits: _qt(b, k=250, group_size=32)), True)
    for label, x in [("strided", lambda: _x(2, 2 * K)[:, ::2]),
                     ("fortran", lambda: np.asfortranarray(_x(9)))]:
        add(f"matmul x={label}", _matmul(x), True)
    for label, x in [("big-endian", lambda: _big_endian(_x(2))),
                     ("unaligned", lambda: _unaligned(_x(2))),
                     ("big-endian-gemm", lambda: _big_endian(_x(9))),
                     ("unaligned-gemm", lambda: _unaligned(_x(9)))]:
        add(f"matmul x={label}", _matmul(x), False, "x")
    for label, x in [("float64", lambda: _x(2, dtype=np.float64)), ("int", lambda: _x(2).astype(int)),
                     ("list", lambda: _x(2).tolist()), ("3-D", lambda: _x(2)[None]),
                     ("wrong-k", lambda: _x(2, K + 1)), ("no-rows", lambda: _x(0)),
                     ("scalar", lambda: np.float32(1)), ("none", lambda: None),
                     ("float16", lambda: _x(2, dtype=np.float16))]:
        add(f"matmul x={label}", _matmul(x), False, "x")
    for label, qt in [("ndarray", lambda: _w()), ("none", lambda: None), ("list", lambda: [1])]:
        add(f"matmul qt={label}", lambda qt=qt: q35f.matmul(_x(1), qt()), False, "qt")

    # QuantizedTensor built by hand: inconsistent pieces must be refused, never read past
    def handmade(change):
        def build():
            t = _qt(change.get("from_bits", "q35"))
            parts = dict(tiles=t._tiles, scale_tiles=t._scale_tiles, offset_tiles=t._offset_tiles,
                         shape=t.shape, group_size=t.group_size, bits=t.bits)
            parts.update({k: v(t) for k, v in change.items() if k != "from_bits"})
            return QuantizedTensor(**parts)
        return build

    inconsistent = {
        "issue-repro-k=2^22": {"shape": lambda t: (32, 2**22), "group_size": lambda t: 2**22},
        "shape-k-larger": {"shape": lambda t: (N, 2 * K)},
        "shape-n-larger": {"shape": lambda t: (4 * N, K)},
        "shape-negative": {"shape": lambda t: (-1, K)},
        "shape-zero": {"shape": lambda t: (0, 0)},
        "shape-3-D": {"shape": lambda t: (N, K, 1)},
        "group-size-16": {"group_size": lambda t: 16},
        "group-size-0": {"group_size": lambda t: 0},
        "group-size-2^31": {"group_size": lambda t: 2**31},
        "bits-int8-on-q35": {"bits": lambda t: "int8"},
        "bits-unknown": {"bits": lambda t: "q9"},
        "int8-tiles-called-q35": {"from_bits": "int8", "bits": lambda t: "q35"},
        "tiles-float32": {"tiles": lambda t: t._tiles.astype(np.float32)},
        "tiles-cut": {"tiles": lambda t: t._tiles[:, :10]},
        "tiles-strided": {"tiles": lambda t: t._tiles[::2]},
        "tiles-list": {"tiles": lambda t: t._tiles.tolist()},
        "scale-tiles-cut": {"scale_tiles": lambda t: t._scale_tiles[:, :1]},
        "offset-tiles-float16": {"offset_tiles": lambda t: t._offset_tiles.view(np.float16)},
        "scale-tiles-none": {"scale_tiles": lambda t: None},
    }
    operations = {
        "matmul-gemv": lambda qt: q35f.matmul(np.ones((1, qt.shape[1]), np.float32), qt),
        "matmul-gemm": lambda qt: q35f.matmul(np.ones((9, qt.shape[1]), np.float32), qt),
        "dequantize": lambda qt: qt.dequantize(),
        "take_rows": lambda qt: qt.take_rows(np.arange(qt.shape[0])),
    }
    for label, change in inconsistent.items():
        for op_name, op in operations.items():
            add(f"QuantizedTensor({label}).{op_name}",
                lambda change=change, op=op: op(handmade(change)()), False, "")

    # QuantizedTensor.from_packed: the file layout
    t = _qt()
    packed, scale, offset = t.packed, t.scale, t.offset
    for label, args in [
        ("packed-int8", (packed.view(np.int8), scale, offset)),
        ("packed-cut", (packed[:, :-7], scale, offset)),
        ("scale-float32", (packed, scale.astype(np.float32), offset)),
        ("offset-wrong-rows", (packed, scale, offset[:-1])),
        ("scale-nan", (packed, _with(scale, (0, 0), np.nan), offset)),
        ("scale-inf", (packed, _with(scale, (2, 1), np.inf), offset)),
        ("offset-nan", (packed, scale, _with(offset, (5, 0), np.nan))),
        ("offset--inf", (packed, scale, _with(offset, (5, 1), -np.inf))),
        ("scale-negative", (packed, -scale, offset)),
        ("packed-list", (packed.tolist(), scale, offset)),
    ]:
        add(f"from_packed {label}",
            lambda args=args: QuantizedTensor.from_packed(*args, t.shape, 128, "q35").dequantize(),
            False, label.split("-")[0])
    for label, shape, gs, bits in [("shape-negative", (-N, K), 128, "q35"),
                                   ("shape-float", (N + 0.5, K), 128, "q35"),
                                   ("group-size-2^31", (N, K), 2**31, "q35"),
                                   ("bits-int4", (N, K), 128, "int4")]:
        add(f"from_packed {label}",
            lambda shape=shape, gs=gs, bits=bits: QuantizedTensor.from_packed(
                packed, scale, offset, shape, gs, bits).dequantize(),
            False, "")  # any one-line error: the pieces disagree, whichever is named
    add("from_packed big-endian-scale", lambda: QuantizedTensor.from_packed(
        packed, _big_endian(scale), offset, t.shape, 128, "q35").dequantize(), None, "scale")

    # take_rows
    for label, ids in [("out-of-range", [N]), ("negative", [-1]), ("float", [0.5]),
                       ("2-D", [[0, 1]]), ("huge", [2**62]), ("string", ["a"])]:
        add(f"take_rows ids={label}", lambda ids=ids: _qt().take_rows(np.array(ids)), False, "ids")
    add("take_rows ids=empty", lambda: _qt().take_rows(np.array([], np.int64)), True)
    add("take_rows ids=list", lambda: _qt().take_rows([0, 31]), True)

    # codes and the bit stream
    for label, call in [
        ("encode n1-out-of-range", lambda: q35f.encode([8], [0])),
        ("encode n2-out-of-range", lambda: q35f.encode([0], [4])),
        ("encode shapes-differ", lambda: q35f.encode([0, 1], [0])),
        ("encode float", lambda: q35f.encode([0.5], [0])),
        ("encode huge", lambda: q35f.encode([2**40], [0])),
        ("encode none", lambda: q35f.encode(None, None)),
        ("decode 128", lambda: q35f.decode([128])),
        ("decode negative", lambda: q35f.decode([-1])),
        ("decode float", lambda: q35f.decode([1.5])),
        ("pack_codes not-multiple-of-8", lambda: q35f.pack_codes(np.zeros((2, 7), np.uint8))),
        ("pack_codes 1-D", lambda: q35f.pack_codes(np.zeros(8, np.uint8))),
        ("pack_codes 200", lambda: q35f.pack_codes(np.full((1, 8), 200, np.uint8))),
        ("unpack_codes not-multiple-of-7", lambda: q35f.unpack_codes(np.zeros((2, 6), np.uint8))),
        ("unpack_codes 3-D", lambda: q35f.unpack_codes(np.zeros((1, 1, 7), np.uint8))),
        ("unpack_codes float", lambda: q35f.unpack_codes(np.zeros((1, 7), np.float32))),
    ]:
        add(label, call, False, "")
    for label, call in [
        ("encode all-pairs", lambda: q35f.encode(*np.meshgrid(np.arange(-8, 8), np.arange(-4, 4)))),
        ("decode all-codes", lambda: np.stack(q35f.decode(np.arange(128)))),
        ("pack_codes empty", lambda: q35f.pack_codes(np.zeros((0, 8), np.uint8))),
        ("unpack_codes big-endian-ints", lambda: q35f.unpack_codes(
            np.zeros((2, 7), np.dtype(">u2")))),
        ("pack_codes strided", lambda: q35f.pack_codes(np.zeros((4, 16), np.uint8)[::2])),
    ]:
        add(label, call, True)

    # configuration objects and the size formula
    for label, call, names in [
        ("QuantConfig bits", lambda: QuantConfig("q7", 128), "bits"),
        ("QuantConfig group_size", lambda: QuantConfig("q35", 100), "group_size"),
        ("bits_per_weight k=0", lambda: bits_per_weight(0, 128, "q35"), "k"),
        ("bits_per_weight k=-16", lambda: bits_per_weight(-16, 128, "q35"), "k"),
        ("bits_per_weight group_size=0", lambda: bits_per_weight(256, 0, "q35"), "group_size"),
        ("bits_per_weight bits", lambda: bits_per_weight(256, 128, "x"), "bits"),
    ]:
        add(label, call, False, names)
    return cases


CASES = _cases()
