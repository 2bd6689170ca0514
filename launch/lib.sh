# Shared by tpu_vm.sh, gpu_docker.sh and slurm.sbatch (sourced, not run).
# shellcheck shell=bash

DRY_RUN=0

die() {  # one line on stderr, exit 2 (bad arguments)
  echo "${PROG}: error: $*" >&2
  exit 2
}

fail() {  # one line on stderr, exit 3 (the job failed; the run dir is intact)
  echo "${PROG}: error: $*" >&2
  exit 3
}

note() { echo "# $*"; }

# A command line as one shell-quoted string (for ssh, docker and bash -c, and for --dry-run).
quote() {
  local out=() w
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$w"); else out+=("${w@Q}"); fi
  done
  echo "${out[*]}"
}

# Print the command shell-quoted; run it unless --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

need_value() {  # need_value FLAG "$#"
  [[ $2 -ge 2 ]] || die "$1 needs a value"
}

need_int() {  # need_int NAME VALUE MIN
  if ! [[ $2 =~ ^[0-9]+$ ]] || (( $2 < $3 )); then die "$1 must be an integer >= $3, got '$2'"; fi
}

# INFO=(the train arguments that decide the mesh: --config, --run-dir, key=value), so that
# the preflight `deqdist info` resolves the same config as `deqdist train`.
info_args() {
  INFO=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --config|--run-dir) INFO+=("$1" "${2:-}"); shift ;;
      --config=*|--run-dir=*) INFO+=("$1") ;;
      -*) ;;
      *=*) INFO+=("$1") ;;
    esac
    shift
  done
}

# The value of --run-dir among the train arguments (empty if absent).
train_run_dir() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      --run-dir) echo "${2:-}"; return ;;
      --run-dir=*) echo "${1#--run-dir=}"; return ;;
    esac
    shift
  done
}

reject_launcher_flags() {  # the launcher owns the multi-host flags
  local a
  for a in "$@"; do
    case $a in
      --coordinator*|--num-processes*|--process-id*|--distributed) die "$a is set by the launcher; remove it from the train arguments" ;;
    esac
  done
}

# The step of the newest sealed checkpoint in RUN_DIR/checkpoints (deqdist writes the checksum
# manifest once a save is whole); nothing if there is none, also when the folder does not exist.
newest_checkpoint() {  # newest_checkpoint RUN_DIR
  local m s best=''
  for m in "$1"/checkpoints/*/deqdist.sha256.json; do
    s=${m%/*} && s=${s##*/}
    if [[ -f $m && $s =~ ^[0-9]+$ ]] && { [[ -z $best ]] || (( 10#$s > 10#$best )); }; then best=$s; fi
  done
  echo "$best"
}
