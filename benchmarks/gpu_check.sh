#!/usr/bin/env bash
# One command for a machine with one GPU (under 8 minutes): gpu-marked test counts, the kernels' self-check
# table, training s/kimg and peak memory, fid50k_full time, kernel micro-benchmarks -> one JSON file.
# See benchmarks/gpu_check.py.
# Run it inside the project's environment (e.g. after `source tools/venv.sh`); $PYTHON overrides python.
#   bash benchmarks/gpu_check.sh [--out gpu_check.json] [--cpu-smoke]
# Its last step records the augment pipe's cost (benchmarks/bench_augment.py) in the time left.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
