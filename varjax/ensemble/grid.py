"""Hyperparameter sweeps inside one ensemble: G grid points x S seeds = N models.

A sweep that only changes per-model numbers (learning rate, weight decay, label
smoothing) shares one program: the values become arrays over the models axis
and the grid point of each model becomes its analysis group. Model k (k-th of
the run) belongs to point k // S; its seed-derived randomness still comes from
its id alone, so model k of a sweep equals a single-point run of model k at the
same values (tests/sweep_test.py).

Config (``config.sweep``): ``lr_multipliers``, ``weight_decay_multipliers``
(of ``opt.lr`` / ``opt.weight_decay``), ``label_smoothings`` and
``label_noise`` (absolute values; label_noise.py); the grid is their
Cartesian product (an empty list: the config's value).
``seeds_per_point`` models per point; ``num_models`` must equal points x seeds.

Example:
  >>> config.sweep.lr_multipliers = (0.5, 1.0, 2.0)     # doctest: +SKIP
  >>> config.sweep.seeds_per_point = 8                   # doctest: +SKIP
  >>> config.num_models = 24                             # doctest: +SKIP
  >>> grid_points(config)[0]                             # doctest: +SKIP
  {'lr_multiplier': 0.5, 'lr': 5.75, 'weight_decay_multiplier': 1.0, ...}
"""

import itertools

import numpy as np

from varjax.training import optim
from varjax.errors import ConfigError

AXES = ('lr_multipliers', 'weight_decay_multipliers', 'label_smoothings', 'label_noise')


def is_sweep(config):
  return any(len(config.sweep[axis]) for axis in AXES)


def grid_points(config):
  """The grid in config units, one dict per point (point g is group g).

  Keys: lr_multiplier, lr, weight_decay_multiplier, weight_decay, label_smoothing,
  label_noise.
  """
  s = config.sweep
  lr_mults = tuple(s.lr_multipliers) or (1.0,)
  wd_mults = tuple(s.weight_decay_multipliers) or (1.0,)
  smoothings = tuple(s.label_smoothings) or (config.train.label_smoothing,)
  noises = tuple(s.label_noise) or (config.train.label_noise,)
  return [{'lr_multiplier': float(a), 'lr': config.opt.lr * a,
           'weight_decay_multiplier': float(b), 'weight_decay': config.opt.weight_decay * b,
           'label_smoothing': float(c), 'label_noise': float(d)}
          for a, b, c, d in itertools.product(lr_mults, wd_mults, smoothings, noises)]


def seeds_per_point(config):
  """Models per grid point; checks that num_models = points x seeds."""
  points = len(grid_points(config))
  seeds = config.sweep.seeds_per_point
  if not is_sweep(config):
    return config.num_models
  grid = ' x '.join(f'sweep.{axis} ({len(config.sweep[axis])})' for axis in AXES
                    if len(config.sweep[axis]))
  if seeds is None:
    raise ConfigError(f'sweep.seeds_per_point is unset for a sweep of {points} points; set it '
                      f'and --config.num_models to points x seeds (grid: {grid}).')
  if seeds < 1 or config.num_models != points * seeds:
    raise ConfigError(f'num_models={config.num_models} must equal {points} grid points x '
                      f'sweep.seeds_per_point={seeds} = {points * seeds} (grid: {grid}).')
  return seeds


def model_groups(config, num_models):
  """(N,) int32 grid point of each model of the run."""
  return (np.arange(num_models) // seeds_per_point(config)).astype(np.int32)


def model_hparams(config, num_models):
  """Per-model hyperparameters in the SGD step's units, float32 arrays of shape (N,)."""
  points = grid_points(config)
  groups = model_groups(config, num_models)
  values = {}
  for name in ('lr', 'weight_decay', 'label_smoothing', 'label_noise'):
    values[name] = np.array([points[g][name] for g in groups], np.float64)
  lr, wd = optim.sgd_units(values['lr'], values['weight_decay'], config.opt.momentum,
                           config.train.batch_size, config.opt.lr_reference_batch)
  return {'lr': lr.astype(np.float32), 'weight_decay': wd.astype(np.float32),
          'label_smoothing': values['label_smoothing'].astype(np.float32),
          'label_noise': values['label_noise'].astype(np.float32)}


def swept_values(config):
  """Per point, only the values that the sweep varies (empty dicts without a sweep)."""
  s = config.sweep
  keys = ((('lr', 'lr_multiplier') if len(s.lr_multipliers) else ())
          + (('weight_decay', 'weight_decay_multiplier') if len(s.weight_decay_multipliers)
             else ()) + (('label_smoothing',) if len(s.label_smoothings) else ())
          + (('label_noise',) if len(s.label_noise) else ()))
  return [{k: p[k] for k in keys} for p in grid_points(config)]


def point_names(config):
  """Short labels of the grid points, naming only the swept values ('lr=5.75 (x0.5)')."""
  names = []
  for values in swept_values(config):
    parts = []
    if 'lr' in values:
      parts.append(f"lr={values['lr']:.4g} (x{values['lr_multiplier']:g})")
    if 'weight_decay' in values:
      parts.append(f"wd={values['weight_decay']:.4g} (x{values['weight_decay_multiplier']:g})")
    if 'label_smoothing' in values:
      parts.append(f"ls={values['label_smoothing']:g}")
    if 'label_noise' in values:
      parts.append(f"noise={values['label_noise']:g}")
    names.append(' '.join(parts) or 'all models')
  return names
