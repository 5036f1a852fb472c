"""Measuring models honestly: perplexity (one protocol for every caller), speed and memory in fresh
processes, side-by-side comparisons, kernel benchmarks, and where/when each number was taken.
Imports everything upstream (format .. quantization)."""
