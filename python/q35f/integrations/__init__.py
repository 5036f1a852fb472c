"""Bridges to other tools; imports everything upstream."""
