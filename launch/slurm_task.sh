#!/usr/bin/env bash
# One SLURM task of launch/slurm.sbatch: bind its GPUs, run the command, record how it ended.
set -euo pipefail
PROG=launch/slurm_task.sh
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: srun $PROG [--exit-file PREFIX] [--dry-run] -- CMD [ARGS...]

Runs CMD as this SLURM task with JAX_LOCAL_DEVICE_IDS set so that the tasks of a node
share its GPUs without overlap (JAX's own SLURM detection would pick GPU SLURM_LOCALID,
which a task that SLURM gave one GPU cannot see):
  - no GPU visible (CUDA_VISIBLE_DEVICES empty, no nvidia-smi): nothing set;
  - one task on the node, or SLURM already bound GPUs per task (fewer visible than
    SLURM_GPUS_ON_NODE, e.g. --gpus-per-task): all the visible GPUs, ids 0..G-1;
  - T tasks on the node that all see its G GPUs: task i gets ids i*G/T..(i+1)*G/T-1
    (G must be a multiple of T).
A JAX_LOCAL_DEVICE_IDS already in the environment is kept. CUDA_VISIBLE_DEVICES is
left as SLURM set it. With --exit-file, PREFIX<task>.exit gets 'CODE SECONDS' when CMD
ends (128+N: killed by signal N), so the batch script can name the task that failed.

options:
  --exit-file PREFIX  record CMD's exit code in PREFIX<SLURM_PROCID>.exit
  --dry-run           print the variables it would set and the command; run nothing
  -h, --help          this help
USAGE
}

EXIT_FILE=
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --exit-file) need_value "$1" $#; EXIT_FILE=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (see $PROG --help)" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "give the command after '--' (see $PROG --help)"
for v in SLURM_PROCID SLURM_LOCALID SLURM_NODEID; do
  [[ ${!v:-} =~ ^[0-9]+$ ]] || die "$v is '${!v:-}', not a task number: run this under srun"
done

# Tasks of this step on this node: SLURM_STEP_TASKS_PER_NODE is per node, e.g. '8(x2),4'.
tasks_here() {
  local spec=${SLURM_STEP_TASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}} part n reps node=0
  local IFS=,
  for part in $spec; do
    if [[ $part =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then n=${BASH_REMATCH[1]} reps=${BASH_REMATCH[2]}
    elif [[ $part =~ ^[0-9]+$ ]]; then n=$part reps=1
    else die "cannot read SLURM_STEP_TASKS_PER_NODE='$spec'"; fi
    if (( SLURM_NODEID < node + reps )); then echo "$n"; return; fi
    node=$((node + reps))
  done
  die "node $SLURM_NODEID is not in SLURM_STEP_TASKS_PER_NODE='$spec'"
}

visible_gpus() {  # how many GPUs this task can see
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    [[ $CUDA_VISIBLE_DEVICES != NoDevFiles && -n $CUDA_VISIBLE_DEVICES ]] || { echo 0; return; }  # SLURM: no GPU
    local IFS=, ids
    read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

bind_gpus() {  # sets JAX_LOCAL_DEVICE_IDS (exported) when this task has GPUs
  [[ -z ${JAX_LOCAL_DEVICE_IDS:-} ]] || return 0
  local g t node first per
  g=$(visible_gpus)
  (( g > 0 )) || return 0
  t=$(tasks_here)
  node=${SLURM_GPUS_ON_NODE:-$g}
  if (( t == 1 || g < node )); then
    first=0 per=$g
  else
    (( g % t == 0 )) || die "$t tasks on node $SLURM_NODEID cannot share its $g GPUs evenly; use --ntasks-per-node=1 (one process drives them all) or a divisor of $g"
    per=$((g / t)) first=$((SLURM_LOCALID * g / t))
  fi
  JAX_LOCAL_DEVICE_IDS=$(seq -s, "$first" $((first + per - 1)))
  export JAX_LOCAL_DEVICE_IDS
}

bind_gpus
if [[ $DRY_RUN == 1 ]]; then
  echo "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-}"
  quote "$@"
  exit 0
fi
[[ -n $EXIT_FILE ]] || exec "$@"

# The step's signals (SIGTERM before the time limit, scancel) reach every process of the task,
# CMD included: this shell only waits for CMD to finish and writes down how it ended.
trap : TERM INT
"$@" &
child=$!
while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done  # a trapped signal ends a wait early
rc=0
wait "$child" || rc=$?  # bash keeps the status of a reaped child
record=$EXIT_FILE$SLURM_PROCID.exit
echo "$rc $(date +%s.%N)" >"$record.tmp" && mv -f "$record.tmp" "$record"
exit "$rc"
