"""q35f: 3.5-bit weight quantization of LLMs with Fortran 2008 kernels (format: docs/FORMAT.md)."""

__version__ = "0.1.0"

from .formats import FORMAT_VERSION, FORMATS, bits_per_weight  # noqa: E402
from .kernels import decode, encode, pack_codes, unpack_codes  # noqa: E402
from .tensor import QuantConfig, QuantizedTensor, matmul, quantize  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "FORMATS",
    "QuantConfig",
    "QuantizedTensor",
    "bits_per_weight",
    "decode",
    "encode",
    "matmul",
    "pack_codes",
    "quantize",
    "unpack_codes",
]
