# The two commands of the README. Both do all the set-up on a fresh machine (scripts/setup.sh).
VENV ?= .venv

.PHONY: setup demo test

setup:
	Q35F_VENV=$(VENV) bash scripts/setup.sh

# Main job: quantize the embedded SmolLM2-135M to fp32/int8/int4/q35/int3 and compare them.
demo: setup
	$(VENV)/bin/q35f compare

test: setup
	$(VENV)/bin/python -m pytest
