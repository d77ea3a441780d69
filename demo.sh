#!/usr/bin/env bash
# Install everything into .venv (first run only) and run the built-in example end to end on the CPU:
# build a small dataset, train a few kimg with --lr-schedule ddclr, evaluate FID at two kimg points,
# and write the report. Output goes to ./demo-out (or the directory given as the first argument).
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
exec python -m scripts.demo "${1:-demo-out}"
