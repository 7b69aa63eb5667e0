"""summary.json and per_example.npz from hand-made analysis results: the schema report.py reads.

Under 1 s (no JAX program runs).
"""

import json
import types

import numpy as np
import pytest

from varjax.run import files
from varjax.run import measurements
from varjax.run import summary as summary_lib

from conftest import tiny_config

SWEEP = {'sweep.lr_multipliers': (0.5, 2.0), 'sweep.seeds_per_point': 2}


def test_json_value_is_floats_and_lists_with_nan_as_null():
  assert summary_lib.json_value(np.float32(0.25)) == 0.25
  assert summary_lib.json_value(np.float32(np.nan)) is None
  assert summary_lib.json_value(np.array([3, 4], np.int32)) == [3, 4]
  assert summary_lib.json_value(np.array([[0.5, np.nan], [1.0, 2.0]])) == [[0.5, None],
                                                                          [1.0, 2.0]]
  assert type(summary_lib.json_value(np.float32(1.5))) is float  # JSON-serialisable


def test_analysis_settings_are_the_configs():
  config = tiny_config()
  settings = summary_lib.analysis_settings(config)
  a = config.analysis
  assert settings['seeds_needed_deltas'] == list(a.seeds_needed_deltas)
  assert (settings['seeds_needed_power'], settings['seeds_needed_alpha'],
          settings['ensemble_subsets']) == (a.seeds_needed_power, a.seeds_needed_alpha,
                                            a.ensemble_subsets)
  assert settings['confidence_level'] == 0.95


def fake_results(num_models, num_groups, num_test, rng):
  return {'accuracy': rng.uniform(size=num_models).astype(np.float32),
          'ece': np.array([0.1, np.nan, 0.2, 0.3], np.float32)[:num_models],
          'mean_accuracy': rng.uniform(size=num_groups).astype(np.float32),
          'std_accuracy_ci': rng.uniform(size=(num_groups, 2)),
          'num_models': np.full(num_groups, num_models // num_groups, np.int32),
          # 0-padded ensemble-size ladders: group 1's is cut to its used sizes.
          'ensemble_sizes': np.array([[1, 2], [1, 0]], np.int32),
          'ensemble_size_accuracy_vote': np.array([[0.5, 0.6], [0.4, 0.0]]),
          'ensemble_size_accuracy_softmax': np.array([[0.5, 0.7], [0.4, 0.0]]),
          'example_accuracy': rng.uniform(size=(num_groups, num_test)),
          'prediction_depth': rng.integers(0, 8, size=(num_models, num_test)),
          'churn': rng.uniform(size=(num_models, num_models))}


def test_write_summary_writes_what_report_and_runner_read(tmp_path):
  config = tiny_config(num_models=4, first_model_id=10, **SWEEP)
  groups = np.array([0, 0, 1, 1], np.int32)
  ens = types.SimpleNamespace(config=config, groups=groups, num_models=4, num_tracked=0,
                              model_ids=np.arange(10, 14))
  rng = np.random.default_rng(0)
  results, extra = fake_results(4, 2, 5, rng), fake_results(4, 2, 3, rng)
  train = {'loss': np.array([1.0, np.nan, 2.0, 3.0]), 'accuracy': np.full(4, 0.5)}
  diverged = np.array([-1, 7, -1, -1])
  run_info = {'name': 'tiny', 'seed': 3}
  test_labels = np.arange(5) % 10
  lens = measurements.Measured(
      per_model={'sharpness_trace': np.array([1.0, np.nan, 3.0, 4.0])},
      per_group={'mean_sharpness_trace': np.array([1.0, 3.5])},
      per_example={'probe_labels': np.arange(3)},
      summary={'lenses': {'sharpness': {'images': 8, 'seconds': np.float64(1.5)}}})
  other = measurements.Measured({}, {}, {}, {'lenses': {'alignment': {'images': 4}},
                                             'depth_probes': ['input']})
  got = summary_lib.write_summary(str(tmp_path), ens, run_info, train, results, test_labels,
                                  diverged, [('shifted', np.zeros(3), extra)], (lens, other))

  assert sorted(p.name for p in tmp_path.iterdir()) == [summary_lib.PER_EXAMPLE_FILE,
                                                        summary_lib.SUMMARY_FILE]
  assert json.loads((tmp_path / summary_lib.SUMMARY_FILE).read_text()) == got
  assert got['name'] == 'tiny' and got['num_models'] == 4
  assert got['diverged'] == [{'id': 11, 'step': 7}]
  models = got['models']
  assert [m['id'] for m in models] == [10, 11, 12, 13]
  assert [m['group'] for m in models] == [0, 0, 1, 1]
  assert [m['seed'] for m in models] == [3] * 4
  assert [m['diverged_at_step'] for m in models] == [None, 7, None, None]
  assert models[1]['train_loss'] is None and models[1]['ece'] is None
  np.testing.assert_allclose([m['test_accuracy'] for m in models], results['accuracy'])
  base_lr = config.opt.lr
  assert [m['lr'] for m in models] == [0.5 * base_lr] * 2 + [2.0 * base_lr] * 2
  rows = got['groups']
  assert [r['values'] for r in rows] == [{'lr': m * base_lr, 'lr_multiplier': m}
                                         for m in (0.5, 2.0)]
  np.testing.assert_allclose([r['mean_accuracy'] for r in rows], results['mean_accuracy'],
                             rtol=1e-6)
  assert rows[0]['ensemble_sizes'] == [1, 2] and rows[1]['ensemble_sizes'] == [1]
  assert rows[1]['ensemble_size_accuracy_vote'] == [0.4]
  assert [r['num_models'] for r in rows] == [2, 2]
  (shifted,) = got['extra_test_sets']
  assert shifted['name'] == 'shifted' and shifted['num_test'] == 3
  np.testing.assert_allclose([m['test_accuracy'] for m in shifted['models']], extra['accuracy'])
  assert got['margin_quantile_levels'] == list(config.analysis.margin_quantiles)
  assert got['seeds_needed_deltas'] == list(config.analysis.seeds_needed_deltas)
  assert 'forgetting' not in got
  # Measurements: values per model and group, sections merged, arrays in the npz.
  assert [m['sharpness_trace'] for m in models] == [1.0, None, 3.0, 4.0]
  assert [r['mean_sharpness_trace'] for r in rows] == [1.0, 3.5]
  assert got['lenses'] == {'sharpness': {'images': 8, 'seconds': 1.5},
                           'alignment': {'images': 4}}
  assert got['depth_probes'] == ['input']

  with np.load(tmp_path / summary_lib.PER_EXAMPLE_FILE) as npz:
    np.testing.assert_array_equal(npz['labels'], test_labels)
    np.testing.assert_array_equal(npz['groups'], groups)
    np.testing.assert_array_equal(npz['example_accuracy'], results['example_accuracy'])
    np.testing.assert_array_equal(npz['churn'], results['churn'])
    assert npz['prediction_depth'].dtype == np.int8
    np.testing.assert_array_equal(npz['prediction_depth'], results['prediction_depth'])
    np.testing.assert_array_equal(npz['shifted/example_accuracy'], extra['example_accuracy'])
    assert 'shifted/churn' not in npz  # extra sets keep their per-example arrays only
    np.testing.assert_array_equal(npz['probe_labels'], np.arange(3))


def test_write_json_atomic_replaces_whole_files(tmp_path):
  path = str(tmp_path / 'x.json')
  files.write_json(path, {'a': [1, None]})
  files.write_json(path, {'b': 2.5})
  assert json.loads((tmp_path / 'x.json').read_text()) == {'b': 2.5}
  assert [p.name for p in tmp_path.iterdir()] == ['x.json']
