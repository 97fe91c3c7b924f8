#!/usr/bin/env bash
# A real single-node Slurm for the tests, without systemd (see ../shared/docs/slurm-local.md for what it is based on).
#   bash scripts/slurm_local.sh install        apt-get the Debian packages (root; a no-op when installed)
#   bash scripts/slurm_local.sh start [DIR]    munged + slurmctld + one slurmd per node, state/logs under DIR
#                                              (default: a new temp folder); prints DIR; returns once every node is
#                                              idle. SLURM_LOCAL_NODES=N (default 2): N nodes node1..nodeN on this
#                                              one host, each its own slurmd (`slurmd -N nodeK`, own port, spool,
#                                              pid and log through %n), each declaring this host's CPUs
#                                              (SlurmdParameters=config_overrides), all at NodeAddr 127.0.0.1
#   bash scripts/slurm_local.sh stop DIR       scontrol shutdown, wait for the daemons, stop the munged it started
# Writes /etc/slurm/slurm.conf (so clients need no SLURM_CONF); start needs root. Ports: SLURM_LOCAL_CTLD_PORT
# (6817) and SLURM_LOCAL_SLURMD_PORT (6818, node k listens on 6818 + k - 1). The scheduler settings make a requeued
# job rerun ~11 s later.
set -euo pipefail

PKGS=(munge slurmctld slurmd slurm-client)

installed() { command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
              && command -v munged >/dev/null; }

# exited, or a zombie that this container's PID 1 has not reaped yet
gone() { [ ! -r "/proc/$1/stat" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]; }

wait_gone() {
    local pid=$1 i
    for i in $(seq 1 100); do gone "$pid" && return 0; sleep 0.1; done
    return 1
}

cmd_install() {
    installed && return 0
    [ "$(id -u)" = 0 ] || { echo "slurm_local.sh install: needs root (apt-get)" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${PKGS[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PKGS[@]}" >/dev/null; }
    installed
}

cmd_start() {
    installed || { echo "slurm_local.sh start: Slurm is not installed (bash $0 install)" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "slurm_local.sh start: needs root" >&2; exit 1; }
    local dir=${1:-$(mktemp -d /tmp/slurm-local.XXXXXX)}
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    # munge as the munge user (as root it refuses the key); /run/munge does not exist in a container
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
        cp /run/munge/munged.pid "$dir/munged.pid"  # ours: stop kills it
        for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    local cpus mem nodes=${SLURM_LOCAL_NODES:-2} port=${SLURM_LOCAL_SLURMD_PORT:-6818}
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n1)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))
    mkdir -p /etc/slurm
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=localci
SlurmctldHost=localhost
SlurmctldPort=${SLURM_LOCAL_CTLD_PORT:-6817}
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2,bf_interval=1
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
$(for k in $(seq 1 "$nodes"); do
    echo "NodeName=node$k NodeHostname=localhost NodeAddr=127.0.0.1 Port=$(( port + k - 1 )) CPUs=$cpus" \
         "RealMemory=$mem State=UNKNOWN"
  done)
PartitionName=debug Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -c
    for k in $(seq 1 "$nodes"); do slurmd -N "node$k"; done
    for _ in $(seq 1 300); do
        if [ "$(sinfo -h -N -o %t 2>/dev/null | grep -cx idle)" = "$nodes" ]; then echo "$dir"; return 0; fi
        sleep 0.1
    done
    echo "slurm_local.sh start: the $nodes nodes did not become idle in 30 s; logs in $dir/log" >&2
    cmd_stop "$dir"
    exit 1
}

cmd_stop() {
    local dir=${1:?usage: slurm_local.sh stop DIR} pids=() f
    for f in "$dir"/slurmctld.pid "$dir"/slurmd-*.pid; do [ -s "$f" ] && pids+=("$(cat "$f")"); done
    scontrol shutdown >/dev/null 2>&1 || true
    local ok=0 p
    for p in "${pids[@]}"; do
        wait_gone "$p" || { kill -TERM "$p" 2>/dev/null; wait_gone "$p" || { kill -KILL "$p" 2>/dev/null || true; }; }
    done
    if [ -s "$dir/munged.pid" ]; then
        p=$(cat "$dir/munged.pid")
        kill -TERM "$p" 2>/dev/null || true
        wait_gone "$p" || ok=1
    fi
    return $ok
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 install|start [DIR]|stop DIR" >&2; exit 2 ;;
esac
