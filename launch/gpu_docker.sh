#!/usr/bin/env bash
# deqdist in Docker on GPU nodes: one container per node over ssh, all GPUs of a node in one process.
set -euo pipefail
PROG=launch/gpu_docker.sh
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: $PROG --hosts HOST1,HOST2,... --image IMAGE [options] -- --run-dir DIR [TRAIN_ARGS...]

Starts 'deqdist train' in one container per host (over ssh; 'localhost' runs here),
process i on the i-th host, coordinator on the first host (its name without 'user@',
which every host must resolve; 'localhost' only works as the one host). Before training it checks
that every host reads a token the first host wrote into the run dir (the run dir must
be shared storage, mounted at the same path everywhere) and runs 'deqdist info' as a
preflight. A container left from an earlier run under the same name is stopped (SIGTERM,
it checkpoints) and removed first. SIGTERM / Ctrl-C stop every container with 'docker stop',
which gives deqdist --stop-timeout seconds to checkpoint; that clean stop exits 0.
When one container fails the others are stopped (exit 3, or 2 for bad input).

The containers run as --user UID:GID, by default the owner of the run dir on the first
host, so that checkpoints can be written whoever created the run dir.

options:
  --hosts LIST           comma-separated ssh hosts (the first one is the coordinator)
  --image IMAGE          image built from this repo's Dockerfile
  --port PORT            coordinator port on the first host (default 12355)
  --name NAME            container name (default deqdist-<user>)
  --user UID:GID         user of the containers (default: the run dir's owner on the first host)
  --platform NAME        JAX_PLATFORMS in the containers (default cuda; with cpu no --gpus is asked)
  --env KEY=VALUE        more environment for the containers (repeatable), e.g. NCCL_DEBUG=WARN
  --shm-size SIZE        use --shm-size SIZE instead of --ipc=host
  --stop-timeout S       seconds docker waits after SIGTERM (default 300: time to checkpoint)
  --log-dir DIR          one log per host, on this machine (default logs/gpu_docker-<time>)
  --init-timeout S       seconds a process waits for the others to join (default 300)
  --dry-run              print the commands, environment and logs; run nothing
  -h, --help             this help

example:
  $PROG --hosts gpu1,gpu2 --image deqdist:latest -- --run-dir /shared/runs/small --config configs/small.yaml
USAGE
}

ARGS=("$@")
HOSTS='' IMAGE='' PORT=12355 NAME="deqdist-${USER:-user}" SHM='' STOP_TIMEOUT=300 INIT_TIMEOUT=300
USER_ID='' PLATFORM=cuda ENVS=()
LOG_DIR="logs/gpu_docker-$(date +%Y%m%d-%H%M%S)"
TRAIN=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --hosts) need_value "$1" $#; HOSTS=$2; shift ;;
    --image) need_value "$1" $#; IMAGE=$2; shift ;;
    --port) need_value "$1" $#; need_int "$1" "$2" 1; PORT=$2; shift ;;
    --name) need_value "$1" $#; NAME=$2; shift ;;
    --user) need_value "$1" $#; [[ $2 =~ ^[0-9]+(:[0-9]+)?$ ]] || die "--user must be UID or UID:GID (numbers), got '$2'"; USER_ID=$2; shift ;;
    --platform) need_value "$1" $#; [[ $2 =~ ^[a-z,]+$ ]] || die "--platform '$2' must be a JAX platform name such as cuda or cpu"; PLATFORM=$2; shift ;;
    --env) need_value "$1" $#; [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got '$2'"; ENVS+=(-e "$2"); shift ;;
    --shm-size) need_value "$1" $#; SHM=$2; shift ;;
    --stop-timeout) need_value "$1" $#; need_int "$1" "$2" 1; STOP_TIMEOUT=$2; shift ;;
    --log-dir) need_value "$1" $#; LOG_DIR=$2; shift ;;
    --init-timeout) need_value "$1" $#; need_int "$1" "$2" 1; INIT_TIMEOUT=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; TRAIN=("$@"); break ;;
    *) die "unknown option '$1' (see $PROG --help)" ;;
  esac
  shift
done
[[ -n $HOSTS ]] || die "--hosts is required (comma-separated ssh hosts, the first is the coordinator)"
[[ -n $IMAGE ]] || die "--image is required (build it with: docker build -t deqdist .)"
(( PORT <= 65535 )) || die "--port $PORT is outside 1-65535"
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "--name '$NAME' is not a valid container name"
IFS=, read -r -a HOST <<<"$HOSTS"
for h in "${HOST[@]}"; do [[ -n $h ]] || die "--hosts '$HOSTS' has an empty entry"; done
reject_launcher_flags "${TRAIN[@]}"
RUN_DIR=$(train_run_dir "${TRAIN[@]}")
[[ -n $RUN_DIR ]] || die "give '-- --run-dir DIR ...' on storage that every host mounts at the same path"
[[ $RUN_DIR == /* ]] || die "--run-dir must be an absolute path (it is mounted into the containers), got '$RUN_DIR'"
(( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501 )) || die "needs bash 5.1 or newer (wait -n -p), this is $BASH_VERSION"
N=${#HOST[@]}
COORD_HOST=${HOST[0]#*@}  # an ssh user is no part of the address the containers dial
if (( N > 1 )); then
  for h in "${HOST[@]}"; do
    case ${h#*@} in
      localhost|localhost.*|127.*|::1|'[::1]') die "--hosts: '$h' means a different machine on every host; give each host by a name all of them resolve" ;;
    esac
  done
fi
COORD="$COORD_HOST:$PORT"

on() {  # on HOST CMD... : the command on HOST (ssh unless localhost), printed in --dry-run
  local h=$1; shift
  if [[ $h == localhost ]]; then run bash -c "$(quote "$@")"; else run ssh -o BatchMode=yes "$h" "$(quote "$@")"; fi
}

docker_cmd() {  # docker_cmd I deqdist-args... : DOCKER=(the docker run line for process I)
  local ipc=(--ipc=host)
  [[ -n $SHM ]] && ipc=(--shm-size "$SHM")
  local gpus=(--gpus all)
  [[ $PLATFORM == *cuda* || $PLATFORM == *gpu* ]] || gpus=()
  DOCKER=(docker run --rm --name "$NAME-$1" "${gpus[@]}" --user "$USER_ID" --network=host "${ipc[@]}" \
    --ulimit memlock=-1 --ulimit stack=67108864 --init --stop-timeout "$STOP_TIMEOUT" -v "$RUN_DIR:$RUN_DIR" \
    -e JAX_PLATFORMS="$PLATFORM" -e PYTHONUNBUFFERED=1 -e HOME=/tmp "${ENVS[@]}" "$IMAGE" "${@:2}" \
    --coordinator "$COORD" --num-processes "$N" --process-id "$1" --init-timeout "$INIT_TIMEOUT")
}

stop_all() {
  for i in "${!HOST[@]}"; do on "${HOST[$i]}" docker stop -t "$STOP_TIMEOUT" "$NAME-$i" >/dev/null 2>&1 || true; done
}

token="$NAME-$(date +%s)-$$"
note "shared run dir: ${HOST[0]} writes a token, every host reads it"
on "${HOST[0]}" sh -c "mkdir -p $(quote "$RUN_DIR") && echo $token > $(quote "$RUN_DIR/.reachable")"
if [[ -z $USER_ID ]]; then
  if [[ $DRY_RUN == 1 ]]; then
    on "${HOST[0]}" stat -c %u:%g "$RUN_DIR"
    USER_ID='<run dir owner>'
  else
    USER_ID=$(on "${HOST[0]}" stat -c %u:%g "$RUN_DIR") || fail "cannot stat $RUN_DIR on ${HOST[0]}"
  fi
fi
for h in "${HOST[@]}"; do
  if [[ $DRY_RUN == 1 ]]; then
    on "$h" cat "$RUN_DIR/.reachable"
  else
    [[ $(on "$h" cat "$RUN_DIR/.reachable" 2>/dev/null) == "$token" ]] ||
      fail "host $h cannot read $RUN_DIR/.reachable written by ${HOST[0]}; mount the same shared storage at $RUN_DIR on every host"
  fi
done

start() {  # start WHAT LOGSUFFIX deqdist-args... : one container per host, in the background
  local what=$1 suffix=$2; shift 2
  PIDS=()
  for i in "${!HOST[@]}"; do
    local log="$LOG_DIR/${HOST[$i]}$suffix.log"
    docker_cmd "$i" "$@"
    note "$what process $i on ${HOST[$i]}, environment JAX_PLATFORMS=$PLATFORM PYTHONUNBUFFERED=1, log $log"
    if [[ $DRY_RUN == 1 ]]; then
      on "${HOST[$i]}" "${DOCKER[@]}"
    else
      on "${HOST[$i]}" "${DOCKER[@]}" >"$log" 2>&1 &
      PIDS+=($!)
    fi
  done
}

wait_all() {  # the first non-zero exit stops the rest; returns it
  local rc=0 r ended pid left
  while [[ ${#PIDS[@]} -gt 0 ]]; do
    ended='' r=0
    wait -n -p ended "${PIDS[@]}" || r=$?
    [[ -n ${ended:-} ]] || continue  # a trapped SIGTERM interrupted the wait (bash unsets ended)
    left=()
    for pid in "${PIDS[@]}"; do [[ $pid == "${ended:-}" ]] || left+=("$pid"); done
    PIDS=("${left[@]}")
    if (( r != 0 && rc == 0 )); then rc=$r; stop_all; fi
  done
  return "$rc"
}

clear_leftovers() {  # a container of the same name from an earlier run: stop it (it checkpoints), remove it
  for i in "${!HOST[@]}"; do
    on "${HOST[$i]}" sh -c "docker stop -t $STOP_TIMEOUT $NAME-$i >/dev/null 2>&1; docker rm -f $NAME-$i >/dev/null 2>&1; true"
  done
}

[[ $DRY_RUN == 1 ]] || mkdir -p "$LOG_DIR"
trap 'stop_all' TERM INT
clear_leftovers
info_args "${TRAIN[@]}"
start preflight -info info "${INFO[@]}"
if [[ $DRY_RUN != 1 ]]; then
  rc=0
  wait_all || rc=$?
  if (( rc == 2 )); then die "preflight 'deqdist info' refused the input; see $LOG_DIR/*-info.log"; fi
  (( rc == 0 )) || fail "preflight 'deqdist info' failed (exit $rc); see $LOG_DIR/*-info.log"
fi
start train "" train "${TRAIN[@]}"
[[ $DRY_RUN == 1 ]] && exit 0
rc=0
wait_all || rc=$?
if [[ $rc != 0 && $rc != 3 && $rc != 2 ]]; then
  step=$(newest_checkpoint "$RUN_DIR")
  fail "a container failed (exit $rc, JAX aborted or it was killed; logs in $LOG_DIR); newest complete checkpoint: step ${step:-none} in $RUN_DIR/checkpoints; resume with the same command: $PROG $(quote "${ARGS[@]}")"
fi
exit "$rc"
