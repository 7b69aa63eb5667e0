r"""Prints the throughput benchmark (bench/throughput.py), one JSON line per record.

  python -m varjax.bench --config=experiments/airbench.py:cpu --models=8,32 --steps=5 \
      [--peer="PYTHON benchmarks/torch_peer.py"]
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import errors
from varjax.run import compilation
from varjax.bench import throughput
from varjax.config import command_line
from varjax.config import schema

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].')
_MODELS = flags.DEFINE_list('models', ['8', '32'], 'Ensemble sizes to time.')
_FORMULATIONS = flags.DEFINE_list('formulations', ['auto'],
                                  'ensemble.formulation values to compare.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per setting (after one warm-up).')
_SEQUENTIAL = flags.DEFINE_bool('sequential', True, 'Also time one model at a time.')
_EVAL = flags.DEFINE_bool('eval', True, 'Also time evaluation with the analysis kernel.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timing windows per setting; the best is kept.')
_PEER = flags.DEFINE_string('peer', None, 'Command of a peer trainer to time in the same run '
                            '(e.g. "python benchmarks/torch_peer.py"); it must print a JSON '
                            'line with model_images_per_s.')
_CACHE = flags.DEFINE_string('compilation_cache', None, compilation.FLAG_HELP)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  compilation.enable_cache(_CACHE.value)
  with errors.exit_on_error('varjax.bench'):
    schema.check(_CONFIG.value)
    for record in throughput.benchmark(
        _CONFIG.value, [int(n) for n in _MODELS.value], _FORMULATIONS.value, _STEPS.value,
        _SEQUENTIAL.value, _EVAL.value, _REPEATS.value, _PEER.value):
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=command_line.flags_parser)
