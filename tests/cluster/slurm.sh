#!/usr/bin/env bash
# A single-node SLURM on this machine for the cluster test (tests/test_cluster.py); Debian 12 / Slurm 22.05.
#
#   tests/cluster/slurm.sh install   apt-get Debian's slurmctld, slurmd, slurm-client and munge (idempotent)
#   tests/cluster/slurm.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd (no systemd)
#   tests/cluster/slurm.sh status    the daemons' pids and `sinfo`
#   tests/cluster/slurm.sh stop      stop exactly the daemons that `start` started (their recorded pids)
#
# Needs root. Everything listens on 127.0.0.1 only; state, logs and pids live in $SLURM_STATE_DIR
# (default /tmp/slurm-triage). The config goes to /etc/slurm/slurm.conf, where sbatch, squeue and sinfo look
# by default, so Snakemake's SLURM plugin and the test need no SLURM_CONF. Jobs run as root, accounting is
# off (no slurmdbd): the profile's status checks therefore use squeue, not sacct (configs/profiles/slurm).
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/slurm-triage}
CONF=/etc/slurm/slurm.conf
MUNGE_RUN=/run/munge
# Memory kept back from the node for the OS and the Snakemake process that submits the jobs (MB).
MEM_MARGIN_MB=${SLURM_MEM_MARGIN_MB:-2048}
# Slurm forgets a finished job this many seconds after it ends; squeue-based status checks must see it
# before that (>= 3 x the profile's slurm-init-seconds-before-status-checks and status polling interval).
MIN_JOB_AGE_S=300

die() { echo "slurm.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (installs packages, writes $CONF, starts daemons)"; }

alive() {  # alive NAME: the pid recorded for NAME runs NAME (not a stale pid reused by something else)
    local pidfile="$STATE/$1.pid" pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what (logs in $STATE/log)"
        sleep 0.5
    done
}

install() {
    need_root
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        echo "slurm.sh: slurmctld, slurmd, slurm-client and munge already installed"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' postinst scripts try to start services; without systemd that is refused, harmlessly.
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local host cpus sockets cores threads mem
    host=$(hostname -s)
    # `slurmd -C` prints this node's hardware as slurm.conf wants it: NodeName=... CPUs=... RealMemory=...
    local hw
    hw=$(slurmd -C | head -n 1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
    cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
    threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs/RealMemory from 'slurmd -C': $hw"
    mem=$((mem > 2 * MEM_MARGIN_MB ? mem - MEM_MARGIN_MB : mem / 2))
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF" <<EOF
# Written by tests/cluster/slurm.sh: a single-node test cluster on 127.0.0.1 (not for production).
ClusterName=triage
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups needed (containers and gVisor lack them): plain process tracking and CPU affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# CPUs and memory are consumable, so jobs' --cpus-per-task and --mem are honoured and packed.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A request no node can satisfy fails at submission instead of pending forever.
EnforcePartLimits=ALL
# Finished jobs stay visible to squeue this long (Snakemake's status checks use squeue; no accounting).
MinJobAge=$MIN_JOB_AGE_S
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need_root
    command -v slurmctld >/dev/null || die "SLURM not installed: run '$0 install' first"
    if alive slurmctld && alive slurmd && sinfo -h >/dev/null 2>&1; then
        echo "slurm.sh: already running"; return
    fi
    stop quiet
    mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/log"
    write_conf

    # munged: as its own user with Debian's key (created by the package); pid file in our state dir.
    mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key missing (reinstall munge)"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_RUN/munged.pid"
    wait_for 10 munged test -s "$MUNGE_RUN/munged.pid"
    cp "$MUNGE_RUN/munged.pid" "$STATE/munged.pid"
    wait_for 10 "a munge credential" sh -c 'munge -n | unmunge'

    # -c: a clean controller state (no jobs or node states left from an earlier run).
    slurmctld -c
    wait_for 30 slurmctld test -s "$STATE/slurmctld.pid"
    wait_for 30 "slurmctld to answer" scontrol ping
    slurmd
    wait_for 30 slurmd test -s "$STATE/slurmd.pid"
    wait_for 60 "the node to be idle" sh -c 'sinfo -h -N -o %t | grep -qx idle'
    echo "slurm.sh: single-node SLURM up ($(sinfo -h -N -o '%N %c CPUs %m MB %t'))"
}

stop() {
    local name pid quiet=${1:-}
    for name in slurmd slurmctld munged; do
        if alive "$name"; then
            pid=$(cat "$STATE/$name.pid")
            kill "$pid"
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
            [ -n "$quiet" ] || echo "slurm.sh: stopped $name (pid $pid)"
        fi
        rm -f "$STATE/$name.pid"
    done
}

status() {
    local name rc=0
    for name in munged slurmctld slurmd; do
        if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
    done
    [ "$rc" = 0 ] && sinfo
    return "$rc"
}

case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
