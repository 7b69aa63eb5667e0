"""Loading experiment files (``get_config(arg)`` / ``get_sweep(arg)``) by path.

Example:
  >>> config = load_config('experiments/airbench.py:cpu')   # doctest: +SKIP
"""

import importlib.util
import os

from varjax.errors import ConfigError


def load_module(path):
  """The Python file at ``path`` as a fresh module."""
  if not os.path.exists(path):
    raise ConfigError(f'Experiment file {path} does not exist.')
  name = 'varjax_experiment_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec):
  """``get_config(arg)`` of ``path[:arg]``."""
  path, _, arg = spec.partition(':')
  return load_module(path).get_config(arg or None)


def sibling_config(this_file, name, variant):
  """The config of experiment ``name`` beside ``this_file`` (for experiments built on others)."""
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
  return load_module(path).get_config(variant)


def pick_variant(this_file, arg, choices, default='default'):
  """The variant ``arg`` names (``default`` when empty), or a one-line error naming the choices.

  >>> pick_variant('experiments/x.py', None, ('default', 'cpu'))
  'default'
  """
  variant = arg or default
  if variant not in choices:
    named = ', '.join("''" if c == 'default' else repr(c) for c in choices)
    raise ConfigError(f'Unknown variant {arg!r} of experiments/{os.path.basename(this_file)}; '
                     f'choose one of {named}.')
  return variant
