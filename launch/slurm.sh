#!/usr/bin/env bash
# varjax on a Slurm GPU cluster: one process per GPU; jax.distributed reads the
# Slurm environment (--distributed), and the 'models' axis spans every GPU.
#
#   launch/slurm.sh            submit with sbatch
#   DRY_RUN=1 launch/slurm.sh  print the sbatch command and the job script
#
# Settings (environment):
#   NODES (2)  GPUS_PER_NODE (8)  PARTITION (gpu)  TIME (04:00:00)
#   RUN_NAME (airbench94)  CONFIG (experiments/airbench.py)  EXTRA_FLAGS ('')
#   WORKDIR ($PWD/workdirs/$RUN_NAME): a filesystem shared by all nodes
#   VENV ($PWD/.venv): the environment with varjax installed (README)
set -euo pipefail

NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-04:00:00}
RUN_NAME=${RUN_NAME:-airbench94}
CONFIG=${CONFIG:-experiments/airbench.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
WORKDIR=${WORKDIR:-$PWD/workdirs/$RUN_NAME}
VENV=${VENV:-$PWD/.venv}

script=$(cat <<JOB
#!/usr/bin/env bash
#SBATCH --job-name=varjax-$RUN_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$GPUS_PER_NODE
#SBATCH --gpus-per-task=1
#SBATCH --partition=$PARTITION
#SBATCH --time=$TIME
#SBATCH --output=$WORKDIR/slurm-%j.log
set -euo pipefail
source $VENV/bin/activate
cd $PWD
# Requeued or resubmitted jobs resume from the latest checkpoint in the workdir. A task
# that dies ends the job: the others would wait for it at their next collective.
srun --kill-on-bad-exit=1 python -m varjax.main --config=$CONFIG --workdir=$WORKDIR --distributed $EXTRA_FLAGS
JOB
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "mkdir -p $WORKDIR"
  echo "sbatch <<'JOB'"
  echo "$script"
  echo "JOB"
else
  mkdir -p "$WORKDIR"
  sbatch <<<"$script"
fi
