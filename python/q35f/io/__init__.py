"""Containers on disk, each reader next to its writer: GGUF files, Hugging Face safetensors
directories, q35f directories; plus the real text corpora used for calibration and perplexity.
Imports q35f.format and q35f.kernels."""
