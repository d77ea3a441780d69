#!/usr/bin/env bash
# Install everything into .venv (first run only), then run the built-in example on the CPU (four to five
# minutes on an idle 2-core machine): pretrain a tiny network on digits, transfer it to a 20% mixed set
# with --lr-schedule ddclr, evaluate FID, write the report and one summary picture (demo.png).
# Output goes to ./demo-out (or the directory given as the first argument).
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
exec python -m scripts.demo "${1:-demo-out}"
