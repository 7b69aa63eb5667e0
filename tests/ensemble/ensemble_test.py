"""The ensemble's central promise: model k is the same model whatever else runs with it."""

import jax
import numpy as np
import pytest

from varjax import ensemble
from varjax import keys
from varjax.ensemble import mesh as mesh_lib
from varjax.training import step as step_lib
from varjax.models import airbench

from conftest import random_images, tiny_config
from runs import NUM_TRAIN, assert_models_equal, run

@pytest.fixture(scope='module')
def four_models():
  return run(4, models_per_chunk=2)


def test_models_of_a_larger_ensemble_equal_a_smaller_one(four_models):
  variables4, outputs4 = four_models
  variables2, outputs2 = run(2, first_model_id=2, models_per_chunk=1)
  assert_models_equal(variables4, variables2, slice(2, 4), slice(0, 2))
  assert_models_equal(outputs4, outputs2, slice(2, 4), slice(0, 2))


def test_sharding_over_devices_does_not_change_models(four_models):
  variables4, outputs4 = four_models
  variables_sharded, outputs_sharded = run(4, models_per_chunk=1, num_devices=4)
  assert_models_equal(variables4, variables_sharded, slice(None), slice(None))
  assert_models_equal(outputs4, outputs_sharded, slice(None), slice(None))


def test_scan_chunk_loop_computes_the_same_probes(four_models):
  _, outputs4 = four_models
  _, scanned = run(4, models_per_chunk=2, **{'ensemble.chunk_loop': 'scan'})
  np.testing.assert_allclose(scanned['logits'], outputs4['logits'], rtol=1e-4, atol=1e-5)
  for key in ('depth', 'forgetting'):
    for x, y in zip(jax.tree.leaves(scanned[key]), jax.tree.leaves(outputs4[key])):
      np.testing.assert_array_equal(x, y)


def test_grad_of_sum_formulation_trains_the_same_models(four_models):
  # value_and_grad of the summed loss over a chunk's stacked parameters: each
  # model's gradient is its own (models share nothing); only roundoff differs.
  variables4, outputs4 = four_models
  variables, outputs = run(4, models_per_chunk=2, **{'ensemble.formulation': 'grad_of_sum'})
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(variables4)):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * max(np.abs(want).max(), 1e-3))
  np.testing.assert_allclose(outputs['logits'], outputs4['logits'], rtol=1e-3, atol=1e-3)


def test_models_differ_when_every_source_varies(four_models):
  _, outputs = four_models
  assert not np.allclose(outputs['logits'][0], outputs['logits'][1])
  assert int(outputs['forgetting']['epochs'][0]) == 2  # 1.5 epochs: two records
  # Depth counts the probes (8 places by default) whose k-NN prediction disagrees last.
  assert outputs['depth'].min() >= 0 and outputs['depth'].max() <= 8


def test_shared_sources_make_models_identical():
  _, outputs = run(2, models_per_chunk=2, **{'randomness.vary': ()})
  for x in jax.tree.leaves(outputs):
    np.testing.assert_array_equal(x[0], x[1])


def test_num_models_must_divide_over_devices():
  config = tiny_config(num_models=3)
  with pytest.raises(ValueError, match='multiple of the 2 devices'):
    ensemble.Ensemble(config, NUM_TRAIN, mesh_lib.make_mesh(jax.devices()[:2]))


def test_model_key_depends_only_on_seed_purpose_and_id():
  k = lambda *a: jax.random.key_data(keys.model_key(*a))
  np.testing.assert_array_equal(k(0, 'init', 5, ('init',)), k(0, 'init', 5, ('init', 'order')))
  assert not np.array_equal(k(0, 'init', 5, ('init',)), k(0, 'init', 6, ('init',)))
  assert not np.array_equal(k(0, 'init', 5, ('init',)), k(1, 'init', 5, ('init',)))
  np.testing.assert_array_equal(k(0, 'order', 5, ()), k(0, 'order', 6, ()))


@pytest.mark.parametrize('chunk_loop', ['host', 'scan'])
def test_step_programs_compile_with_the_step_compiler_options(monkeypatch, chunk_loop):
  # An option XLA rejects must surface at the step's compile (init compiles fine):
  # the step programs really receive what ensemble_options.step_compiler_options gives.
  monkeypatch.setattr(ensemble.options, 'step_compiler_options',
                      lambda library, platform: {'xla_cpu_no_such_option': True})
  config = tiny_config(num_models=2, **{'ensemble.chunk_loop': chunk_loop})
  ens = ensemble.Ensemble(config, NUM_TRAIN, mesh_lib.make_mesh(jax.devices()[:1]))
  images, labels = random_images(NUM_TRAIN)
  state = ens.init(step_lib.whitening_kernel_for(images, config.model))
  with pytest.raises(Exception, match='xla_cpu_no_such_option'):
    ens.train_step(state, ens.orders(0), images, labels, 0)
