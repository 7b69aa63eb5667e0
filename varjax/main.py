r"""Command line of one run: parses flags and calls ``run.train.train_and_evaluate``.

  python -m varjax.main --config=experiments/airbench.py:cpu --workdir=/tmp/run \
      [--config.num_models=32 --config.opt.lr=10.0 ...]

Multi-host: ``--coordinator_address=HOST:PORT --num_processes=P --process_id=I``
(or the environment of a TPU pod / Slurm job with ``--distributed``).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import errors
from varjax.run import compilation
from varjax.config import command_line
from varjax.run import distributed
from varjax.run import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for outputs and checkpoints.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'HOST:PORT of process 0 for jax.distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process in a multi-host run.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Initialise jax.distributed from the environment '
                                 '(TPU pod, Slurm) without explicit addresses.')
_CACHE = flags.DEFINE_string('compilation_cache', None, compilation.FLAG_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _COORDINATOR.value or _DISTRIBUTED.value:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  compilation.enable_cache(_CACHE.value)
  with errors.exit_on_error('varjax'):
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=command_line.flags_parser)
