"""The report's lens section: sharpness vs margins, label noise and alignment (varjax/run/lenses.py).

Reads only summary.json (the groups' and models' lens fields); report.py
calls ``lens_lines`` for report.md and ``plot_lenses`` for the plots:
  sharpness_vs_margin.png  each model's top Hessian eigenvalue and trace against
                           its median margin and its test accuracy;
  lenses_by_group.png      per group: test, train (labels trained on) and
                           train (true labels) accuracy; misalignment of the
                           pooled filters and their updates, against a random
                           basis.
"""

import math
import os

import numpy as np

SHARPNESS_PLOT = 'sharpness_vs_margin.png'
GROUP_PLOT = 'lenses_by_group.png'
# (group key, header, format); a column appears when some group has its key.
COLUMNS = (
    ('mean_train_fit_accuracy', 'train acc (labels trained on)', '{:.1%}'),
    ('mean_train_true_accuracy', 'train acc (true labels)', '{:.1%}'),
    ('mean_corrupted_fit_accuracy', 'corrupted labels fit', '{:.1%}'),
    ('mean_sharpness_top_eigenvalue', 'top eigenvalue', 'mean_std'),
    ('mean_sharpness_trace', 'trace', 'mean_std'),
    ('sharpness_top_eigenvalue_accuracy_corr', 'r(top eig., acc)', '{:.2f}'),
    ('sharpness_top_eigenvalue_margin_quantile_corr', 'r(top eig., median margin)', 'median'),
    ('sharpness_trace_accuracy_corr', 'r(trace, acc)', '{:.2f}'),
    ('sharpness_trace_margin_quantile_corr', 'r(trace, median margin)', 'median'),
    ('mean_misalignment', 'misalign. per model', 'mean_std'),
    ('group_misalignment', 'misalign. pooled (random basis)', 'pair'),
    ('group_update_misalignment', 'update misalign. pooled (random basis)', 'pair'),
)


def _text(v, fmt='{:.3g}'):
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return 'n/a'
  return fmt.format(v)


def _cell(group, key, fmt, median):
  if fmt == 'mean_std':
    return f"{_text(group.get(key))} ± {_text(group.get(key.replace('mean_', 'std_', 1)))}"
  if fmt == 'median':
    values = group.get(key)
    return _text(values[median], '{:.2f}') if isinstance(values, list) else 'n/a'
  if fmt == 'pair':
    return f"{_text(group.get(key))} ({_text(group.get(key + '_random_basis'))})"
  return _text(group.get(key), fmt)


def lens_lines(summary):
  """Markdown table of the lenses per group ([] when the run measured none)."""
  groups = summary['groups']
  columns = [c for c in COLUMNS if any(c[0] in g for g in groups)]
  if not columns:
    return []
  levels = summary.get('margin_quantile_levels') or [0.5]
  median = levels.index(0.5) if 0.5 in levels else len(levels) // 2
  noise = any('label_noise' in g.get('values', {}) for g in groups)
  header = (['group'] + (['label noise'] if noise else []) + ['test acc']
            + [h for _, h, _ in columns])
  lines = ['## Lenses', '', '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  for g in groups:
    row = [g.get('name', str(g['group']))]
    row += [_text(g['values'].get('label_noise'), '{:g}')] if noise else []
    row += [_text(g.get('mean_accuracy'), '{:.2%}')]
    row += [_cell(g, key, fmt, median) for key, _, fmt in columns]
    lines.append('| ' + ' | '.join(row) + ' |')
  lenses = summary.get('lenses', {})
  notes = []
  if 'sharpness' in lenses:
    s = lenses['sharpness']
    notes.append(f"Sharpness: Hessian of the {s.get('loss', 'training loss')} on "
                 f"{s.get('images')} training images; top eigenvalue by "
                 f"{s.get('power_iterations')} power iterations, trace by Hutchinson's "
                 f"estimator with {s.get('hutchinson_probes')} Rademacher probes (mean ± std "
                 "over the group's models). r: Pearson correlation across the group's models.")
  if 'alignment' in lenses:
    a = lenses['alignment']
    notes.append(f"Misalignment (Maennel et al. 2020, 0 = aligned) of {a.get('layer')}'s "
                 f"filters with the covariance of its {a.get('patch_dim')}-dim input patches "
                 f"({a.get('images')} training images): per model along the data's top "
                 f"{a.get('components')} principal components; pooled over the group's models' "
                 f"filters along the top {a.get('group_components')}; in brackets the same "
                 "along a random orthonormal basis (the paper's baseline); update: the filters "
                 "minus their initial (dirac) values.")
  if 'train_eval' in lenses:
    notes.append(f"Train accuracy on the first {lenses['train_eval'].get('images')} training "
                 "images after training; corrupted labels fit: among the labels the noise "
                 "changed, the fraction predicted as the corrupted label.")
  return lines + (['', ' '.join(notes), ''] if notes else [''])


def lens_plots(summary):
  """The lens plots this summary supports."""
  models, groups = summary['models'], summary['groups']
  plots = []
  if any('sharpness_top_eigenvalue' in m for m in models):
    plots.append(SHARPNESS_PLOT)
  if any(k in g for g in groups for k in ('mean_train_fit_accuracy', 'group_misalignment')):
    plots.append(GROUP_PLOT)
  return plots


def _values(rows, key):
  return np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)


def plot_lenses(summary, workdir, plt):
  plots = lens_plots(summary)
  groups = summary['groups']
  names = [g.get('name', str(g['group'])) for g in groups]
  if SHARPNESS_PLOT in plots:
    models = [m for m in summary['models'] if m.get('diverged_at_step') is None]
    levels = summary.get('margin_quantile_levels') or [0.5]
    median = levels.index(0.5) if 0.5 in levels else len(levels) // 2
    margin = np.array([(m.get('margin_quantiles') or [np.nan] * len(levels))[median]
                       for m in models], float)
    accuracy = 100 * _values(models, 'test_accuracy')
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for row, key in enumerate(('sharpness_top_eigenvalue', 'sharpness_trace')):
      y = _values(models, key)
      for g, name in enumerate(names):
        mine = np.array([m['group'] == g for m in models])
        axes[row, 0].scatter(margin[mine], y[mine], s=14, label=name)
        axes[row, 1].scatter(accuracy[mine], y[mine], s=14, label=name)
      label = key.replace('sharpness_', '').replace('_', ' ') + ' of the training loss'
      axes[row, 0].set_ylabel(label)
      axes[row, 0].set_xlabel('median true-class margin (logits, test set)')
      axes[row, 1].set_xlabel('test accuracy (%)')
    axes[0, 0].legend(fontsize=7)
    fig.suptitle('Sharpness against margins and accuracy, one point per model', fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, SHARPNESS_PLOT), dpi=110)
    plt.close(fig)
  if GROUP_PLOT in plots:
    x = np.arange(len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (('mean_accuracy', 'test (true labels)'),
                       ('mean_train_fit_accuracy', 'train (labels trained on)'),
                       ('mean_train_true_accuracy', 'train (true labels)')):
      if any(key in g for g in groups):
        axes[0].plot(x, 100 * _values(groups, key), 'o-', label=label)
    axes[0].set_ylabel('accuracy (%, mean over the group)')
    axes[0].legend(fontsize=7)
    for key, label in (('group_misalignment', 'filters, data basis'),
                       ('group_misalignment_random_basis', 'filters, random basis'),
                       ('group_update_misalignment', 'updates, data basis'),
                       ('group_update_misalignment_random_basis', 'updates, random basis')):
      if any(key in g for g in groups):
        axes[1].plot(x, _values(groups, key), 'o-' if 'random' not in key else 's--', label=label)
    axes[1].set_ylabel('misalignment of pooled filters (0 = aligned)')
    axes[1].legend(fontsize=7)
    for ax in axes:
      ax.set_xticks(x)
      ax.set_xticklabels(names, fontsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, GROUP_PLOT), dpi=110)
    plt.close(fig)
