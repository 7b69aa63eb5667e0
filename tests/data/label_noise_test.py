"""Label noise: its statistics, its purity, the sweep axis, and the step that trains on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from varjax import keys
from varjax.config import schema
from varjax.data import label_noise
from varjax.training import recipe as recipe_lib
from varjax.training import step as step_lib
from varjax.ensemble import grid as sweep
from varjax.models import airbench

from conftest import load_experiment, random_images, tiny_config


def test_corruption_rate_and_uniform_replacement():
  n, k = 20_000, 10
  labels = jnp.asarray(np.arange(n) % k, jnp.int32)
  same = lambda a: np.asarray(a) == np.asarray(labels)
  np.testing.assert_array_equal(label_noise.corrupt(keys.label_noise_key(0, 1), labels, 0.0, k),
                                labels)
  # Each label is replaced with probability p by a uniform class, which keeps the
  # true class 1/K of the time: the changed share is binomial with p (1 - 1/K).
  for p in (0.3, 1.0):
    noisy = label_noise.corrupt(keys.label_noise_key(0, 1), labels, p, k)
    changed = (~same(noisy)).sum()
    assert stats.binomtest(int(changed), n, p * (1 - 1 / k)).pvalue > 1e-3
  # Random labels (p = 1): uniform over classes and independent of the true label.
  table = np.histogram2d(np.asarray(labels), np.asarray(noisy), bins=k)[0]
  assert stats.chi2_contingency(table).pvalue > 1e-3
  assert stats.chisquare(table.sum(0)).pvalue > 1e-3


def test_corruption_is_a_function_of_seed_and_model_id_alone():
  labels = jnp.arange(500, dtype=jnp.int32) % 10
  draw = lambda seed, model_id: np.asarray(
      label_noise.corrupt(keys.label_noise_key(seed, model_id), labels, 0.5, 10))
  np.testing.assert_array_equal(draw(0, 3), draw(0, 3))
  assert not np.array_equal(draw(0, 3), draw(0, 4))
  assert not np.array_equal(draw(0, 3), draw(1, 3))
  # A traced per-model fraction (as in the ensemble) gives the same labels.
  traced = jax.jit(lambda f: label_noise.corrupt(keys.label_noise_key(0, 3), labels, f, 10))
  np.testing.assert_array_equal(traced(jnp.float32(0.5)), draw(0, 3))


def test_label_noise_is_a_sweep_axis():
  c = tiny_config(**{'sweep.label_noise': (0.0, 0.5, 1.0), 'sweep.seeds_per_point': 2,
                     'num_models': 6})
  schema.check(c)
  assert [p['label_noise'] for p in sweep.grid_points(c)] == [0.0, 0.5, 1.0]
  np.testing.assert_array_equal(sweep.model_hparams(c, 6)['label_noise'],
                                np.float32([0, 0, 0.5, 0.5, 1, 1]))
  assert sweep.point_names(c) == ['noise=0', 'noise=0.5', 'noise=1']
  assert recipe_lib.Recipe.from_config(c, 64).label_noise
  assert not recipe_lib.Recipe.from_config(tiny_config(), 64).label_noise
  with pytest.raises(schema.ConfigError, match=r'label_noise must be a number in \[0, 1\]'):
    schema.check(tiny_config(**{'train.label_noise': 1.5}))
  for variant in ('', 'cpu', 'smoke'):
    schema.check(load_experiment('label_noise', variant))


def test_step_trains_on_the_corrupted_labels():
  """With noise the step equals a noise-free step on the corrupted labels; at 0 it is unchanged."""
  config = tiny_config(**{'train.label_noise': 0.5})
  recipe = recipe_lib.Recipe.from_config(config, num_train=32)
  clean_plan = recipe_lib.Recipe.from_config(tiny_config(), num_train=32)
  model = airbench.Airbench(widths=(4, 8, 8))
  images, labels = random_images(32)
  kernel = step_lib.whitening_kernel_for(images, config.model)
  hparams = jax.tree.map(lambda v: v[0], sweep.model_hparams(config, 1))
  state = step_lib.init_model_state(model, jax.random.key(0), kernel, hparams, recipe)
  order = jnp.arange(32, dtype=jnp.int32)
  key, noise = jax.random.key(1), keys.label_noise_key(0, 0)
  noisy_step = jax.jit(step_lib.make_train_step(model, recipe))
  noisy = noisy_step(state, hparams, key, order, images, labels, 0, noise)
  corrupted = label_noise.corrupt(noise, labels, 0.5, 10)
  assert not np.array_equal(corrupted, labels)
  clean_step = jax.jit(step_lib.make_train_step(model, clean_plan))
  on_corrupted = clean_step(state, hparams, key, order, images, corrupted, 0)
  for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(on_corrupted)):
    np.testing.assert_array_equal(a, b)
  zero = {**hparams, 'label_noise': jnp.float32(0)}
  at_zero = noisy_step(state, zero, key, order, images, labels, 0, noise)
  for a, b in zip(jax.tree.leaves(at_zero), jax.tree.leaves(clean_step(state, zero, key, order,
                                                                         images, labels, 0))):
    np.testing.assert_array_equal(a, b)
