#!/usr/bin/env bash
# deqdist on a Cloud TPU VM slice (one process per worker, jax.distributed finds the pod).
set -euo pipefail
PROG=launch/tpu_vm.sh
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: $PROG create|setup|run|babysit|stop --name NAME --zone ZONE [options] [-- TRAIN_ARGS...]

  create    request the slice as a queued resource and wait until it is ACTIVE
  setup     copy this checkout to every worker, pip install '.[tpu]', and fail if the
            workers' versions differ
  run       clear stale TPU users and the libtpu lock, check the shared run dir from
            every worker, preflight with 'deqdist info', then 'deqdist train
            --distributed' on every worker (log: RUN_DIR/logs/<worker host>.log)
  babysit   run; when the slice was preempted, stop + create + setup and run again
            (the run resumes from its checkpoints); stops when run succeeds
  stop      delete the queued resource and its TPU

options:
  --name NAME            TPU name (queued resource NAME-qr)
  --zone ZONE            e.g. us-central2-b
  --project PROJECT      gcloud project (default: gcloud's)
  --type TYPE            accelerator type for create (default v4-16)
  --version VERSION      TPU runtime for create (default tpu-ubuntu2204-base)
  --spot                 create a spot slice
  --remote-dir DIR       checkout on the workers (default deqdist, under the home directory)
  --max-restarts N       babysit: give up after N recreations (default 20)
  --dry-run              print the commands, environment and logs; run nothing
  -h, --help             this help

TRAIN_ARGS go to 'deqdist train' and must include --run-dir on storage every worker
mounts (e.g. a gcsfuse or Filestore path): a recreated slice has fresh disks.

example:
  $PROG run --name pod1 --zone us-central2-b -- --run-dir /mnt/shared/runs/medium --config configs/medium.yaml
USAGE
}

CMD=${1:-}
case $CMD in
  -h|--help) usage; exit 0 ;;
  create|setup|run|babysit|stop) shift ;;
  "") die "give a command: create, setup, run, babysit or stop (see $PROG --help)" ;;
  *) die "unknown command '$CMD'; use create, setup, run, babysit or stop (see $PROG --help)" ;;
esac

NAME='' ZONE='' PROJECT='' TYPE=v4-16 VERSION=tpu-ubuntu2204-base SPOT=0 REMOTE_DIR=deqdist MAX_RESTARTS=20
TRAIN=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$1" $#; NAME=$2; shift ;;
    --zone) need_value "$1" $#; ZONE=$2; shift ;;
    --project) need_value "$1" $#; PROJECT=$2; shift ;;
    --type) need_value "$1" $#; TYPE=$2; shift ;;
    --version) need_value "$1" $#; VERSION=$2; shift ;;
    --spot) SPOT=1 ;;
    --remote-dir) need_value "$1" $#; REMOTE_DIR=$2; shift ;;
    --max-restarts) need_value "$1" $#; need_int "$1" "$2" 0; MAX_RESTARTS=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; TRAIN=("$@"); break ;;
    *) die "unknown option '$1' (see $PROG --help)" ;;
  esac
  shift
done
[[ -n $NAME ]] || die "--name is required"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME' must be lower-case letters, digits and dashes"
[[ -n $ZONE ]] || die "--zone is required"
RUN_DIR=
if [[ $CMD == run || $CMD == babysit ]]; then
  reject_launcher_flags "${TRAIN[@]}"
  RUN_DIR=$(train_run_dir "${TRAIN[@]}")
  [[ -n $RUN_DIR ]] || die "$CMD needs '-- --run-dir DIR ...' on storage that every worker mounts"
fi

GC=(gcloud compute tpus)
WHERE=(--zone "$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project "$PROJECT")
ssh_all() { run "${GC[@]}" tpu-vm ssh "$NAME" "${WHERE[@]}" --worker=all --command "$1"; }
ssh_one() { run "${GC[@]}" tpu-vm ssh "$NAME" "${WHERE[@]}" --worker="$1" --command "$2"; }

create() {
  local spot=()
  [[ $SPOT == 1 ]] && spot=(--spot)
  run "${GC[@]}" queued-resources create "$NAME-qr" --node-id "$NAME" --accelerator-type "$TYPE" \
    --runtime-version "$VERSION" "${WHERE[@]}" "${spot[@]}"
  note "then poll until the state is ACTIVE:"
  if [[ $DRY_RUN == 1 ]]; then
    run "${GC[@]}" queued-resources describe "$NAME-qr" "${WHERE[@]}" --format='value(state.state)'
    return
  fi
  local state
  while state=$("${GC[@]}" queued-resources describe "$NAME-qr" "${WHERE[@]}" --format='value(state.state)'); do
    case $state in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED) fail "queued resource $NAME-qr is $state; '$PROG stop' and create again" ;;
    esac
    echo "$PROG: $NAME-qr is $state, waiting" >&2
    sleep 30
  done
  fail "cannot describe queued resource $NAME-qr"
}

setup() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  run "${GC[@]}" tpu-vm scp --recurse "$root/pyproject.toml" "$root/README.md" "$root/deqdist" \
    "$NAME:$REMOTE_DIR/" "${WHERE[@]}" --worker=all
  ssh_all "cd $(quote "$REMOTE_DIR") && python3 -m pip install -q -U pip && python3 -m pip install -q -e '.[tpu]'"
  local probe="python3 -c 'import importlib.metadata as m; print(\"deqdist-versions:\", *(m.version(p) for p in (\"jax\", \"jaxlib\", \"libtpu\", \"flax\", \"orbax-checkpoint\", \"grain\")))'"
  if [[ $DRY_RUN == 1 ]]; then
    ssh_all "$probe"
    note "setup fails unless every worker prints the same deqdist-versions line"
    return
  fi
  local seen
  seen=$(ssh_all "$probe" | grep '^deqdist-versions:' | sort -u)
  [[ $(wc -l <<<"$seen") == 1 ]] || fail "the workers' versions differ: $(tr '\n' ';' <<<"$seen") rerun setup"
  echo "$seen"
}

train() {
  local env="JAX_PLATFORMS=tpu PYTHONUNBUFFERED=1"
  local rd token
  rd=$(quote "$RUN_DIR")
  token="$NAME-$(date +%s)-$$"
  note "clear stale TPU users and the libtpu lock on every worker"
  ssh_all "sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -9; sudo rm -f /tmp/libtpu_lockfile"
  note "shared run dir: worker 0 writes a token, every worker reads it"
  ssh_one 0 "mkdir -p $rd/logs && echo $token > $rd/.reachable"
  ssh_all "test \"\$(cat $rd/.reachable 2>/dev/null)\" = $token || { echo \"$PROG: error: \$(hostname) cannot read $rd (mount the same shared storage on every worker)\" >&2; exit 3; }"
  note "preflight: versions, devices and the config's mesh on the whole slice"
  info_args "${TRAIN[@]}"
  ssh_all "cd $(quote "$REMOTE_DIR") && $env python3 -m deqdist.cli info --distributed $(quote "${INFO[@]}")"
  note "train; environment: $env; log per worker: $RUN_DIR/logs/<worker hostname>.log"
  ssh_all "cd $(quote "$REMOTE_DIR") && $env python3 -m deqdist.cli train --distributed $(quote "${TRAIN[@]}") > $rd/logs/\$(hostname).log 2>&1"
}

stop() {
  run "${GC[@]}" queued-resources delete "$NAME-qr" "${WHERE[@]}" --force --quiet
}

babysit() {
  if [[ $DRY_RUN == 1 ]]; then
    note "babysit: run (below); on failure, if the TPU state is PREEMPTED or it is gone: stop, create, setup, run again"
    train
    return
  fi
  local attempt=0 state
  until train; do
    state=$("${GC[@]}" tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || echo GONE)
    if [[ $state != PREEMPTED && $state != GONE && $state != TERMINATED ]]; then
      fail "the run failed on a healthy slice (state $state); see $RUN_DIR/logs/ and fix it before resuming"
    fi
    (( attempt++ < MAX_RESTARTS )) || fail "gave up after $MAX_RESTARTS recreations; resume later with: $PROG babysit --name $NAME --zone $ZONE -- $(quote "${TRAIN[@]}")"
    echo "$PROG: slice $NAME is $state; recreating (attempt $attempt of $MAX_RESTARTS)" >&2
    stop || true
    create
    setup
  done
}

case $CMD in
  create) create ;;
  setup) setup ;;
  run) train ;;
  babysit) babysit ;;
  stop) stop ;;
esac
