#!/usr/bin/env bash
#SBATCH --job-name=lr-study
#SBATCH --time=06:00:00
#SBATCH --cpus-per-task=8
#SBATCH --mem=48G
#
# Submit the learning-rate study grid as a Slurm job array: one array task per run, task id = grid index
# (replicate k of cell c has index k*80 + c).
#
# Usage: scripts/slurm_grid.sh DATA_DIR RUNS_DIR [--dry-run] [--gpus N] [--only REGEX] [--points LIST]
#                              [--repeats R] [-- TRAIN_ARGS...]
#
# Options are those of scripts/run_grid.sh (see its --help). Only runs that are not finished yet are
# submitted, and each task checks again before it starts, so re-submitting after failures continues the
# interrupted runs (train.py continues a run when its command is repeated). --dry-run prints the sbatch
# command and each task's command.
#
# Pre-emption and time limits: the job asks Slurm for SIGUSR1 STUDY_SIGNAL_SECONDS (default 300) before
# its end (sbatch --signal=B:USR1@300 --requeue; Slurm may send it up to 30 s earlier); the task forwards
# it to train.py, which writes a checkpoint and exits with 75; the task then requeues itself
# (scontrol requeue), and the requeued task continues the run. SIGTERM (scancel, or a pre-emption, which
# Slurm requeues itself) reaches train.py from Slurm directly: it checkpoints too, and the task is not
# requeued.
#
# The #SBATCH lines above are defaults; these environment variables override them (sbatch options on
# the command line win over #SBATCH lines):
#   STUDY_TIME          --time            (default 06:00:00, about 2x a 1-V100 run; see docs/study.md)
#   STUDY_CPUS          --cpus-per-task   (default 8)
#   STUDY_MEM           --mem             (default 48G)
#   STUDY_PARTITION     --partition       (default: the cluster's)
#   STUDY_ACCOUNT       --account         (default: none)
#   STUDY_MAX_PARALLEL  at most this many tasks at once (--array=...%N; default: no limit)
#   STUDY_SIGNAL_SECONDS  seconds before the time limit at which SIGUSR1 is sent (default 300)
#   STUDY_SBATCH_ARGS   further sbatch arguments, split on whitespace (e.g. "--qos=long --constraint=v100")
#   STUDY_LOG_DIR       task logs (default RUNS_DIR/slurm-logs, files <jobid>_<task>.out)
#   STUDY_GRES          --gres: the GPUs each task asks for (default gpu:N, N from --gpus; a typed
#                       form such as gpu:a100:1 where the cluster names its GPU types; set but empty:
#                       no --gres, e.g. for a CPU partition)
#   PYTHON              interpreter for the grid and train.py (default: python), inherited by the tasks
set -euo pipefail

usage() {
    sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}
die_usage() { echo "slurm_grid.sh: $1" >&2; echo "Try 'scripts/slurm_grid.sh --help'." >&2; exit 2; }

python=${PYTHON:-python}
dry_run=0 gpus=1 only='' task=0 points='' repeats=1
positional=() extra=()
while (($#)); do
    case $1 in
        -n|--dry-run)  dry_run=1 ;;
        --task)        task=1 ;;  # internal: set in the submitted job, runs the task SLURM_ARRAY_TASK_ID
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
data_dir=${positional[0]} runs_dir=${positional[1]}
# Options that decide which runs exist and what they evaluate: the same for submission and every task.
grid_opts=(--repeats "$repeats")
[[ -n $points ]] && grid_opts+=(--points "$points")

# ---------------------------------------------------------------------------
# Inside the array job: sbatch --chdir put us in the repository root; run this task's command.
run_task() {
    : "${SLURM_ARRAY_TASK_ID:?slurm_grid.sh --task must run inside a Slurm array job}"
    local line child='' rc warned=0 signalled
    # Slurm's time-limit warning (--signal=B:USR1) reaches only this shell, and may come at any time
    # (slurmctld checks limits every 30 s, so up to that much early): note it from the start, and pass
    # it on to train.py once train.py runs.
    trap 'warned=1 signalled=1; [[ -z $child ]] || kill -USR1 "$child" 2> /dev/null || true' USR1
    line=$("$python" -m scripts.study_grid commands "$data_dir" "$runs_dir" --gpus "$gpus" "${grid_opts[@]}" \
        --index "$SLURM_ARRAY_TASK_ID" --pending --python "$python" -- "${extra[@]}")
    if [[ $line == \#* ]]; then
        echo "task $SLURM_ARRAY_TASK_ID: ${line#\# }; nothing to do"
        return 0
    fi
    if ((warned)); then
        requeue "the time-limit warning came before train.py started"
        return 0
    fi
    echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $line"
    # train.py runs as a child (not exec) so that this shell survives it and can requeue the task.
    eval "exec $line" < /dev/null &   # exec: $! is train.py itself, not a subshell around it
    child=$!
    if ((warned)); then kill -USR1 "$child" 2> /dev/null || true; fi  # it came while train.py was being started
    # On pre-emption or scancel Slurm sends SIGTERM to every process of the job, train.py included:
    # only keep waiting for it (a second, forwarded SIGTERM could cut its checkpoint short).
    trap 'signalled=1' TERM
    while :; do
        rc=0 signalled=0
        wait "$child" || rc=$?
        ((signalled)) || break  # a trapped signal interrupts wait; bash keeps the child's status for the next wait
    done
    trap - USR1 TERM
    # Only the time-limit warning requeues: after scancel the task must stay cancelled, and a job
    # pre-empted with --requeue is requeued by Slurm itself.
    if ((warned && rc == 75)); then
        requeue "train.py checkpointed after a signal"
    elif ((warned && rc == 128 + $(kill -l USR1))); then  # it came before train.py could catch it
        requeue "train.py was stopped by the warning before it could checkpoint (it continues from its last one)"
    else
        return "$rc"
    fi
}

requeue() {
    # This task only: the first task's SLURM_JOB_ID is also the array's id, which names every task.
    local id=${SLURM_ARRAY_JOB_ID:?SLURM_ARRAY_JOB_ID is not set}_$SLURM_ARRAY_TASK_ID
    echo "task $SLURM_ARRAY_TASK_ID: $1; requeueing $id"
    scontrol requeue "$id"
}
if ((task)); then
    run_task
    exit $?
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
missing=$("$python" -m scripts.study_grid missing "$data_dir" "${only_args[@]}")
if [[ -n $missing ]]; then
    names=$(echo "$missing" | paste -sd ' ' -)
    if ((dry_run)); then
        echo "slurm_grid.sh: warning: $data_dir lacks dataset(s) the runs need: $names" >&2
    else
        echo "slurm_grid.sh: $data_dir lacks dataset(s) the runs need: $names" >&2
        exit 1
    fi
fi
array=$("$python" -m scripts.study_grid indices "${only_args[@]}" "${grid_opts[@]}" --pending-in "$runs_dir")
if [[ -z $array ]]; then
    echo "slurm_grid.sh: every selected run is already finished in $runs_dir; nothing to submit"
    exit 0
fi
[[ -n ${STUDY_MAX_PARALLEL:-} ]] && array+="%$STUDY_MAX_PARALLEL"

signal_s=${STUDY_SIGNAL_SECONDS:-300}
[[ $signal_s =~ ^[0-9]+$ ]] || { echo "slurm_grid.sh: STUDY_SIGNAL_SECONDS must be whole seconds, got '$signal_s'" >&2; exit 2; }
sbatch_cmd=(sbatch --array="$array" --chdir="$repo" --output="$log_dir/%A_%a.out"
            --signal="B:USR1@$signal_s" --requeue --open-mode=append)
gres=${STUDY_GRES-gpu:$gpus}  # unset: the default; set but empty: no GRES request
[[ $gres =~ ^[^[:space:]]*$ ]] || { echo "slurm_grid.sh: STUDY_GRES must not contain spaces, got '$gres'" >&2; exit 2; }
[[ -n $gres ]] && sbatch_cmd+=(--gres="$gres")
[[ -n ${STUDY_TIME:-} ]]      && sbatch_cmd+=(--time="$STUDY_TIME")
[[ -n ${STUDY_CPUS:-} ]]      && sbatch_cmd+=(--cpus-per-task="$STUDY_CPUS")
[[ -n ${STUDY_MEM:-} ]]       && sbatch_cmd+=(--mem="$STUDY_MEM")
[[ -n ${STUDY_PARTITION:-} ]] && sbatch_cmd+=(--partition="$STUDY_PARTITION")
[[ -n ${STUDY_ACCOUNT:-} ]]   && sbatch_cmd+=(--account="$STUDY_ACCOUNT")
if [[ -n ${STUDY_SBATCH_ARGS:-} ]]; then
    read -r -a more <<< "$STUDY_SBATCH_ARGS"
    sbatch_cmd+=("${more[@]}")
fi
sbatch_cmd+=("$repo/scripts/slurm_grid.sh" --task "$data_dir" "$runs_dir" --gpus "$gpus" "${grid_opts[@]}"
            -- "${extra[@]}")

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
        "${grid_opts[@]}" --pending --python "$python" -- "${extra[@]}")
    indices=$("$python" -m scripts.study_grid indices "${only_args[@]}" "${grid_opts[@]}")
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
