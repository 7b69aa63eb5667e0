"""Lenses on an ensemble: model independence, and the group statistics against NumPy."""

import jax
import numpy as np

from varjax import analysis
from varjax import ensemble
from varjax.run import measurements
from varjax.ensemble import mesh as mesh_lib
from varjax.training import step as step_lib
from varjax.analysis import accumulate
from varjax.models import airbench

from conftest import random_images, tiny_config

NUM_TRAIN = 64
PER_MODEL_KEYS = ('train_fit_accuracy', 'train_true_accuracy', 'corrupted_fraction',
                  'corrupted_fit_accuracy', 'corrupted_true_accuracy',
                  'sharpness_top_eigenvalue', 'sharpness_power_residual', 'sharpness_trace',
                  'sharpness_trace_stderr', 'misalignment', 'misalignment_random_basis',
                  'update_misalignment', 'update_misalignment_random_basis')
LENSES = {'lenses.sharpness': True, 'lenses.sharpness_images': 16, 'lenses.batch_size': 8,
          'lenses.power_iterations': 2, 'lenses.hutchinson_probes': 2, 'lenses.alignment': True,
          'lenses.alignment_images': 8, 'lenses.alignment_components': 2,
          'lenses.train_eval_size': 16,
          # Smaller programs to compile; the same maths.
          'eval.tta_level': 0, 'ensemble.conv_weight_grad': 'xla'}


def measured(num_models, first_model_id=0, models_per_chunk=1, **overrides):
  config = tiny_config(num_models=num_models, first_model_id=first_model_id,
                       **{'ensemble.models_per_chunk': models_per_chunk}, **LENSES, **overrides)
  ens = ensemble.Ensemble(config, NUM_TRAIN, mesh_lib.make_mesh(jax.devices()[:1]))
  images, labels = random_images(NUM_TRAIN)
  # At init: the lens programs are what is tested (training's independence is
  # ensemble_test's), and skipping the step keeps the test to its compiles.
  state = ens.init(step_lib.whitening_kernel_for(images, config.model))
  to_host = lambda t: jax.tree.map(np.asarray, t)
  context = measurements.Context(config, ens, jax.numpy.asarray(images),
                                 jax.numpy.asarray(labels), to_host)
  member = accumulate.group_membership(ens.groups, int(ens.groups.max()) + 1)
  rng = np.random.default_rng(0)
  evaluation = measurements.Evaluation(
      {'accuracy': rng.random(num_models), 'margin_quantiles': rng.random((num_models, 5))},
      member)
  per_model, groups, settings = {}, {}, {}
  for m in measurements.enabled(context):
    found = m.after_training(state, evaluation)
    per_model.update(found.per_model)
    groups.update(found.per_group)
    settings.update(found.summary['lenses'])
  return per_model, groups, settings


def test_a_model_lenses_are_the_same_alone_and_in_a_mixed_noise_ensemble():
  noise = {'sweep.label_noise': (0.0, 1.0), 'sweep.seeds_per_point': 1}
  values, groups, settings = measured(2, **noise)
  alone, _, _ = measured(1, first_model_id=1, **{'train.label_noise': 1.0})
  assert set(values) == set(PER_MODEL_KEYS)
  for key in PER_MODEL_KEYS:
    np.testing.assert_array_equal(values[key][1:], alone[key], err_msg=key)
  assert values['corrupted_fraction'][0] == 0 and values['corrupted_fraction'][1] > 0.5
  assert np.isnan(values['corrupted_fit_accuracy'][0])
  assert np.all(np.isfinite(values['sharpness_top_eigenvalue']))
  assert np.all(np.isfinite(values['misalignment']))
  assert np.all(np.isnan(values['update_misalignment']))  # no update yet: no covariance
  assert settings['sharpness']['images'] == 16 and settings['alignment']['components'] == 2
  assert groups['group_misalignment'].shape == (2,)
  assert groups['sharpness_trace_margin_quantile_corr'].shape == (2, 5)


def test_lens_stats_match_numpy_per_group():
  rng = np.random.default_rng(1)
  groups = np.array([0, 0, 0, 1, 1, 1, 1, -1])  # model 7 diverged: in no group
  member = accumulate.group_membership(groups, 2)
  x = rng.normal(size=8)
  x[2] = np.nan  # undefined for model 2: it leaves this value's statistics
  accuracy, quantiles = rng.random(8), rng.random((8, 3))
  out = analysis.lens_stats({'v': x}, accuracy, quantiles, member)
  for g, rows in ((0, [0, 1]), (1, [3, 4, 5, 6])):
    np.testing.assert_allclose(out['mean_v'][g], x[rows].mean(), rtol=1e-5)
    np.testing.assert_allclose(out['std_v'][g], x[rows].std(ddof=1), rtol=1e-4)
    np.testing.assert_allclose(out['v_accuracy_corr'][g],
                               np.corrcoef(x[rows], accuracy[rows])[0, 1], rtol=1e-4)
    for q in range(3):
      np.testing.assert_allclose(out['v_margin_quantile_corr'][g, q],
                                 np.corrcoef(x[rows], quantiles[rows, q])[0, 1], rtol=1e-4,
                                 atol=1e-6)
  assert 'w_accuracy_corr' not in analysis.lens_stats({'w': x}, accuracy, quantiles, member,
                                                      correlate=())
