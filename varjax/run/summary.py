"""The run's results on disk: summary.json and per_example.npz, and their schema.

``write_summary`` turns the analysis results of ``train.train_and_evaluate``
into summary.json (run info, one entry per model and per group, extra test
sets, the measurements' values and sections, the settings that label the
statistics) and per_example.npz (the large per-example, per-pair and
per-measurement arrays). report/ and run/sweep_runs.py read only what this
module writes.

Example:
  >>> json_value(np.array([0.5, np.nan]))
  [0.5, None]
"""

import os

import numpy as np

from varjax import analysis
from varjax.ensemble import grid as sweep
from varjax.run import files

SUMMARY_FILE = 'summary.json'
PER_EXAMPLE_FILE = 'per_example.npz'
# The parts of the results that go into per_example.npz (large arrays), the
# rest into summary.json.
ARRAY_PARTS = ('example', 'model_example', 'pair')


def _results(results):
  """``analysis.Results`` (a {name: array} dict is read as its fields)."""
  return results if isinstance(results, analysis.Results) else analysis.Results.from_flat(results)


def _model_metrics(results, k):
  per_model = _results(results).present('model')
  return {'test_accuracy': float(per_model.pop('accuracy')[k]),
          **{name: json_value(v[k]) for name, v in per_model.items()}}


# Per-group lists over ensemble sizes, 0-padded to the longest group's ladder.
ENSEMBLE_SIZE_KEYS = ('ensemble_sizes', 'ensemble_size_accuracy_vote',
                      'ensemble_size_accuracy_softmax')


def _group_rows(ens, results):
  points = sweep.grid_points(ens.config)  # config units, one per group
  names, values = sweep.point_names(ens.config), sweep.swept_values(ens.config)
  rows = []
  for g in range(int(ens.groups.max()) + 1):
    row = {'group': g, 'name': names[g], 'values': values[g], **points[g],
           **{k: json_value(v[g]) for k, v in _results(results).present('group').items()}}
    if 'ensemble_sizes' in row:
      used = int(np.sum(np.asarray(results['ensemble_sizes'][g]) > 0))
      row.update({k: row[k][:used] for k in ENSEMBLE_SIZE_KEYS})
    rows.append(row)
  return rows


def write_summary(workdir, ens, run_info, train_metrics, results, test_labels, diverged,
                  extra_test_sets=(), measured=()):
  """Writes summary.json and per_example.npz; returns the summary dict.

  ``diverged``: (N,) step at which each model diverged, -1 if it did not.
  ``extra_test_sets``: (name, labels, results) of further evaluation sets; each
  gets the same per-model and per-group results under ``extra_test_sets``.
  ``measured``: the ``measurements.Measured`` of each enabled measurement: their
  per-model and per-group values join the models and groups, their arrays
  per_example.npz, their summary entries the top level.
  """
  points = sweep.grid_points(ens.config)
  models = []
  for k in range(ens.num_models):
    entry = {'id': int(ens.model_ids[k]), 'seed': run_info['seed'],
             'group': int(ens.groups[k]),
             'diverged_at_step': None if diverged[k] < 0 else int(diverged[k]),
             'train_loss': json_value(train_metrics['loss'][k]),
             'train_accuracy': json_value(train_metrics['accuracy'][k])}
    entry.update(points[int(ens.groups[k])])
    entry.update(_model_metrics(results, k))
    for m in measured:
      entry.update({name: json_value(v[k]) for name, v in m.per_model.items()})
    models.append(entry)
  extra = [{'name': name, 'num_test': len(labels),
            'models': [{'id': int(ens.model_ids[k]), 'group': int(ens.groups[k]),
                        **_model_metrics(r, k)} for k in range(ens.num_models)],
            'groups': _group_rows(ens, r)} for name, labels, r in extra_test_sets]
  groups = _group_rows(ens, results)
  for g, row in enumerate(groups):
    for m in measured:
      row.update({name: json_value(v[g]) for name, v in m.per_group.items()})
  summary = {**run_info, 'num_models': ens.num_models,
             'diverged': [{'id': int(ens.model_ids[k]), 'step': int(diverged[k])}
                          for k in np.flatnonzero(diverged >= 0)],
             'models': models, 'groups': groups,
             'extra_test_sets': extra,
             'margin_quantile_levels': list(ens.config.analysis.margin_quantiles),
             **analysis_settings(ens.config)}
  for m in measured:
    for key, value in jsonable(m.summary).items():
      if isinstance(value, dict) and isinstance(summary.get(key), dict):
        summary[key] = {**summary[key], **value}
      else:
        summary[key] = value
  results = _results(results)
  arrays = {k: np.asarray(v) for part in ARRAY_PARTS for k, v in results.present(part).items()}
  if 'prediction_depth' in arrays:
    arrays['prediction_depth'] = arrays['prediction_depth'].astype(np.int8)
  for m in measured:
    arrays.update({k: np.asarray(v) for k, v in m.per_example.items()})
  for name, labels, r in extra_test_sets:
    arrays[f'{name}/labels'] = np.asarray(labels)
    arrays.update({f'{name}/{k}': np.asarray(v)
                   for k, v in _results(r).present('example').items()})
  # summary.json last: it marks the run finished.
  with files.atomic_open(os.path.join(workdir, PER_EXAMPLE_FILE), 'wb') as f:
    np.savez_compressed(f, labels=np.asarray(test_labels), groups=np.asarray(ens.groups),
                        **arrays)
  files.write_json(os.path.join(workdir, SUMMARY_FILE), summary)
  return summary


def analysis_settings(config):
  """The settings that label the summary's statistics (the report's column headers)."""
  a = config.analysis
  return {'seeds_needed_deltas': list(a.seeds_needed_deltas),
          'seeds_needed_power': a.seeds_needed_power,
          'seeds_needed_alpha': a.seeds_needed_alpha,
          'ensemble_subsets': a.ensemble_subsets,
          'confidence_level': analysis.CI_LEVEL}


def json_value(x):
  """A float or (nested) list of floats, with NaN (statistics of groups too small) as null."""
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.integer):
    return x.tolist()
  if x.ndim > 1:
    return [json_value(row) for row in x]
  x = x.astype(np.float64)
  return [None if np.isnan(v) else float(v) for v in x] if x.ndim else (
      None if np.isnan(x) else float(x))


def jsonable(x):
  """``x`` with every NumPy value (nested in dicts and lists) as ``json_value`` makes it."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, np.generic)):
    return json_value(x)
  return x
