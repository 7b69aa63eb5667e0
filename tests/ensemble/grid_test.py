"""Sweeps in one ensemble: the grid, the groups, and per-model hyperparameters."""

import jax
import numpy as np
import pytest

from varjax.config import schema
from varjax.ensemble import grid as sweep
from conftest import load_experiment, tiny_config
from runs import assert_models_equal, run


def sweep_config(**overrides):
  return tiny_config(**{'sweep.lr_multipliers': (0.5, 2.0), 'sweep.seeds_per_point': 2,
                        'num_models': 4, **overrides})


def test_grid_is_the_product_of_swept_axes():
  c = sweep_config(**{'sweep.label_smoothings': (0.0, 0.1, 0.2), 'num_models': 12})
  points = sweep.grid_points(c)
  assert len(points) == 6
  assert [p['lr_multiplier'] for p in points] == [0.5] * 3 + [2.0] * 3
  assert [p['label_smoothing'] for p in points] == [0.0, 0.1, 0.2] * 2
  assert points[3]['lr'] == c.opt.lr * 2.0 and points[0]['weight_decay'] == c.opt.weight_decay
  np.testing.assert_array_equal(sweep.model_groups(c, 12), np.repeat(np.arange(6), 2))
  assert sweep.point_names(c)[0] == f'lr={c.opt.lr * 0.5:.4g} (x0.5) ls=0'


def test_per_model_hparams_in_sgd_units():
  c = sweep_config()
  h = sweep.model_hparams(c, 4)
  # SPEC §1: lr / (1024 (1 + 1/(1 - momentum))); wd * batch / (the same scale).
  scale = 1024 * (1 + 1 / (1 - c.opt.momentum))
  for k, mult in enumerate((0.5, 0.5, 2.0, 2.0)):
    np.testing.assert_allclose(h['lr'][k], c.opt.lr * mult / scale, rtol=1e-6)
    np.testing.assert_allclose(h['weight_decay'][k],
                               c.opt.weight_decay * c.train.batch_size / scale, rtol=1e-6)
  np.testing.assert_array_equal(h['label_smoothing'], np.float32(c.train.label_smoothing))


def test_no_sweep_is_one_group():
  c = tiny_config(num_models=3)
  assert not sweep.is_sweep(c) and sweep.point_names(c) == ['all models']
  np.testing.assert_array_equal(sweep.model_groups(c, 3), 0)


@pytest.mark.parametrize('overrides, match', [
    ({'num_models': 5}, 'must equal 2 grid points x sweep.seeds_per_point=2 = 4'),
    ({'sweep.seeds_per_point': None}, 'seeds_per_point is unset'),
])
def test_grid_and_model_count_must_fit(overrides, match):
  with pytest.raises(schema.ConfigError, match=match):
    schema.check(sweep_config(**overrides))


def test_shipped_sweep_configs_are_valid():
  for variant in ('', 'cpu', 'smoke'):
    c = load_experiment('lr_sweep', variant)
    schema.check(c)
  assert len(sweep.grid_points(load_experiment('lr_sweep', ''))) == 13


def test_model_in_mixed_lr_ensemble_equals_single_lr_run():
  """Model 3 (lr x2 in the sweep) equals model 3 trained alone with opt.lr = 2 * lr."""
  base_lr = tiny_config().opt.lr
  variables, outputs = run(4, models_per_chunk=2, **{'sweep.lr_multipliers': (0.5, 2.0),
                                                     'sweep.seeds_per_point': 2})
  alone, alone_outputs = run(1, first_model_id=3, **{'opt.lr': base_lr * 2.0})
  assert_models_equal(variables, alone, 3, 0)
  assert_models_equal(outputs, alone_outputs, 3, 0)  # logits and difficulty probes
  # The two lrs did train differently.
  other, _ = run(1, first_model_id=3)
  assert not all(np.array_equal(a[0], b[3]) for a, b in
                 zip(jax.tree.leaves(other), jax.tree.leaves(variables)))
