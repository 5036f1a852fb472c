"""Checkpoint -> q35f directory: the streaming converter (convert.py) and the recipes that choose
better parameters and levels than round-to-nearest (clip search, pairing, GPTQ, calibration).
Imports format, kernels, io and runtime (calibration runs the float model)."""
