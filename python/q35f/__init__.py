"""q35f: 3.5-bit weight quantization of LLMs with Fortran 2008 kernels (format: docs/FORMAT.md).

Public names are loaded on first use, so `import q35f.formats` or `q35f --help` does not load the
compiled kernels.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "FORMAT_VERSION": "formats",
    "FORMATS": "formats",
    "bits_per_weight": "formats",
    "encode": "kernels",
    "decode": "kernels",
    "pack_codes": "kernels",
    "unpack_codes": "kernels",
    "QuantConfig": "tensor",
    "QuantizedTensor": "tensor",
    "quantize": "tensor",
    "matmul": "tensor",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'q35f' has no attribute {name!r}")
