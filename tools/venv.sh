#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and print its python path.
# Sourced by demo.sh and test.sh; safe to run repeatedly: it reinstalls only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[venv] creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "[venv] installing dependencies (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    # The CUDA 13 build of torch; on a machine with a GPU the same wheel runs the CUDA kernels.
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi

# nvcc for the lazily built CUDA extensions (torch looks at CUDA_HOME).
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
fi
export PATH="$VENV/bin:${CUDA_HOME:+$CUDA_HOME/bin:}$PATH"
