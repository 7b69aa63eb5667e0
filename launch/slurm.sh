#!/usr/bin/env bash
# varjax on a Slurm GPU cluster: one process per node driving all of that node's GPUs;
# jax.distributed reads the Slurm environment (--distributed), and the 'models' axis
# spans every GPU of every node.
#
#   launch/slurm.sh            submit with sbatch
#   DRY_RUN=1 launch/slurm.sh  print the sbatch command and the job script, submit nothing
#
# Rerunning the same command (same RUN_NAME / WORKDIR) resumes from the latest checkpoint.
#
# Settings (environment):
#   NODES (2)            nodes; one varjax process on each
#   GPUS_PER_NODE (8)    GPUs per node, all used by that node's process
#   CPUS_PER_TASK (8 x GPUS_PER_NODE)  CPU cores of each node's process (XLA compiles
#                        with them); at most the node's cores
#   PARTITION (gpu)  TIME (04:00:00)
#   SBATCH_ARGS ('')     more sbatch options, split on spaces (--account=X --qos=Y ...)
#   RUN_NAME (airbench94)  CONFIG (experiments/airbench.py)
#   EXTRA_FLAGS ('')     more varjax flags, split on spaces (--config.num_models=512 ...)
#   WORKDIR ($PWD/workdirs/$RUN_NAME): a filesystem shared by all nodes
#   VENV ($PWD/.venv): the environment with varjax installed ('.[gpu]', see launch/README.md)
#   XLA_FLAGS            kept; --xla_gpu_deterministic_ops=true is appended unless the
#                        flag is already named in it
set -euo pipefail

NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-04:00:00}
SBATCH_ARGS=${SBATCH_ARGS:-}
RUN_NAME=${RUN_NAME:-airbench94}
CONFIG=${CONFIG:-experiments/airbench.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
WORKDIR=${WORKDIR:-$PWD/workdirs/$RUN_NAME}
VENV=${VENV:-$PWD/.venv}

# Checked before any arithmetic: bash would evaluate another value as an expression.
check_count() {
  if ! [[ "${!1}" =~ ^[1-9][0-9]*$ ]]; then
    echo "$1=${!1}: a positive whole number is needed" >&2
    exit 2
  fi
}
check_count NODES
check_count GPUS_PER_NODE
CPUS_PER_TASK=${CPUS_PER_TASK:-$((8 * GPUS_PER_NODE))}
check_count CPUS_PER_TASK
# #SBATCH lines cannot quote a path.
if [[ "$WORKDIR" =~ [[:space:]] ]]; then
  echo "WORKDIR='$WORKDIR': a path without spaces is needed (it goes into #SBATCH --output)" >&2
  exit 2
fi
if [[ "${DRY_RUN:-0}" != 1 && ! -x "$VENV/bin/python" ]]; then
  echo "VENV=$VENV has no bin/python: install varjax there first (launch/README.md)" >&2
  exit 2
fi

# One process per node rather than one per GPU: the process sees every GPU of its node, so
# no mapping between Slurm's per-task GPU binding and JAX's device ordinals can go wrong
# (with --gpus-per-task=1 each task sees its GPU as ordinal 0, but JAX's Slurm detection
# picks ordinal SLURM_LOCALID and fails on every task but the first); CIFAR-10 is loaded
# and every program compiled once per node, with all the node's cores, instead of once per
# GPU; and communication within a node stays inside one process.
# JAX's Slurm detection would still restrict each process to device SLURM_LOCALID (0 here),
# so the device list is given explicitly.
local_device_ids=$(seq -s, 0 $((GPUS_PER_NODE - 1)))

# Deterministic GPU kernels: a variance study measures how results move with the seed, so
# the same seed must give the same bits (without the flag some kernels accumulate with
# atomics in a varying order, and autotuning may pick other kernels). A user's own setting
# of the flag, either way, wins.
xla_flags=${XLA_FLAGS:-}
if [[ "$xla_flags" != *xla_gpu_deterministic_ops* ]]; then
  xla_flags="${xla_flags:+$xla_flags }--xla_gpu_deterministic_ops=true"
fi

# A command line as one string that bash reads back into the same words.
quoted() {
  local line
  line=$(printf '%q ' "$@")
  echo "${line% }"
}

# One word in single quotes (easier to read than %q for a value with spaces).
single_quoted() {
  local q="'\\''"
  echo "'${1//\'/$q}'"
}

read -ra sbatch_args <<<"$SBATCH_ARGS"
read -ra extra_flags <<<"$EXTRA_FLAGS"

# srun is given its resources explicitly: since Slurm 22.05 it no longer inherits
# --cpus-per-task from sbatch, and the step would otherwise run on one core.
srun_line=$(quoted srun --kill-on-bad-exit=1 --nodes="$NODES" --ntasks-per-node=1 \
  --cpus-per-task="$CPUS_PER_TASK" --gpus-per-node="$GPUS_PER_NODE" \
  "$VENV/bin/python" -m varjax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed \
  "${extra_flags[@]}")

script=$(cat <<JOB
#!/usr/bin/env bash
#SBATCH --job-name=varjax-$RUN_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --cpus-per-task=$CPUS_PER_TASK
#SBATCH --partition=$PARTITION
#SBATCH --time=$TIME
#SBATCH --output=$WORKDIR/slurm-%j.log
set -euo pipefail
cd $(quoted "$PWD")
export JAX_LOCAL_DEVICE_IDS=$local_device_ids
export XLA_FLAGS=$(single_quoted "$xla_flags")
# Requeued or resubmitted jobs resume from the latest checkpoint in the workdir. A process
# that dies ends the job: the others would wait for it at their next collective.
$srun_line
JOB
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  quoted mkdir -p "$WORKDIR"
  echo "$(quoted sbatch "${sbatch_args[@]}") <<'JOB'"
  echo "$script"
  echo "JOB"
else
  mkdir -p "$WORKDIR"
  sbatch "${sbatch_args[@]}" <<<"$script"
fi
