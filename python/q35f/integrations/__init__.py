"""Bridges to other tools (lm-evaluation-harness). Imports everything upstream."""
