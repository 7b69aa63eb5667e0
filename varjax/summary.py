"""The run's results on disk: summary.json and per_example.npz, and their schema.

``write_summary`` turns the analysis results of ``train.train_and_evaluate``
into summary.json (run info, one entry per model and per group, extra test
sets, forgetting, lenses, the settings that label the statistics) and
per_example.npz (the large per-example, per-pair and per-probe arrays).
report.py and runner.py read only what this module writes.

Example:
  >>> json_value(np.array([0.5, np.nan]))
  [0.5, None]
"""

import json
import os

import numpy as np

from varjax import analysis
from varjax import lenses as lenses_lib
from varjax.ensemble import grid as sweep
from varjax.analysis import accumulate

SUMMARY_FILE = 'summary.json'
PER_EXAMPLE_FILE = 'per_example.npz'
# Large arrays: per example (G, n[, K]), per pair of models (N, N), per model and
# example (N, n).
PER_EXAMPLE_KEYS = (analysis.PER_EXAMPLE_KEYS + analysis.PAIRWISE_KEYS
                    + analysis.PER_MODEL_EXAMPLE_KEYS)
# Forgetting records (N, P) and their aggregates (G, P) -> per_example.npz names.
DYNAMICS_ARRAYS = {'correct': 'probe_correct', 'forgetting_events': 'forgetting_events',
                   'learned_epoch': 'learned_epoch',
                   'cumulative_correct': 'cumulative_correct',
                   'forgetting_mean': 'forgetting_mean', 'never_learned': 'never_learned',
                   'learned_epoch_mean': 'learned_epoch_mean',
                   'cumulative_accuracy': 'cumulative_accuracy',
                   'probe_accuracy': 'probe_accuracy', 'probe_labels': 'probe_labels'}
DYNAMICS_PER_MODEL = ('mean_forgetting_events', 'never_learned_fraction',
                      'unforgettable_fraction')


def _model_metrics(results, k):
  return {'test_accuracy': float(results['accuracy'][k]),
          **{name: json_value(results[name][k]) for name in analysis.PER_MODEL_KEYS
             if name != 'accuracy' and name in results}}


# Per-group lists over ensemble sizes, 0-padded to the longest group's ladder.
ENSEMBLE_SIZE_KEYS = ('ensemble_sizes', 'ensemble_size_accuracy_vote',
                      'ensemble_size_accuracy_softmax')


def _group_rows(ens, results):
  points = sweep.grid_points(ens.config)  # config units, one per group
  names, values = sweep.point_names(ens.config), sweep.swept_values(ens.config)
  rows = []
  for g in range(int(ens.groups.max()) + 1):
    row = {'group': g, 'name': names[g], 'values': values[g], **points[g],
           **{k: json_value(results[k][g]) for k in analysis.PER_GROUP_KEYS if k in results}}
    if 'ensemble_sizes' in row:
      used = int(np.sum(np.asarray(results['ensemble_sizes'][g]) > 0))
      row.update({k: row[k][:used] for k in ENSEMBLE_SIZE_KEYS})
    rows.append(row)
  return rows


def write_summary(workdir, ens, run_info, train_metrics, results, test_labels, diverged,
                  extra_test_sets=(), dynamics=None, lenses=None):
  """Writes summary.json and per_example.npz; returns the summary dict.

  ``diverged``: (N,) step at which each model diverged, -1 if it did not.
  ``extra_test_sets``: (name, labels, results) of further evaluation sets; each
  gets the same per-model and per-group results under ``extra_test_sets``.
  ``dynamics``: the forgetting records and ``analysis.dynamics_stats`` (host
  arrays), or None when ``difficulty.forgetting`` is off.
  ``lenses``: what ``lenses.measure`` returned, or None; each model and group
  gets its ``lenses.summarize`` values.
  """
  points = sweep.grid_points(ens.config)
  lens_values, lens_groups, lens_settings = {}, {}, None
  if lenses is not None:
    member = accumulate.group_membership(np.where(diverged >= 0, -1, ens.groups),
                                         int(ens.groups.max()) + 1)
    lens_values, lens_groups, lens_settings = lenses_lib.summarize(
        lenses, member, results['accuracy'], results['margin_quantiles'], ens.config)
  models = []
  for k in range(ens.num_models):
    entry = {'id': int(ens.model_ids[k]), 'seed': run_info['seed'],
             'group': int(ens.groups[k]),
             'diverged_at_step': None if diverged[k] < 0 else int(diverged[k]),
             'train_loss': json_value(train_metrics['loss'][k]),
             'train_accuracy': json_value(train_metrics['accuracy'][k])}
    entry.update(points[int(ens.groups[k])])
    entry.update(_model_metrics(results, k))
    if dynamics is not None:
      entry.update({name: json_value(dynamics[name][k]) for name in DYNAMICS_PER_MODEL})
    entry.update({name: json_value(lens_values[name][k]) for name in lenses_lib.PER_MODEL_KEYS
                  if name in lens_values})
    models.append(entry)
  extra = [{'name': name, 'num_test': len(labels),
            'models': [{'id': int(ens.model_ids[k]), 'group': int(ens.groups[k]),
                        **_model_metrics(r, k)} for k in range(ens.num_models)],
            'groups': _group_rows(ens, r)} for name, labels, r in extra_test_sets]
  groups = _group_rows(ens, results)
  for g, row in enumerate(groups):
    row.update({name: json_value(v[g]) for name, v in lens_groups.items()})
  summary = {**run_info, 'num_models': ens.num_models,
             'diverged': [{'id': int(ens.model_ids[k]), 'step': int(diverged[k])}
                          for k in np.flatnonzero(diverged >= 0)],
             'models': models, 'groups': groups,
             'extra_test_sets': extra,
             'margin_quantile_levels': list(ens.config.analysis.margin_quantiles),
             **analysis_settings(ens.config)}
  if lens_settings:
    summary['lenses'] = lens_settings
  if dynamics is not None:
    summary['forgetting'] = {
        'probes': f"training images [0, {ens.num_probes})", 'num_probes': ens.num_probes,
        'epochs_recorded': int(dynamics['epochs'].max()),
        # Events are means over the (model, probe) pairs ever classified right;
        # the never-right pairs (Toneva et al.'s infinitely forgotten) are counted apart.
        'groups': [{'group': g,
                    'mean_forgetting_events': json_value(dynamics['group_forgetting_events'][g]),
                    'never_learned': json_value(dynamics['group_never_learned'][g]),
                    'forgetting_accuracy_corr': json_value(
                        dynamics['forgetting_accuracy_corr'][g])}
                   for g in range(len(summary['groups']))]}
  arrays = {k: np.asarray(results[k]) for k in PER_EXAMPLE_KEYS if k in results}
  if 'prediction_depth' in arrays:
    arrays['prediction_depth'] = arrays['prediction_depth'].astype(np.int8)
  if dynamics is not None:
    arrays.update({out: np.asarray(dynamics[k]) for k, out in DYNAMICS_ARRAYS.items()})

  for name, labels, r in extra_test_sets:
    arrays[f'{name}/labels'] = np.asarray(labels)
    arrays.update({f'{name}/{k}': np.asarray(r[k]) for k in analysis.PER_EXAMPLE_KEYS
                   if k in r})
  # Atomic, and summary.json last: it marks the run finished.
  npz = os.path.join(workdir, PER_EXAMPLE_FILE)
  with open(npz + '.tmp', 'wb') as f:
    np.savez_compressed(f, labels=np.asarray(test_labels), groups=np.asarray(ens.groups),
                        **arrays)
  os.replace(npz + '.tmp', npz)
  write_json_atomic(os.path.join(workdir, SUMMARY_FILE), summary)
  return summary


def analysis_settings(config):
  """The settings that label the summary's statistics (the report's column headers)."""
  a, d = config.analysis, config.difficulty
  settings = {'seeds_needed_deltas': list(a.seeds_needed_deltas),
              'seeds_needed_power': a.seeds_needed_power,
              'seeds_needed_alpha': a.seeds_needed_alpha,
              'ensemble_subsets': a.ensemble_subsets,
              'confidence_level': analysis.CI_LEVEL}
  if d.prediction_depth:
    settings['depth_probes'] = list(d.depth_probes)
  return settings


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


def write_json_atomic(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
