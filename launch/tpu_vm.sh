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
  setup     copy this checkout to every worker, make a Python 3.11+ virtual environment
            REMOTE_DIR/.venv there (a python3.11+ on PATH, else uv's managed CPython 3.11:
            tpu-ubuntu2204-base has only Python 3.10), pip install '.[tpu]' into it, and
            fail if the workers' versions differ
  run       stop a trainer still running from an earlier run (SIGTERM: it checkpoints),
            clear stale TPU users and the libtpu lock, check the shared run dir from
            every worker, preflight with 'deqdist info', then start 'deqdist train
            --distributed' on every worker detached from ssh (nohup + setsid; log:
            RUN_DIR/logs/<worker host>.log) and poll it until every worker is done.
            A dropped connection does not stop training: 'run' again stops it cleanly
            and resumes. SIGTERM / Ctrl-C send SIGTERM to the trainers (they checkpoint)
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
  --platform NAME        JAX_PLATFORMS on the workers (default tpu)
  --poll S               seconds between checks of the running trainers (default 60)
  --stop-timeout S       seconds a running trainer gets to checkpoint after SIGTERM (default 300)
  --max-restarts N       babysit: give up after N recreations (default 20)
  --dry-run              print the commands, environment and logs; run nothing
  -h, --help             this help

TRAIN_ARGS go to 'deqdist train' and must include --run-dir on storage every worker
mounts (e.g. a gcsfuse or Filestore path): a recreated slice has fresh disks.
Exit: 0 when every worker finished (also after a SIGTERM stop), 2 bad input, 3 a worker failed.

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

ARGS=("$@")
NAME='' ZONE='' PROJECT='' TYPE=v4-16 VERSION=tpu-ubuntu2204-base SPOT=0 REMOTE_DIR=deqdist MAX_RESTARTS=20
PLATFORM=tpu POLL=60 STOP_TIMEOUT=300
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
    --platform) need_value "$1" $#; PLATFORM=$2; shift ;;
    --poll) need_value "$1" $#; need_int "$1" "$2" 1; POLL=$2; shift ;;
    --stop-timeout) need_value "$1" $#; need_int "$1" "$2" 1; STOP_TIMEOUT=$2; shift ;;
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
[[ $PLATFORM =~ ^[a-z,]+$ ]] || die "--platform '$PLATFORM' must be a JAX platform name such as tpu or cpu"
RUN_DIR=
if [[ $CMD == run || $CMD == babysit ]]; then
  reject_launcher_flags "${TRAIN[@]}"
  RUN_DIR=$(train_run_dir "${TRAIN[@]}")
  [[ -n $RUN_DIR ]] || die "$CMD needs '-- --run-dir DIR ...' on storage that every worker mounts"
fi

GC=(gcloud compute tpus)
WHERE=(--zone "$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project "$PROJECT")
RD=$(quote "$REMOTE_DIR")
STATE=.deqdist-train  # on each worker, under REMOTE_DIR: pid and exit code of the detached trainer
PY=.venv/bin/python
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

# On a worker: a Python 3.11+ venv in .venv (pyproject needs 3.11; the image's python3 is 3.10).
# shellcheck disable=SC2016  # expands on the worker
VENV_SCRIPT='ok() { "$1" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; }; '\
'if [ -x .venv/bin/python ] && ! ok .venv/bin/python; then rm -rf .venv; fi; '\
'py=; for c in python3.13 python3.12 python3.11 python3; do if command -v $c >/dev/null && ok $c; then py=$c; break; fi; done; '\
'uv=$(command -v uv || echo ~/.local/bin/uv); '\
'if [ -x .venv/bin/python ]; then :; elif [ -n "$py" ]; then $py -m venv .venv; '\
'else { [ -x "$uv" ] || python3 -m pip install -q --user uv; } && "$uv" venv -q --seed --python 3.11 .venv; fi && '\
'.venv/bin/python -m pip install -q -e ".[tpu]"'

setup() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  note "fresh copy of the package and its presets on every worker (scp needs the target directory to exist)"
  ssh_all "mkdir -p $RD && rm -rf $RD/deqdist $RD/configs"
  run "${GC[@]}" tpu-vm scp --recurse "$root/pyproject.toml" "$root/README.md" "$root/deqdist" "$root/configs" \
    "$NAME:$REMOTE_DIR/" "${WHERE[@]}" --worker=all
  ssh_all "cd $RD && $VENV_SCRIPT" || fail "setup failed on a worker (see the lines above); fix it and rerun setup"
  local probe="$PY -c 'import importlib.metadata as m, sys; print(\"deqdist-versions:\", sys.version.split()[0], *(m.version(p) for p in (\"jax\", \"jaxlib\", \"libtpu\", \"flax\", \"orbax-checkpoint\", \"grain\")))'"
  if [[ $DRY_RUN == 1 ]]; then
    ssh_all "cd $RD && $probe"
    note "setup fails unless every worker prints the same deqdist-versions line"
    return
  fi
  local seen
  seen=$(ssh_all "cd $RD && $probe" | grep '^deqdist-versions:' | sort -u)
  [[ -n $seen && $(wc -l <<<"$seen") == 1 ]] || fail "the workers' versions differ: $(tr '\n' ';' <<<"$seen") rerun setup"
  echo "$seen"
}

# On a worker: SIGTERM a trainer left running (by a dropped 'run'), give it time to checkpoint.
stop_stale_script() {
  local s="cd $RD 2>/dev/null && [ -f $STATE/pid ] || exit 0; pid=\$(cat $STATE/pid); kill -0 \$pid 2>/dev/null || exit 0; "
  s+="echo \"$PROG: \$(hostname): stopping the trainer still running (pid \$pid) with SIGTERM; it saves a checkpoint\" >&2; "
  s+="kill -TERM \$pid; i=0; while kill -0 \$pid 2>/dev/null; do if [ \$i -ge $STOP_TIMEOUT ]; then "
  s+="echo \"$PROG: \$(hostname): no exit after $STOP_TIMEOUT s, killing it\" >&2; kill -9 \$pid; fi; i=\$((i+1)); sleep 1; done"
  echo "$s"
}

start_script() {  # on a worker: the detached trainer; its pid and, when it ends, its exit code in STATE
  local rd=$1 inner
  inner="export JAX_PLATFORMS=$PLATFORM PYTHONUNBUFFERED=1; $PY -m deqdist.cli train --distributed $(quote "${TRAIN[@]}") & echo \$! > $STATE/pid; wait \$!; echo \$? > $STATE/rc.tmp; mv $STATE/rc.tmp $STATE/rc"
  local s="cd $RD && mkdir -p $STATE && rm -f $STATE/pid $STATE/rc || exit 3; "
  s+="{ nohup setsid bash -c $(quote "$inner") > $rd/logs/\$(hostname).log 2>&1 < /dev/null & } ; "
  s+="for i in \$(seq 100); do [ -s $STATE/pid ] && exit 0; sleep 0.1; done; "
  s+="echo \"$PROG: \$(hostname): the trainer did not start\" >&2; exit 3"
  echo "$s"
}

# A trainer that just exited has no rc file for the moment its wrapper takes to write it, so a dead
# pid without rc is looked at again after a few seconds before the worker counts as gone.
STATUS_SCRIPT="cd $RD; st() { if [ -f $STATE/rc ]; then echo \"deqdist-train: exit \$(cat $STATE/rc) \$(hostname)\"; elif [ -f $STATE/pid ] && kill -0 \$(cat $STATE/pid) 2>/dev/null; then echo \"deqdist-train: running \$(hostname)\"; else return 1; fi; }; st || { sleep 5; st; } || echo \"deqdist-train: gone \$(hostname)\""

terminate() {  # SIGTERM to the trainers (they checkpoint and exit 0); polling goes on until they are done
  echo "$PROG: stopping the trainers with SIGTERM (they save a checkpoint)" >&2

  ssh_all "cd $RD && kill -TERM \$(cat $STATE/pid) 2>/dev/null; true" || true
}

poll() {  # until no worker runs; returns 0, 2 (bad input) or 3
  local out states bad
  while :; do
    out=$("${GC[@]}" tpu-vm ssh "$NAME" "${WHERE[@]}" --worker=all --command "$STATUS_SCRIPT") ||
      fail "cannot reach every worker of $NAME (preempted?); the trainers' logs are in $RUN_DIR/logs/"
    states=$(grep '^deqdist-train: ' <<<"$out" | cut -d' ' -f2-) || true
    [[ -n $states ]] || fail "no worker of $NAME answered the status check"
    if ! grep -q '^running' <<<"$states"; then break; fi
    sleep "$POLL" & wait $! || true
  done
  bad=$(grep -v '^exit 0 ' <<<"$states" | sort -k3 | awk '{printf "%s%s %s %s", sep, $3, $1, $2; sep=", "}') || true
  [[ -z $bad ]] && { echo "$PROG: every worker finished (exit 0)"; return 0; }
  if ! grep -v '^exit 0 ' <<<"$states" | grep -vq '^exit 2 '; then
    echo "$PROG: error: the workers refused the input ($bad); see $RUN_DIR/logs/" >&2
    return 2
  fi
  echo "$PROG: error: workers failed ($bad); see $RUN_DIR/logs/; the run resumes from its newest checkpoint with the same '$PROG run' command" >&2
  return 3
}

train() {
  local rd token rc=0
  rd=$(quote "$RUN_DIR")
  token="$NAME-$(date +%s)-$$"
  note "stop a trainer that still runs from an earlier run (SIGTERM, up to $STOP_TIMEOUT s to checkpoint)"
  ssh_all "$(stop_stale_script)"
  note "clear stale TPU users and the libtpu lock on every worker"
  ssh_all "sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -9; sudo rm -f /tmp/libtpu_lockfile"
  note "shared run dir: worker 0 writes a token, every worker reads it"
  ssh_one 0 "mkdir -p $rd/logs && echo $token > $rd/.reachable"
  ssh_all "test \"\$(cat $rd/.reachable 2>/dev/null)\" = $token || { echo \"$PROG: error: \$(hostname) cannot read $rd (mount the same shared storage on every worker)\" >&2; exit 3; }" ||
    fail "the run dir $RUN_DIR is not shared by every worker"
  note "preflight: versions, devices and the config's mesh on the whole slice"
  info_args "${TRAIN[@]}"
  ssh_all "cd $RD && JAX_PLATFORMS=$PLATFORM $PY -m deqdist.cli info --distributed $(quote "${INFO[@]}") >/dev/null" || rc=$?
  (( rc == 0 )) || { (( rc == 2 )) && exit 2; fail "the preflight 'deqdist info' failed on a worker (exit $rc, see above)"; }
  note "train detached from ssh; environment: JAX_PLATFORMS=$PLATFORM PYTHONUNBUFFERED=1; log per worker: $RUN_DIR/logs/<worker hostname>.log"
  ssh_all "$(start_script "$rd")"
  note "then poll every $POLL s until every worker is done:"
  if [[ $DRY_RUN == 1 ]]; then ssh_all "$STATUS_SCRIPT"; return; fi

  trap terminate TERM INT
  poll
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
  local attempt=0 state rc
  while :; do
    # A separate process: inside 'if'/'until' bash would ignore set -e in train and its preflight.
    # SIGTERM / Ctrl-C go to it (it stops the trainers cleanly); babysit then returns its exit code.
    bash "${BASH_SOURCE[0]}" run "${ARGS[@]}" &
    CHILD=$!
    trap 'kill -TERM $CHILD 2>/dev/null || true' TERM INT
    while :; do
      rc=0
      wait "$CHILD" || rc=$?
      kill -0 "$CHILD" 2>/dev/null || break  # else a trapped signal interrupted the wait
    done
    trap - TERM INT
    (( rc == 0 )) && return 0
    (( rc == 2 )) && exit 2
    state=$("${GC[@]}" tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || echo GONE)
    if [[ $state != PREEMPTED && $state != GONE && $state != TERMINATED ]]; then
      fail "the run failed on a healthy slice (state $state); see $RUN_DIR/logs/ and fix it before resuming"
    fi
    (( attempt++ < MAX_RESTARTS )) || fail "gave up after $MAX_RESTARTS recreations; resume later with: $PROG babysit $(quote "${ARGS[@]}")"
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
