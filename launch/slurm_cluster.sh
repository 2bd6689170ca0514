#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged, slurmctld, slurmd), for the tests and for
# trying launch/slurm.sbatch. Everything it writes lives under one directory.
set -euo pipefail
PROG=launch/slurm_cluster.sh
EXIT_CANNOT=4  # this machine cannot run the cluster (not root, packages missing); nothing was started
DIR=${DEQDIST_SLURM_DIR:-${TMPDIR:-/tmp}/deqdist-slurm}
PACKAGES=(slurm-wlm munge)
DAEMONS=(munged slurmctld slurmd)

usage() {
  cat <<USAGE
usage: $PROG start|stop|status [--dir DIR] [--dry-run]

Runs a one-node SLURM cluster with this machine's CPUs: munged, slurmctld and slurmd
as root, with their config, state, logs and sockets under DIR (default \$DEQDIST_SLURM_DIR,
else \${TMPDIR:-/tmp}/deqdist-slurm). Debian's ${PACKAGES[*]} packages are installed with
apt-get when they are missing and this runs as root. Ports and the first job id are chosen
at start, so clusters in different DIRs do not collide.

  start     install what is missing, write DIR/slurm.conf, start the daemons, wait until
            the node is idle, print 'export SLURM_CONF=DIR/slurm.conf' (already running: no-op)
  stop      cancel this cluster's jobs, stop the daemons it started (their pid files in DIR)
  status    key=value lines: each daemon's pid or 'stopped', the node state; exit 0 if all run

options:
  --dir DIR    where the cluster lives (start, stop and status must agree)
  --dry-run    start: print the config and the commands; run nothing
  -h, --help   this help

exit codes: 0 done; 2 bad arguments; 3 a daemon did not start or the node never became idle
(the line names the log); $EXIT_CANNOT this machine cannot run it (not root, or no apt-get, and the
packages are missing); status: 3 when not running.

example:
  sudo $PROG start --dir /tmp/slurm && export SLURM_CONF=/tmp/slurm/slurm.conf
  sbatch --ntasks-per-node=2 --cpus-per-task=1 launch/slurm.sbatch -- --run-dir runs/x
USAGE
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
fail() { echo "$PROG: error: $*" >&2; exit 3; }
cannot() { echo "$PROG: cannot run a SLURM cluster here: $*" >&2; exit $EXIT_CANNOT; }

missing_tools() {
  local t out=()
  for t in munged mungekey slurmctld slurmd sbatch srun scontrol scancel squeue; do
    command -v "$t" >/dev/null || out+=("$t")
  done
  echo "${out[*]}"
}

install() {
  local missing
  missing=$(missing_tools)
  [[ -z $missing ]] && return 0
  command -v apt-get >/dev/null || cannot "$missing not installed and there is no apt-get; install SLURM and munge by hand"
  echo "# installing ${PACKAGES[*]} (missing: $missing)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
      >"$DIR/log/apt.log" 2>&1; then
    cannot "apt-get install ${PACKAGES[*]} failed (log $DIR/log/apt.log)"
  fi
  missing=$(missing_tools)
  [[ -z $missing ]] || cannot "after installing ${PACKAGES[*]}, still missing: $missing"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_conf() {  # write_conf FILE: the one-node cluster's slurm.conf
  local host cpus
  host=$(hostname -s)
  cpus=$(nproc --all)
  cat >"$1" <<CONF
# one-node cluster written by $PROG
ClusterName=deqdist
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups in a container: track processes by parent, bind no CPUs
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# finished jobs stay visible to 'scontrol show job' for 10 minutes
MinJobAge=600
KillWait=10
# each cluster starts at its own job id: JAX derives its coordinator port from it
FirstJobId=$((1000 + RANDOM % 30000))
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

pid_of() {  # the pid in DIR/run/NAME.pid if that process still runs
  local f=$DIR/run/$1.pid p
  [[ -f $f ]] || return 1
  p=$(<"$f")
  [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && echo "$p"
}

node_state() {  # the node's State= field (scontrol's key=value record), empty if unknown
  local rec
  rec=$(SLURM_CONF=$DIR/slurm.conf timeout 10 scontrol -o show node "$(hostname -s)" 2>/dev/null) || return 0
  tr ' ' '\n' <<<"$rec" | sed -n 's/^State=//p'
}

status() {
  local d p up=0
  for d in "${DAEMONS[@]}"; do
    if p=$(pid_of "$d"); then echo "$d=$p"; up=$((up + 1)); else echo "$d=stopped"; fi
  done
  echo "node=$( [[ $up == 3 ]] && node_state)"
  echo "slurm_conf=$DIR/slurm.conf"
  [[ $up == 3 ]] || return 3
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD until it succeeds
  local secs=$1 what=$2 t
  shift 2
  for ((t = 0; t < secs * 4; t++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  fail "$what after $secs s"
}

node_ready() { [[ $(node_state) =~ ^IDLE|^MIXED|^ALLOCATED ]]; }

start() {
  if status >/dev/null; then
    echo "# already running in $DIR"
    echo "export SLURM_CONF=$DIR/slurm.conf"
    return 0
  fi
  if [[ $DRY_RUN == 1 ]]; then
    write_conf /dev/stdout
    echo "munged --force --socket $DIR/munge/munge.socket --key-file $DIR/munge/munge.key ..."
    echo "slurmctld -c -f $DIR/slurm.conf"
    echo "slurmd -f $DIR/slurm.conf -N $(hostname -s)"
    return 0
  fi
  if [[ $(id -u) != 0 ]]; then
    local missing
    missing=$(missing_tools)
    [[ -z $missing ]] || cannot "$missing not installed and not root; install Debian's ${PACKAGES[*]} or run this as root"
    cannot "slurmd starts job steps as their user and must run as root"
  fi
  mkdir -p "$DIR"/{munge,state,spool,run,log}
  chmod 700 "$DIR/munge"
  install
  # JAX's SLURM detection dials the first node of the job by name.
  getent hosts "$(hostname -s)" >/dev/null || cannot "this host's name '$(hostname -s)' does not resolve; add it to /etc/hosts"
  stop_daemons  # leftovers of a half-started cluster in DIR
  [[ -f $DIR/munge/munge.key ]] || mungekey --create --keyfile "$DIR/munge/munge.key" --force
  munged --force --socket "$DIR/munge/munge.socket" --key-file "$DIR/munge/munge.key" \
    --pid-file "$DIR/run/munged.pid" --log-file "$DIR/log/munged.log" --seed-file "$DIR/munge/munged.seed" ||
    fail "munged did not start (log $DIR/log/munged.log)"
  write_conf "$DIR/slurm.conf"
  slurmctld -c -f "$DIR/slurm.conf" || fail "slurmctld did not start (log $DIR/log/slurmctld.log)"
  wait_for 30 "slurmctld did not answer (log $DIR/log/slurmctld.log)" \
    env SLURM_CONF="$DIR/slurm.conf" timeout 5 scontrol ping
  slurmd -f "$DIR/slurm.conf" -N "$(hostname -s)" || fail "slurmd did not start (log $DIR/log/slurmd.log)"
  wait_for 60 "the node did not become idle (logs $DIR/log/slurmd.log, slurmctld.log)" node_ready
  echo "# SLURM $(slurmctld -V | sed 's/[^0-9.]*//') cluster up in $DIR ($(nproc --all) CPUs, partition cpu)"
  echo "export SLURM_CONF=$DIR/slurm.conf"
}

stop_daemons() {
  local d p t
  for d in slurmd slurmctld munged; do
    p=$(pid_of "$d") || continue
    kill -TERM "$p" 2>/dev/null || true
    for ((t = 0; t < 80; t++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    rm -f "$DIR/run/$d.pid"
  done
}

jobs_left() {  # job ids this cluster still knows as pending or running
  SLURM_CONF=$DIR/slurm.conf timeout 10 squeue -h -o %i -t PENDING,RUNNING,COMPLETING,CONFIGURING 2>/dev/null
}

stop() {
  if pid_of slurmctld >/dev/null; then
    local ids
    ids=$(jobs_left) || true
    if [[ -n $ids ]]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$DIR/slurm.conf scancel $ids || true
      wait_for 60 "jobs $ids did not end" test -z "$(jobs_left)"
    fi
  fi
  stop_daemons
  echo "# stopped the cluster in $DIR"
}

DRY_RUN=0
CMD=
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; DIR=$2; shift ;;
    --dir=*) DIR=${1#--dir=} ;;
    --dry-run) DRY_RUN=1 ;;
    start|stop|status) [[ -z $CMD ]] || die "give one command, got '$CMD' and '$1'"; CMD=$1 ;;
    *) die "unknown argument '$1' (see $PROG --help)" ;;
  esac
  shift
done
[[ -n $CMD ]] || die "give a command: start, stop or status (see $PROG --help)"
[[ $DIR == /* ]] || DIR=$PWD/$DIR
case $CMD in
  start) start ;;
  stop) stop ;;
  status) status ;;
esac
