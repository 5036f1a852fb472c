"""q35f: 3.5-bit weight quantization of LLMs with Fortran 2008 kernels (format: docs/FORMAT.md).

Data flows through the subpackages in this order; each imports only from those before it
(tests/test_layering.py checks it):

    format        the format's numbers: block sizes, format ids, bits per weight, model sizes
    kernels       the Fortran kernels, their numpy reference, QuantizedTensor / quantize / matmul
    io            checkpoint containers (GGUF, safetensors, q35f directories) and text corpora
    runtime       the Llama forward pass and text generation
    quantization  checkpoint -> q35f directory: round-to-nearest, clip search, GPTQ, calibration
    measure       perplexity, speed and memory, side-by-side comparisons
    serve         the Groq/OpenAI-compatible HTTP server and its benchmark
    integrations  bridges to other tools (lm-evaluation-harness)
    paper         the paper's tables, figures and supplementary archive
    cli           the `q35f` command, one sub-command per job

Public names are loaded on first use, so `import q35f.format.spec` or `q35f --help` does not load
the compiled kernels.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "FORMAT_VERSION": "format.spec",
    "FORMATS": "format.spec",
    "bits_per_weight": "format.spec",
    "encode": "kernels.fortran",
    "decode": "kernels.fortran",
    "pack_codes": "kernels.fortran",
    "unpack_codes": "kernels.fortran",
    "QuantConfig": "kernels.tensor",
    "QuantizedTensor": "kernels.tensor",
    "quantize": "kernels.tensor",
    "matmul": "kernels.tensor",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'q35f' has no attribute {name!r}")
