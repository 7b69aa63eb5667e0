"""The ensemble's central promise: model k is the same model whatever else runs with it."""

import jax
import numpy as np
import pytest

from varjax import ensemble
from varjax import step as step_lib
from varjax.models import airbench

from conftest import random_images, tiny_config

NUM_TRAIN = 64


def run(num_models, first_model_id=0, models_per_chunk=1, num_devices=1, **overrides):
  """Trains a tiny ensemble on random data; returns per-model final variables and logits."""
  config = tiny_config(num_models=num_models, first_model_id=first_model_id,
                       **{'ensemble.models_per_chunk': models_per_chunk}, **overrides)
  mesh = ensemble.make_mesh(jax.devices()[:num_devices])
  ens = ensemble.Ensemble(config, NUM_TRAIN, mesh)
  images, labels = random_images(NUM_TRAIN)
  kernel = airbench.whitening_kernel_for(images, config.model)
  state = ens.init(kernel)
  for epoch, steps in ens.plan.epochs():
    orders = ens.orders(epoch)
    for s in steps:
      state, _ = ens.train_step(state, orders, images, labels, s)
  logits = ens.logits(state, jax.numpy.asarray(images[:8]))
  final = step_lib.final_variables(state, ens.plan)
  return jax.tree.map(np.asarray, final), np.asarray(logits)


@pytest.fixture(scope='module')
def four_models():
  return run(4, models_per_chunk=2)


def assert_models_equal(a, b, a_index, b_index):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x[a_index], y[b_index])


def test_models_of_a_larger_ensemble_equal_a_smaller_one(four_models):
  variables4, logits4 = four_models
  variables2, logits2 = run(2, first_model_id=2, models_per_chunk=1)
  assert_models_equal(variables4, variables2, slice(2, 4), slice(0, 2))
  np.testing.assert_array_equal(logits4[2:], logits2)


def test_sharding_over_devices_does_not_change_models(four_models):
  variables4, logits4 = four_models
  variables_sharded, logits_sharded = run(4, models_per_chunk=1, num_devices=4)
  assert_models_equal(variables4, variables_sharded, slice(None), slice(None))
  np.testing.assert_array_equal(logits4, logits_sharded)


def test_models_differ_when_every_source_varies(four_models):
  _, logits = four_models
  assert not np.allclose(logits[0], logits[1])


def test_shared_sources_make_models_identical():
  _, logits = run(2, models_per_chunk=2, **{'randomness.vary': ()})
  np.testing.assert_array_equal(logits[0], logits[1])


def test_num_models_must_divide_over_devices():
  config = tiny_config(num_models=3)
  with pytest.raises(ValueError, match='multiple of the 2 devices'):
    ensemble.Ensemble(config, NUM_TRAIN, ensemble.make_mesh(jax.devices()[:2]))


def test_model_key_depends_only_on_seed_purpose_and_id():
  k = lambda *a: jax.random.key_data(ensemble.model_key(*a))
  np.testing.assert_array_equal(k(0, 'init', 5, ('init',)), k(0, 'init', 5, ('init', 'order')))
  assert not np.array_equal(k(0, 'init', 5, ('init',)), k(0, 'init', 6, ('init',)))
  assert not np.array_equal(k(0, 'init', 5, ('init',)), k(1, 'init', 5, ('init',)))
  np.testing.assert_array_equal(k(0, 'order', 5, ()), k(0, 'order', 6, ()))


def test_models_per_chunk_follows_device_memory():
  per_model = ensemble.activation_bytes_per_model((64, 256, 256), 1024)
  # airbench94's maps at batch 1024, counted by hand: 31x31x24 whitening output, then
  # 3 tensors of each group's pre-pool map and 4 of its pooled map, x2, float32.
  floats = (961 * 24 + 3 * 961 * 64 + 4 * 225 * 64 + 3 * 225 * 256 + 4 * 49 * 256
            + 3 * 49 * 256 + 4 * 9 * 256)
  assert per_model == 2 * floats * 1024 * 4
  assert ensemble.default_models_per_chunk(256, 'gpu', 80e9, per_model) == 8  # 9 fit
  assert ensemble.default_models_per_chunk(60, 'gpu', 80e9, per_model) == 6
  assert ensemble.default_models_per_chunk(256, 'gpu', None, per_model) == 16
  assert ensemble.default_models_per_chunk(16, 'cpu', 80e9, per_model) == 4
  assert ensemble.default_models_per_chunk(7, 'cpu') == 1
