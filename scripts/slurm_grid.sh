#!/usr/bin/env bash
#SBATCH --job-name=lr-study
#SBATCH --time=06:00:00
#SBATCH --cpus-per-task=8
#SBATCH --mem=48G
#
# Submit the learning-rate study grid as a Slurm job array: one array task per run, task id = grid index.
#
#   scripts/slurm_grid.sh DATA_DIR RUNS_DIR [--dry-run] [--gpus N] [--only REGEX] [-- TRAIN_ARGS...]
#
# Only runs that are not finished yet are submitted, and each task checks again before it starts, so
# re-submitting after failures or pre-emption continues the interrupted runs (train.py continues a run
# when its command is repeated). --dry-run prints the sbatch command and each task's command.
#
# The #SBATCH lines above are defaults; these environment variables override them (sbatch options on
# the command line win over #SBATCH lines):
#   STUDY_TIME          --time            (default 06:00:00, about 2x a 1-V100 run; see docs/study.md)
#   STUDY_CPUS          --cpus-per-task   (default 8)
#   STUDY_MEM           --mem             (default 48G)
#   STUDY_PARTITION     --partition       (default: the cluster's)
#   STUDY_ACCOUNT       --account         (default: none)
#   STUDY_MAX_PARALLEL  at most this many tasks at once (--array=...%N; default: no limit)
#   STUDY_SBATCH_ARGS   further sbatch arguments, split on whitespace (e.g. "--qos=long --constraint=v100")
#   STUDY_LOG_DIR       task logs (default RUNS_DIR/slurm-logs, files <jobid>_<task>.out)
#   PYTHON              interpreter for the grid and train.py (default: python), inherited by the tasks
# GPUs per task come from --gpus (requested as --gres=gpu:N).
set -euo pipefail

usage() {
    sed -n '9p' "$0" | sed 's/^# *//'
}

python=${PYTHON:-python}
dry_run=0 gpus=1 only='' task=0
positional=() extra=()
while (($#)); do
    case $1 in
        -n|--dry-run)  dry_run=1 ;;
        --task)        task=1 ;;  # internal: set in the submitted job, runs the task SLURM_ARRAY_TASK_ID
        --gpus)        [[ $# -ge 2 ]] || { echo "slurm_grid.sh: --gpus needs a value" >&2; exit 2; }; gpus=$2; shift ;;
        --gpus=*)      gpus=${1#*=} ;;
        --only)        [[ $# -ge 2 ]] || { echo "slurm_grid.sh: --only needs a value" >&2; exit 2; }; only=$2; shift ;;
        --only=*)      only=${1#*=} ;;
        -h|--help)     usage; exit 0 ;;
        --)            shift; extra=("$@"); break ;;
        -*)            echo "slurm_grid.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)             positional+=("$1") ;;
    esac
    shift
done
if [[ ${#positional[@]} -ne 2 ]]; then
    echo "slurm_grid.sh: expected DATA_DIR and RUNS_DIR" >&2; usage >&2; exit 2
fi
data_dir=${positional[0]} runs_dir=${positional[1]}

# ---------------------------------------------------------------------------
# Inside the array job: sbatch --chdir put us in the repository root; run this task's command.
if ((task)); then
    : "${SLURM_ARRAY_TASK_ID:?slurm_grid.sh --task must run inside a Slurm array job}"
    line=$("$python" -m scripts.study_grid commands "$data_dir" "$runs_dir" --gpus "$gpus" \
        --index "$SLURM_ARRAY_TASK_ID" --pending --python "$python" -- "${extra[@]}")
    if [[ $line == \#* ]]; then
        echo "task $SLURM_ARRAY_TASK_ID: ${line#\# }; nothing to do"
        exit 0
    fi
    echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $line"
    eval "exec $line"
fi

# ---------------------------------------------------------------------------
# Submission. Tasks run from the repository root, so user paths become absolute.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
data_dir=$(abspath "$data_dir")
runs_dir=$(abspath "$runs_dir")
log_dir=$(abspath "${STUDY_LOG_DIR:-$runs_dir/slurm-logs}")
cd "$repo"

only_args=()
[[ -n $only ]] && only_args=(--only "$only")
array=$("$python" -m scripts.study_grid indices "${only_args[@]}" --pending-in "$runs_dir")
if [[ -z $array ]]; then
    echo "slurm_grid.sh: every selected run is already finished in $runs_dir; nothing to submit"
    exit 0
fi
[[ -n ${STUDY_MAX_PARALLEL:-} ]] && array+="%$STUDY_MAX_PARALLEL"

sbatch_cmd=(sbatch --array="$array" --gres="gpu:$gpus" --chdir="$repo" --output="$log_dir/%A_%a.out")
[[ -n ${STUDY_TIME:-} ]]      && sbatch_cmd+=(--time="$STUDY_TIME")
[[ -n ${STUDY_CPUS:-} ]]      && sbatch_cmd+=(--cpus-per-task="$STUDY_CPUS")
[[ -n ${STUDY_MEM:-} ]]       && sbatch_cmd+=(--mem="$STUDY_MEM")
[[ -n ${STUDY_PARTITION:-} ]] && sbatch_cmd+=(--partition="$STUDY_PARTITION")
[[ -n ${STUDY_ACCOUNT:-} ]]   && sbatch_cmd+=(--account="$STUDY_ACCOUNT")
if [[ -n ${STUDY_SBATCH_ARGS:-} ]]; then
    read -r -a more <<< "$STUDY_SBATCH_ARGS"
    sbatch_cmd+=("${more[@]}")
fi
sbatch_cmd+=("$repo/scripts/slurm_grid.sh" --task "$data_dir" "$runs_dir" --gpus "$gpus" -- "${extra[@]}")

if ((dry_run)); then
    quote() {  # shell-quote only what needs it, so the printed line stays readable and copy-pastable
        local out=() a
        for a in "$@"; do
            if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a"); else out+=("$(printf '%q' "$a")"); fi
        done
        echo "${out[*]}"
    }
    quote "${sbatch_cmd[@]}"
    # Per-task commands, as each task would print them (finished runs are not in the array).
    listing=$("$python" -m scripts.study_grid commands "$data_dir" "$runs_dir" --gpus "$gpus" "${only_args[@]}" \
        --pending --python "$python" -- "${extra[@]}")
    indices=$("$python" -m scripts.study_grid indices "${only_args[@]}")
    mapfile -t lines <<< "$listing"
    IFS=, read -r -a idx <<< "$indices"
    for k in "${!lines[@]}"; do
        printf '[task %s] %s\n' "${idx[$k]}" "${lines[$k]}"
    done
    exit 0
fi

command -v sbatch > /dev/null || { echo "slurm_grid.sh: sbatch not found (is this a Slurm login node?)" >&2; exit 1; }
mkdir -p "$log_dir"
"${sbatch_cmd[@]}"
