#!/usr/bin/env bash
# Install everything into .venv (first run only) and run the test suite, CUDA-extension build included.
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
exec python -m pytest "$@"
