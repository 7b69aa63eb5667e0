r"""Command line of sweeps of separate runs (run/sweep_runs.py): one sub-workdir per point.

  python -m varjax.runner --sweep=experiments/epochs_sweep.py:cpu --workdir=DIR
  python -m varjax.report --workdir=DIR
"""

from absl import app
from absl import flags

from varjax import errors
from varjax.run import compilation
from varjax.run import sweep_runs

_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file[:arg] defining get_sweep(arg).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the sweep (one sub-dir per point).')
_CACHE = flags.DEFINE_string('compilation_cache', None, compilation.FLAG_HELP)
flags.mark_flags_as_required(['sweep', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  compilation.enable_cache(_CACHE.value)
  with errors.exit_on_error('varjax.runner'):
    sweep_runs.run_sweep(sweep_runs.load_sweep(_SWEEP.value), _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
