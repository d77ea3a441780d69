#!/usr/bin/env bash
# Run the learning-rate study grid (80 train.py runs, times --repeats) one after another on this machine.
#
# Usage: scripts/run_grid.sh DATA_DIR RUNS_DIR [options] [-- TRAIN_ARGS...]
#
#   DATA_DIR         holds CelebAMask-HQ1..5.zip and Mix-dataset1..5.zip
#   RUNS_DIR         each run writes under RUNS_DIR/<dataset>/<preset>[-seed<k>]/ (created as needed)
#   -n, --dry-run    print the commands (finished runs as "# finished: ..." lines) and exit; missing
#                    dataset zips are named in a warning on stderr, and the exit status stays 0
#   --gpus N         train.py --gpus (default 1)
#   --only REGEX     keep runs whose "<dataset>/<preset>" matches REGEX, e.g. 'Mix-dataset[12]/' or '/ddclr$'
#   --points LIST    evaluation kimg points (default 40,60,80,100): train.py --snap-kimg, and --kimg is
#                    the last one; a run is finished when it evaluated all of them
#   --repeats R      R replicates per cell (default 1); replicate k trains with --seed=k
#   --keep-going     after a failed run, go on with the next one (the exit status is still 1)
#   -h, --help       print this help
#   -- TRAIN_ARGS    appended to every train.py command (they come last, so they override)
#
# Finished runs are skipped; an interrupted run is continued by re-running its (identical) command, so
# after a crash just start the script again. Without --dry-run, missing dataset zips are an error before
# anything runs (exit 1). A run that exits with 75 (train.py wrote a checkpoint after SIGTERM/SIGUSR1)
# stops the grid with exit 75; re-run the script to continue. The command list comes from
# `python -m scripts.study_grid`. Environment: PYTHON (default: python) is the interpreter used for the
# grid and for train.py.
set -euo pipefail

usage() {
    sed -n '4,18p' "$0" | sed 's/^# \{0,1\}//'
}
die_usage() { echo "run_grid.sh: $1" >&2; echo "Try 'scripts/run_grid.sh --help'." >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
dry_run=0 gpus=1 only='' keep_going=0 points='' repeats=1
positional=() extra=()
while (($#)); do
    case $1 in
        -n|--dry-run)  dry_run=1 ;;
        --keep-going)  keep_going=1 ;;
        --gpus|--only|--points|--repeats)
                       [[ $# -ge 2 ]] || die_usage "$1 needs a value"
                       declare "${1#--}=$2"; shift ;;
        --gpus=*|--only=*|--points=*|--repeats=*)
                       opt=${1%%=*}; declare "${opt#--}=${1#*=}" ;;
        -h|--help)     usage; exit 0 ;;
        --)            shift; extra=("$@"); break ;;
        -*)            die_usage "unknown option $1" ;;
        *)             positional+=("$1") ;;
    esac
    shift
done
[[ ${#positional[@]} -eq 2 ]] || die_usage "expected DATA_DIR and RUNS_DIR"
[[ $repeats =~ ^[1-9][0-9]*$ ]] || die_usage "--repeats needs a whole number >= 1, got '$repeats'"
[[ -z $points || $points =~ ^[0-9]+(,[0-9]+)*$ ]] || die_usage "--points needs comma-separated whole kimg, got '$points'"
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die_usage "--gpus needs a whole number >= 1, got '$gpus'"

# The commands run from the repository root (train.py is relative), so make user paths absolute first.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
data_dir=$(abspath "${positional[0]}")
runs_dir=$(abspath "${positional[1]}")
cd "$repo"

select_args=()
[[ -n $only ]] && select_args+=(--only "$only")
grid_args=(commands "$data_dir" "$runs_dir" --gpus "$gpus" --pending --python "$python" --repeats "$repeats"
           "${select_args[@]}")
[[ -n $points ]] && grid_args+=(--points "$points")
listing=$("$python" -m scripts.study_grid "${grid_args[@]}" -- "${extra[@]}")
mapfile -t lines <<< "$listing"

# Missing datasets: a warning for a dry run (it may well come before the data), an error otherwise.
missing=$("$python" -m scripts.study_grid missing "$data_dir" "${select_args[@]}")
if [[ -n $missing ]]; then
    names=$(echo "$missing" | paste -sd ' ' -)
    if ((dry_run)); then
        echo "run_grid.sh: warning: $data_dir lacks $(echo "$missing" | wc -l) dataset(s) the runs need: $names" >&2
    else
        echo "run_grid.sh: $data_dir lacks $(echo "$missing" | wc -l) dataset(s) the runs need: $names" >&2
        exit 1
    fi
fi

if ((dry_run)); then
    [[ -d $runs_dir ]] || echo "run_grid.sh: note: $runs_dir does not exist yet (the first run creates it)" >&2
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
    rc=0
    eval "$line" < /dev/null || rc=$?
    if ((rc == 75)); then
        echo "run_grid.sh: run $i/$total was interrupted (checkpoint written); re-run this script to continue it" >&2
        exit 75
    elif ((rc != 0)); then
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
report_points=${points:+ --points $points}
echo "run_grid.sh: all selected runs finished; report with: $python -m scripts.report $runs_dir --out REPORT_DIR$report_points"
