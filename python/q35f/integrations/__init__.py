"""Bridges to other tools (lm-evaluation-harness, transformers). Imports everything upstream."""
