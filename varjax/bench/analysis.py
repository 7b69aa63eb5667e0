r"""Prints the analysis, difficulty and lens costs (bench/costs.py), one JSON line per record.

  python -m varjax.bench.analysis --config=experiments/airbench.py:cpu \
      --models=16,128,512 --batch=200 [--difficulty=false] [--lenses]
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import errors
from varjax.run import compilation
from varjax.bench import costs
from varjax.config import command_line
from varjax.config import schema

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].')
_MODELS = flags.DEFINE_list('models', ['16', '128', '512'], 'Ensemble sizes.')
_BATCH = flags.DEFINE_integer('batch', 200, 'Test images per batch.')
_EXAMPLES = flags.DEFINE_integer('examples', 10_000, 'Test-set size n of the analysis state.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repetitions (after one warm-up).')
_DIFFICULTY = flags.DEFINE_bool('difficulty', True, 'Also time each example-difficulty probe.')
_LENSES = flags.DEFINE_bool('lenses', False, 'Also time each per-model lens (config.lenses).')
_CACHE = flags.DEFINE_string('compilation_cache', None, compilation.FLAG_HELP)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  compilation.enable_cache(_CACHE.value)
  with errors.exit_on_error('varjax.bench.analysis'):
    schema.check(_CONFIG.value)
    for record in costs.analysis_costs(_CONFIG.value, [int(n) for n in _MODELS.value],
                                       _BATCH.value, _EXAMPLES.value, _REPEATS.value,
                                       _DIFFICULTY.value, _LENSES.value):
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=command_line.flags_parser)
