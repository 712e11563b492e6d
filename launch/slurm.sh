#!/usr/bin/env bash
#SBATCH --job-name=hope_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --error=logs/%x-%j.err
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#
# hope_jax on a Slurm allocation: JAX's multi-process runtime, one process per node owning all its GPUs (default) or one
# per GPU (--per-gpu). Submit from the repository root (logs/ must exist: Slurm does not create it):
#
#   mkdir -p logs
#   sbatch launch/slurm.sh --config=configs/mid.py --workdir=/shared/runs/mid --gpu=h100
#   sbatch --nodes=4 --time=48:00:00 --job-name=target launch/slurm.sh --config=configs/target.py --workdir=...
#   sbatch launch/slurm.sh --config=... --workdir=... -- --config.train.num_steps=1000   (after --: to hope_jax.main)
#
# sbatch options given on the command line override the #SBATCH lines above. Options of this script:
#   --config=FILE     config file for hope_jax.main (required; or give it as the first argument)
#   --workdir=DIR     checkpoints + metrics, on a filesystem every node sees (or the second argument; default
#                     runs/<config name>, relative to the repository)
#   --gpu=KIND        XLA/NCCL profile launch/profiles/KIND.env: h100, h200, a100, rtx6000ada, or none
#                     (default: the kind nvidia-smi reports on this node, none if it is not one of these)
#   --per-gpu         one process per GPU (srun --ntasks-per-node=GPUs per node) instead of one per node
#   --port=N          coordinator port (default 61440 + job id % 4096, as JAX's own Slurm rule)
#   --python=CMD      interpreter (default: python; e.g. /path/to/venv/bin/python)
#   --dry-run         print the environment and the commands, run nothing (outside an allocation: the #SBATCH
#                     defaults, with placeholders for the hosts Slurm will pick)
#
# The coordinator is the first host of the allocation (scontrol show hostnames; a built-in parser where scontrol is
# missing), exported as MASTER_ADDR / MASTER_PORT; hope_jax.distributed reads them and the SLURM_* task variables.
# Preemption: Slurm's SIGTERM reaches every training process, each saves the same step's checkpoint and exits 0, and
# Slurm requeues the job (--requeue); the requeued job resumes from the workdir. Time limit: 300 s before it Slurm
# sends USR1 to this script (--signal=B:USR1@300), which forwards SIGTERM to the training step and, once the
# checkpoint is written, requeues the job itself (scontrol requeue).
set -euo pipefail

config="" workdir="" gpu="auto" per_gpu=0 port="" python="python" dry_run=0
main_extra=() positional=()
while (($#)); do
  case "$1" in
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --gpu=*) gpu="${1#*=}" ;;
    --per-gpu) per_gpu=1 ;;
    --port=*) port="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; main_extra=("$@"); break ;;
    -*) echo "slurm.sh: unknown option $1 (options: see the header of launch/slurm.sh)" >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift
done
# Short form: slurm.sh CONFIG [WORKDIR]; the workdir defaults to runs/<config name>.
config="${config:-${positional[0]:-}}"
[[ -n "$config" ]] || { echo "slurm.sh: --config=FILE (or a config as first argument) is required" >&2; exit 2; }
if [[ -z "$workdir" ]]; then
  workdir="${positional[1]:-}"
fi
if [[ -z "$workdir" ]]; then
  name="${config##*/}" && name="${name%%:*}" && workdir="runs/${name%.py}"
fi
# Outside an allocation only a dry run makes sense; it shows the #SBATCH defaults and placeholders for what Slurm decides.
in_slurm=1
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  ((dry_run)) || { echo "slurm.sh: not inside a Slurm allocation: submit it with sbatch (or use --dry-run)" >&2; exit 2; }
  in_slurm=0
fi
sbatch_default() { sed -n "s/^#SBATCH --$1=//p" "${BASH_SOURCE[0]}" | awk 'NR == 1'; }

# sbatch runs a copy of this script from its spool directory: the repository is where the job was submitted from.
repo="${HOPE_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"

# First host of a Slurm host list without scontrol: 'gpu[01-02,05],cpu1' -> gpu01, 'a-[7-9]-ib,b' -> a-7-ib.
first_host() {
  local list="$1" item prefix rest first suffix
  item="${list%%,*}"
  if [[ "$item" == *"["* ]]; then
    prefix="${list%%\[*}"
    rest="${list#*\[}"
    first="${rest%%[],-]*}"
    suffix="${rest#*\]}"
    suffix="${suffix%%,*}"
    item="${prefix}${first}${suffix}"
  fi
  printf '%s\n' "$item"
}

if ((in_slurm)); then
  : "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}"
  job_id="$SLURM_JOB_ID"
  if command -v scontrol >/dev/null 2>&1; then
    # awk reads every line: `head -n 1` would close the pipe early, and under pipefail scontrol's SIGPIPE ends the job.
    master_addr="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')"
  else
    master_addr="$(first_host "$SLURM_JOB_NODELIST")"
  fi
  master_port="${port:-$((SLURM_JOB_ID % 4096 + 61440))}"
  nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  # GPUs per node: SLURM_GPUS_ON_NODE, else --gpus-per-node's value ('8' or 'h100:8').
  gpus_per_node="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}"
else
  job_id="(none: dry run outside Slurm)"
  master_addr="<first host of the allocation>"
  master_port="${port:-<61440 + job id % 4096>}"
  nodes="$(sbatch_default nodes)"
  gpus_per_node="$(sbatch_default gpus-per-node)"
fi
gpus_per_node="${gpus_per_node##*:}"
tasks_per_node=1
if ((per_gpu)); then
  tasks_per_node="$gpus_per_node"
fi

if [[ "$gpu" == "auto" ]]; then
  gpu="none"
  if command -v nvidia-smi >/dev/null 2>&1; then
    case "$(nvidia-smi --query-gpu=name --format=csv,noheader | awk 'NR == 1')" in
      *H200*) gpu="h200" ;;
      *H100*) gpu="h100" ;;
      *A100*) gpu="a100" ;;
      *"RTX 6000 Ada"*) gpu="rtx6000ada" ;;
    esac
  fi
fi

# The environment the training processes get, in order: coordinator, then the GPU profile's settings.
env_names=(MASTER_ADDR MASTER_PORT)
export MASTER_ADDR="$master_addr" MASTER_PORT="$master_port"
if [[ "$gpu" != "none" ]]; then
  profile="$repo/launch/profiles/$gpu.env"
  [[ -f "$profile" ]] || { echo "slurm.sh: no profile $profile (known: h100 h200 a100 rtx6000ada none)" >&2; exit 2; }
  # Your environment wins: a variable already set keeps its value, and XLA flags you set come after the profile's
  # (XLA takes the last occurrence of a flag).
  user_xla_flags="${XLA_FLAGS:-}"
  unset XLA_FLAGS
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    if [[ "$line" == *"+="* && "${line%%+=*}" != *"="* ]]; then
      name="${line%%+=*}" value="${line#*+=}"
      export "$name=${!name:+${!name} }$value"
    else
      name="${line%%=*}" value="${line#*=}"
      [[ -n "${!name:-}" ]] || export "$name=$value"
    fi
    [[ " ${env_names[*]} " == *" $name "* ]] || env_names+=("$name")
  done <"$profile"
  if [[ -n "$user_xla_flags" ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$user_xla_flags"
  fi
fi

srun_cmd=(srun "--nodes=$nodes" "--ntasks-per-node=$tasks_per_node" --kill-on-bad-exit=1)
if ((per_gpu)) && [[ -n "${SLURM_CPUS_ON_NODE:-}" ]]; then
  # The step inherits the job's --cpus-per-task (sized for one process per node): share the node's CPUs instead.
  cpus=$((SLURM_CPUS_ON_NODE / tasks_per_node))
  srun_cmd+=("--cpus-per-task=$((cpus > 0 ? cpus : 1))")
fi
main_cmd=("$python" -m hope_jax.main "--config=$config" "--workdir=$workdir" --distributed=slurm "${main_extra[@]}")

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

describe() {
  echo "# hope_jax on Slurm: job $job_id, $nodes node(s), $tasks_per_node process(es) per node, gpu profile $gpu"
  echo "cd $(quote "$repo")"
  local name
  for name in "${env_names[@]}"; do
    echo "export $name=$(quote "${!name}")"
  done
  local word line=""
  for word in "${srun_cmd[@]}" "${main_cmd[@]}"; do
    line+="${line:+ }$(quote "$word")"
  done
  echo "$line"
}

if ((dry_run)); then
  describe
  exit 0
fi

describe
cd "$repo"
requeue=0 srun_pid=""
on_usr1() {
  echo "slurm.sh: time limit near: SIGTERM to the training step (it checkpoints), then requeue" >&2
  requeue=1
  [[ -z "$srun_pid" ]] || kill -TERM "$srun_pid" 2>/dev/null || true
}
on_term() {
  echo "slurm.sh: SIGTERM (preemption or scancel): forwarding it to the training step" >&2
  [[ -z "$srun_pid" ]] || kill -TERM "$srun_pid" 2>/dev/null || true
}
trap on_usr1 USR1
trap on_term TERM
"${srun_cmd[@]}" "${main_cmd[@]}" &
srun_pid=$!
status=0
wait "$srun_pid" || status=$?
# A trapped signal interrupts `wait`; keep waiting until the step has really finished (its checkpoint is written).
while kill -0 "$srun_pid" 2>/dev/null; do
  status=0
  wait "$srun_pid" || status=$?
done
if ((requeue)); then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
