"""Every committed experiment file and variant loads and passes the config check."""

import pytest

from varjax.config import schema
from varjax.config import files as config_files
from conftest import REPO

CONFIGS = {'airbench.py': ('', 'cpu', 'smoke'), 'lr_sweep.py': ('', 'cpu', 'smoke'),
           'binary.py': ('cpu', 'smoke'), 'label_noise.py': ('', 'cpu', 'smoke')}
SWEEPS = {'epochs_sweep.py': ('', 'cpu', 'converge', 'converge_1k', 'smoke'),
          'randomness_sweep.py': ('cpu', 'power_short', 'power_long', 'smoke'),
          'batch_sweep.py': ('', 'cpu', 'smoke'), 'scale_sweep.py': ('cpu', 'smoke')}


@pytest.mark.parametrize('name,variant', [(n, v) for n, vs in CONFIGS.items() for v in vs])
def test_config_variants_pass_the_check(name, variant):
  config = config_files.load_config(f"{REPO / 'experiments' / name}:{variant}")
  schema.check(config)


@pytest.mark.parametrize('name,variant', [(n, v) for n, vs in SWEEPS.items() for v in vs])
def test_sweep_points_pass_the_check(name, variant):
  points = config_files.load_module(str(REPO / 'experiments' / name)).get_sweep(variant or None)
  assert len({p['name'] for p in points}) == len(points) >= 2
  for point in points:
    schema.check(point['config'])


def test_randomness_sweep_varies_one_source_per_point():
  points = config_files.load_module(str(REPO / 'experiments' / 'randomness_sweep.py')).get_sweep(
      'cpu')
  varies = {p['values']['varies']: tuple(p['config'].randomness.vary) for p in points}
  assert varies == {'init': ('init',), 'order': ('order',), 'augment': ('augment',),
                    'all': ('init', 'order', 'augment')}
  assert len({p['config'].train.epochs for p in points}) == 1  # one training length


@pytest.mark.parametrize('name', [*CONFIGS, *SWEEPS])
def test_an_unknown_variant_is_one_line_naming_the_file_and_every_choice(name):
  module = config_files.load_module(str(REPO / 'experiments' / name))
  make = module.get_config if name in CONFIGS else module.get_sweep
  with pytest.raises(ValueError) as error:
    make('nope')
  message = str(error.value)
  assert '\n' not in message and f"'nope' of experiments/{name}" in message
  known = (CONFIGS | SWEEPS)[name]
  assert all(repr(v) in message for v in known if v)  # '' is the default's name
  assert ("''" in message) == ('' in known)
