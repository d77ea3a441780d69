#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's packages: a recipe to read and a script to run.
#
# Usage (as root, on Debian; tested on Debian 12 with Slurm 22.05):
#   tools/slurm_local.sh install   apt-get install slurmctld slurmd slurm-client munge
#   tools/slurm_local.sh start     write /etc/slurm/slurm.conf and gres.conf, start munged, slurmctld and
#                                  slurmd, and wait (at most SLURM_LOCAL_WAIT seconds, default 60) until
#                                  the node is idle
#   tools/slurm_local.sh stop      stop the three daemons
#   tools/slurm_local.sh status    sinfo's view of the node
#
# The node: this host under its short name, all its CPUs, memory from /proc/meminfo, one partition
# "local" (the default), and a GRES of two typed GPUs (gpu:a100:2) that exist only on paper, so jobs
# that ask for --gres=gpu:1 or --gres=gpu:a100:1 are scheduled even without a GPU. Plain Linux process
# tracking (proctrack/linuxproc, task/none, no cgroup plugin), so it also runs in containers without
# systemd or a writable cgroup tree. Daemons and jobs run as root: a test cluster, not a shared one.
# Logs and state: /var/log/slurm/ and /var/lib/slurm/. Try it: sbatch --wrap 'hostname' --gres=gpu:1
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
NODE=$(hostname -s)

die() { echo "slurm_local.sh: $1" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, writes /etc/slurm and starts daemons)"

install_packages() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512 ))  # leave some for the OS
    mkdir -p "$CONF_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"
    # SlurmctldHost: the name the node is known by, reached on loopback whatever the network looks like.
    cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by tools/slurm_local.sh: a one-node test cluster.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again cred_expire seconds after the requeue (default 120 s).
AuthInfo=cred_expire=5
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: processes are tracked through /proc, tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Quick turnaround for tests: poll often, and let a requeued job start again at once.
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=100000
MessageTimeout=20
KillWait=30
ReturnToService=2
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:a100:2 State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # Two GPUs of type a100 that are empty placeholder files: slurmd counts a GPU per device file
    # (without File= it reports none and drains the node), and nothing ever opens them.
    mkdir -p "$STATE_DIR/fake-gpu"
    touch "$STATE_DIR/fake-gpu/gpu0" "$STATE_DIR/fake-gpu/gpu1"
    cat > "$CONF_DIR/gres.conf" <<EOF
NodeName=$NODE Name=gpu Type=a100 File=$STATE_DIR/fake-gpu/gpu[0-1]
EOF
}

start_daemons() {
    write_config
    # munge authenticates every Slurm message; the package made /etc/munge/munge.key.
    mkdir -p /run/munge && chown munge:munge /run/munge
    munge -n 2> /dev/null | unmunge > /dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
    # -c: a clean start; jobs and node states (e.g. a drain) of an earlier start are forgotten.
    pgrep -x slurmctld > /dev/null || /usr/sbin/slurmctld -c
    pgrep -x slurmd > /dev/null || /usr/sbin/slurmd
    wait_idle
}

wait_idle() {
    local limit=${SLURM_LOCAL_WAIT:-60} state=''
    for ((i = 0; i < limit; i++)); do
        state=$(sinfo -h -n "$NODE" -o %T 2> /dev/null || true)
        if [[ $state == idle ]]; then
            echo "slurm_local.sh: node $NODE is idle ($(nproc) CPUs, gres gpu:a100:2)"
            return 0
        fi
        sleep 1
    done
    echo "slurm_local.sh: node $NODE is not idle after ${limit}s (state: '${state:-unknown}'); last log lines:" >&2
    tail -n 5 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
}

stop_daemons() {
    # scontrol shutdown stops slurmctld and every slurmd; the pid files catch a daemon that did not
    # hear it. munged goes last (the others need it to shut down) and is waited for, so that a start
    # right after a stop finds no half-dead munged.
    scontrol shutdown > /dev/null 2>&1 || true
    stop_pidfile /run/slurmctld.pid
    stop_pidfile /run/slurmd.pid
    stop_pidfile /run/munge/munged.pid
    echo "slurm_local.sh: stopped"
}

stop_pidfile() {  # SIGTERM the process in pid file $1 if it runs; after 30 s, SIGKILL
    local pid
    pid=$(cat "$1" 2> /dev/null) || return 0
    for ((i = 0; i < 30; i++)); do
        kill "$pid" 2> /dev/null || return 0
        sleep 1
    done
    echo "slurm_local.sh: process $pid ($1) ignored SIGTERM for 30 s; killing it" >&2
    kill -KILL "$pid" 2> /dev/null || true
}

case ${1:-} in
    install) install_packages ;;
    start)   start_daemons ;;
    stop)    stop_daemons ;;
    status)  sinfo -N -o '%N %T %c %m %G' ;;
    *)       sed -n '4,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
