"""Sweeps of separate runs: a list of configs, one run and sub-workdir each, merged.

Training length, augmentation on/off or which sources of randomness vary change
the program itself, so each point is its own run. The sweep file defines
``get_sweep(arg)`` returning a list of ``{'name', 'values', 'config'}`` dicts;
the runner trains each point into ``WORKDIR/<name>`` (skipping points whose
summary.json exists, so rerunning the command resumes), then merges the points'
summaries into ``WORKDIR/summary.json`` and ``WORKDIR/per_example.npz``, one
group per (point, inner group), for ``varjax.report``.

  python -m varjax.runner --sweep=experiments/epochs_sweep.py:cpu --workdir=DIR
  python -m varjax.report --workdir=DIR

(A sweep of per-model hyperparameters inside one ensemble is ensemble/grid.py.)
"""

import json
import os

import numpy as np
from absl import logging

from varjax import errors
from varjax.config import files as config_files
from varjax.run import checkpoint
from varjax.run import files
from varjax.run import summary as summary_lib
from varjax.run import train
def load_sweep(spec):
  """Points of ``path/to/file.py[:arg]``."""
  path, _, arg = spec.partition(':')
  points = config_files.load_module(path).get_sweep(arg or None)
  names = [p['name'] for p in points]
  if len(set(names)) != len(names) or any('/' in n or not n for n in names):
    raise errors.ConfigError(f'Sweep point names must be unique, non-empty, without "/": '
                             f'{names}')
  return points


def run_points(points, workdir, train_fn=train.train_and_evaluate):
  """Trains every point without a summary.json; returns the names that were trained.

  Each point's progress bar is labelled 'point i/P NAME'.
  """
  trained = []
  for i, point in enumerate(points):
    sub = os.path.join(workdir, point['name'])
    if os.path.exists(os.path.join(sub, summary_lib.SUMMARY_FILE)):
      logging.info('point %d/%d %s: finished, skipped', i + 1, len(points), point['name'])
      continue
    logging.info('point %d/%d %s: training into %s', i + 1, len(points), point['name'], sub)
    train_fn(point['config'], sub, progress_desc=f"point {i + 1}/{len(points)} {point['name']}")
    trained.append(point['name'])
  return trained


# Per-group arrays of per_example.npz, (G, ...) in each point, stacked over points.
MERGED_PER_GROUP_ARRAYS = ('example_accuracy', 'vote_counts', 'depth_mean', 'depth_std',
                           'forgetting_mean', 'never_learned', 'learned_epoch_mean',
                           'cumulative_accuracy', 'probe_accuracy')


# Settings that label the statistics (summary.analysis_settings), taken from the first point.
SHARED_SETTINGS = ('seeds_needed_deltas', 'seeds_needed_power', 'seeds_needed_alpha',
                   'ensemble_subsets', 'confidence_level', 'depth_probes', 'lenses')


def merge(points, workdir):
  """Merges the points' summaries into one; returns it."""
  groups, models, per_example, forgetting = [], [], {}, []
  first = None
  for point in points:
    sub = os.path.join(workdir, point['name'])
    with open(os.path.join(sub, summary_lib.SUMMARY_FILE)) as f:
      summary = json.load(f)
    first = first or summary
    offset = len(groups)
    inner = summary['groups']
    for g in inner:
      name = point['name'] if len(inner) == 1 else f"{point['name']} {g.get('name', '')}"
      groups.append({**g, 'group': offset + g['group'], 'name': name, 'point': point['name'],
                     'values': {**point['values'], **g.get('values', {})}})
    for m in summary['models']:
      models.append({**m, 'group': offset + m['group'], 'point': point['name']})
    for g in summary.get('forgetting', {}).get('groups', []):
      forgetting.append({**g, 'group': offset + g['group']})
    npz = os.path.join(sub, summary_lib.PER_EXAMPLE_FILE)
    if os.path.exists(npz):
      with np.load(npz) as data:
        for key in MERGED_PER_GROUP_ARRAYS:
          if key in data:
            per_example.setdefault(key, []).append(data[key])
        per_example['labels'] = data['labels']
        if 'probe_labels' in data:
          per_example['probe_labels'] = data['probe_labels']
  merged = {'name': 'sweep', 'variant': first.get('variant'), 'num_test': first['num_test'],
            'test_set': first.get('test_set'), 'num_models': len(models),
            'points': [{'name': p['name'], 'values': p['values']} for p in points],
            'models': models, 'groups': groups,
            'margin_quantile_levels': first.get('margin_quantile_levels'),
            **{k: first[k] for k in SHARED_SETTINGS if k in first}}
  if len(forgetting) == len(groups):
    merged['forgetting'] = {**first['forgetting'], 'groups': forgetting}
  files.write_json(os.path.join(workdir, summary_lib.SUMMARY_FILE), merged)
  if len(per_example.get('example_accuracy', [])) == len(points):
    arrays = {k: np.concatenate(v) for k, v in per_example.items()
              if k in MERGED_PER_GROUP_ARRAYS and len(v) == len(points)
              and len({a.shape[1:] for a in v}) == 1}
    extra = {k: per_example[k] for k in ('probe_labels',) if k in per_example}
    with files.atomic_open(os.path.join(workdir, summary_lib.PER_EXAMPLE_FILE), 'wb') as f:
      np.savez_compressed(f, labels=per_example['labels'], **extra, **arrays)
  return merged


def run_sweep(points, workdir, train_fn=train.train_and_evaluate):
  """Trains the points that have no summary yet, then merges them all."""
  with checkpoint.storage_errors(workdir):
    os.makedirs(workdir, exist_ok=True)
    run_points(points, workdir, train_fn)
    return merge(points, workdir)
