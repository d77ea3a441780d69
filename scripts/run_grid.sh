#!/usr/bin/env bash
# Run the learning-rate study grid (80 train.py runs) one after another on this machine.
#
#   scripts/run_grid.sh DATA_DIR RUNS_DIR [--dry-run] [--gpus N] [--only REGEX] [--keep-going] [-- TRAIN_ARGS...]
#
# DATA_DIR holds CelebAMask-HQ1..5.zip and Mix-dataset1..5.zip; each run writes under
# RUNS_DIR/<dataset>/<preset>/. Runs whose metric file already has all four kimg points are skipped;
# an interrupted run is continued by re-running its (identical) command, so this script can simply be
# started again after a crash. The command list comes from `python -m scripts.study_grid`.
# Environment: PYTHON (default: python) is the interpreter used for the grid and for train.py.
set -euo pipefail

usage() {
    sed -n '4p' "$0" | sed 's/^# *//'
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
dry_run=0 gpus=1 only='' keep_going=0
positional=() extra=()
while (($#)); do
    case $1 in
        -n|--dry-run)  dry_run=1 ;;
        --keep-going)  keep_going=1 ;;
        --gpus)        [[ $# -ge 2 ]] || { echo "run_grid.sh: --gpus needs a value" >&2; exit 2; }; gpus=$2; shift ;;
        --gpus=*)      gpus=${1#*=} ;;
        --only)        [[ $# -ge 2 ]] || { echo "run_grid.sh: --only needs a value" >&2; exit 2; }; only=$2; shift ;;
        --only=*)      only=${1#*=} ;;
        -h|--help)     usage; exit 0 ;;
        --)            shift; extra=("$@"); break ;;
        -*)            echo "run_grid.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)             positional+=("$1") ;;
    esac
    shift
done
if [[ ${#positional[@]} -ne 2 ]]; then
    echo "run_grid.sh: expected DATA_DIR and RUNS_DIR" >&2; usage >&2; exit 2
fi

# The commands run from the repository root (train.py is relative), so make user paths absolute first.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
data_dir=$(abspath "${positional[0]}")
runs_dir=$(abspath "${positional[1]}")
cd "$repo"

grid_args=(commands "$data_dir" "$runs_dir" --gpus "$gpus" --pending --python "$python")
[[ -n $only ]] && grid_args+=(--only "$only")
listing=$("$python" -m scripts.study_grid "${grid_args[@]}" -- "${extra[@]}")
mapfile -t lines <<< "$listing"

if ((dry_run)); then
    printf '%s\n' "${lines[@]}"
    exit 0
fi

total=${#lines[@]} i=0 failed=()
for line in "${lines[@]}"; do
    i=$((i + 1))
    if [[ $line == \#* ]]; then
        echo "[$i/$total] skip: ${line#\# }"
        continue
    fi
    echo "[$i/$total] $line"
    # stdin from /dev/null: a training run must not read the rest of this loop's input.
    if ! eval "$line" < /dev/null; then
        failed+=("$line")
        echo "run_grid.sh: run $i/$total failed; re-run this script to continue it" >&2
        ((keep_going)) || exit 1
    fi
done
if ((${#failed[@]})); then
    echo "run_grid.sh: ${#failed[@]} run(s) failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "run_grid.sh: all selected runs finished; report with: $python -m scripts.report $runs_dir --out REPORT_DIR"
