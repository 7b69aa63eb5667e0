"""The multi-program sweep runner: trains each point once, resumes, merges summaries."""

import json
import os

import numpy as np
import pytest

from varjax.config import schema
from varjax import errors
from varjax.run import sweep_runs as runner
from varjax.training import recipe as recipe_lib
from varjax.training import step as step_lib
from varjax.run import files
from varjax.run import summary as summary_lib

from conftest import REPO


def fake_train(calls):
  """Stands in for train_and_evaluate: a 2-model, 1-group summary per point."""

  def train_fn(config, workdir, progress_desc):
    calls.append(workdir)
    assert progress_desc.startswith('point ') and progress_desc.endswith(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    e = config.train.epochs
    models = [{'id': k, 'group': 0, 'test_accuracy': 0.5 + 0.1 * e + 0.01 * k}
              for k in range(2)]
    summary = {'name': 'x', 'variant': 'smoke', 'num_test': 4, 'test_set': 't',
               'num_models': 2, 'models': models,
               'groups': [{'group': 0, 'name': 'all models', 'values': {},
                           'mean_accuracy': 0.505 + 0.1 * e}]}
    files.write_json(os.path.join(workdir, summary_lib.SUMMARY_FILE), summary)
    np.savez(os.path.join(workdir, summary_lib.PER_EXAMPLE_FILE), labels=np.arange(4),
             example_accuracy=np.full((1, 4), e), vote_counts=np.zeros((1, 4, 10)))

  return train_fn


def test_runner_merges_and_resumes_without_redoing_points(tmp_path):
  points = runner.load_sweep(str(REPO / 'experiments' / 'epochs_sweep.py') + ':smoke')
  assert [p['values']['epochs'] for p in points] == [1.0, 2.0]
  calls = []
  merged = runner.run_sweep(points, str(tmp_path), fake_train(calls))
  assert len(calls) == 2
  assert [g['group'] for g in merged['groups']] == [0, 1]
  assert [g['values'] for g in merged['groups']] == [{'epochs': 1.0}, {'epochs': 2.0}]
  assert [m['group'] for m in merged['models']] == [0, 0, 1, 1]
  assert [m['point'] for m in merged['models']] == ['epochs_1'] * 2 + ['epochs_2'] * 2
  per_example = np.load(tmp_path / 'per_example.npz')
  np.testing.assert_array_equal(per_example['example_accuracy'][:, 0], [1.0, 2.0])

  # A crash in point 2: its summary is missing; the rerun trains only point 2.
  os.remove(tmp_path / 'epochs_2' / 'summary.json')
  calls.clear()
  again = runner.run_sweep(points, str(tmp_path), fake_train(calls))
  assert calls == [str(tmp_path / 'epochs_2')]
  assert again == json.loads((tmp_path / 'summary.json').read_text())
  calls.clear()
  runner.run_sweep(points, str(tmp_path), fake_train(calls))
  assert calls == []


def test_bad_sweep_file_is_named(tmp_path):
  with pytest.raises(errors.ConfigError, match='nope.py'):
    runner.load_sweep(str(tmp_path / 'nope.py'))


def test_batch_sweep_compares_equal_epochs_and_equal_steps():
  for variant in ('', 'cpu', 'smoke'):
    points = runner.load_sweep(str(REPO / 'experiments' / 'batch_sweep.py') + f':{variant}')
    for p in points:
      schema.check(p['config'])
      assert p['config'].lenses.sharpness
  points = runner.load_sweep(str(REPO / 'experiments' / 'batch_sweep.py') + ':cpu')
  plans = {p['name']: recipe_lib.Recipe.from_config(p['config'], 2048) for p in points}
  assert [p['values']['schedule'] for p in points] == ['equal epochs'] * 3 + ['equal steps'] * 2
  assert plans['b32_equal_steps'].total_steps == plans['b128_equal_epochs'].total_steps == 64
  assert plans['b512_equal_steps'].total_steps == 64
  assert plans['b512_equal_epochs'].num_epochs == plans['b32_equal_epochs'].num_epochs == 4
