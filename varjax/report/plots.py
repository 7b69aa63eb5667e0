"""The report's plots of a summary (and per_example.npz when present), drawn with matplotlib.

``plot_names`` lists the plots a run's data supports (report.md links them;
report.py's docstring says what each shows); ``plot_all`` draws them into the
workdir: the variance and difficulty plots here, the lens plots through
report_lenses.py. Reads only what the summary and per_example.npz hold.
"""

import os

import numpy as np

from varjax.report import lenses as report_lenses
AXIS_LABELS = {'lr': 'learning rate (decoupled units, per 1024 examples)',
               'lr_multiplier': 'learning rate / airbench default',
               'weight_decay': 'weight decay (decoupled units)',
               'epochs': 'training epochs'}
PLOTS = ('std_vs_swept.png', 'observed_vs_independent.png', 'accuracy_histograms.png',
         'example_accuracy_histograms.png')
ENSEMBLE_PLOT = 'ensemble_size_accuracy.png'
DIFFICULTY_PLOTS = ('margin_quantiles_vs_accuracy.png', 'depth_vs_example_accuracy.png',
                    'forgetting_vs_example_accuracy.png')


def plot_names(summary, per_example):
  """Every plot this run's data supports, in report order (``per_example``: the npz or None)."""
  return (variance_plots(summary, per_example) + difficulty_plots(summary, per_example)
          + report_lenses.lens_plots(summary))


def variance_plots(summary, per_example):
  """The variance plots this run's data supports (``per_example``: the npz or None)."""
  plots = list(PLOTS[:3])
  if 'ensemble_sizes' in summary['groups'][0]:
    plots.append(ENSEMBLE_PLOT)
  if per_example is not None:
    plots.append(PLOTS[3])
  return plots


def difficulty_plots(summary, per_example):
  """The difficulty plots this run's data supports (``per_example``: the npz or None)."""
  per_example = {} if per_example is None else per_example
  plots = []
  if 'margin_quantiles' in summary['models'][0]:
    plots.append(DIFFICULTY_PLOTS[0])
  if 'depth_mean' in per_example:
    plots.append(DIFFICULTY_PLOTS[1])
  if 'forgetting_mean' in per_example:
    plots.append(DIFFICULTY_PLOTS[2])
  return plots


def x_axis(groups, swept):
  """(values, label, log) for plots against the first numeric key of ``swept`` (the
  groups' swept value names); the group index if none is numeric."""
  for key in swept:
    values = [g['values'].get(key) for g in groups]
    if all(isinstance(v, (int, float)) for v in values):
      positive = all(v > 0 for v in values)
      log = positive and max(values) / min(values) > 4
      return np.array(values, float), key, log
  return np.arange(len(groups), dtype=float), 'group', False


def _floats(values):
  return np.array([np.nan if v is None else v for v in values], float)


def plot_all(summary, per_example, workdir, swept):
  """Draws every plot of ``plot_names`` into ``workdir``; ``swept``: as for ``x_axis``."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  groups = summary['groups']
  names = [g.get('name', str(g['group'])) for g in groups]
  _plot_std_vs_swept(groups, names, swept, workdir, plt)
  _plot_observed_vs_independent(groups, names, swept, workdir, plt)
  accs = {g['group']: [] for g in groups}
  for m in summary['models']:
    accs[m['group']].append(100 * m['test_accuracy'])
  _histograms(plt, [accs[g['group']] for g in groups], names, 'test accuracy of a model (%)',
              'models', os.path.join(workdir, PLOTS[2]))
  if per_example is not None:
    p = per_example['example_accuracy']
    _histograms(plt, [p[g] for g in range(len(groups))], names,
                'per-example accuracy p_i over the group\'s models', 'test examples',
                os.path.join(workdir, PLOTS[3]), bins=np.linspace(0, 1, 21))
  if ENSEMBLE_PLOT in variance_plots(summary, per_example):
    plot_ensemble_sizes(summary, workdir, plt)
  plot_difficulty(summary, per_example, workdir, plt)
  report_lenses.plot_lenses(summary, workdir, plt)

def _columns(groups, swept):
  """x, its label, log scale, the sort order and pct(key) / band(key) of the groups' values."""
  x, xlabel, log = x_axis(groups, swept)
  order = np.argsort(x, kind='stable')
  pct = lambda key: 100 * _floats([g.get(key) for g in groups])[order]
  band = lambda key: 100 * np.array([g.get(key) or [None, None] for g in groups],
                                    dtype=float)[order]
  return x, xlabel, log, order, pct, band


def _plot_std_vs_swept(groups, names, swept, workdir, plt):
  x, xlabel, log, order, pct, band = _columns(groups, swept)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  ci, dist_ci = band('std_accuracy_ci'), band('distribution_std_ci')
  line, = ax.plot(x[order], pct('std_accuracy'), 'o-', label='test-set std (95% CI band)')
  ax.fill_between(x[order], ci[:, 0], ci[:, 1], alpha=0.2, color=line.get_color())
  ax.plot(x[order], pct('independent_std'), 's--', label='std predicted by independent errors')
  line, = ax.plot(x[order], pct('distribution_std'), '^-',
                  label='distribution-wise std (95% CI band)')
  ax.fill_between(x[order], dist_ci[:, 0], dist_ci[:, 1], alpha=0.2, color=line.get_color())
  if log:
    ax.set_xscale('log', base=2)
  if xlabel == 'group':  # nothing numeric was swept: name the points
    ax.set_xticks(x[order], np.array(names)[order], rotation=20, fontsize=8)
  ax.set_xlabel(AXIS_LABELS.get(xlabel, xlabel))
  ax.set_ylabel('std of accuracy over seeds (percentage points)')
  ax.set_title('Run-to-run variation per group')
  ax.legend(fontsize=8)
  ax2 = ax.twinx()
  ax2.plot(x[order], pct('mean_accuracy'), 'k:', alpha=0.6)
  ax2.set_ylabel('mean accuracy (%, dotted)')
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, PLOTS[0]), dpi=120)
  plt.close(fig)


def _plot_observed_vs_independent(groups, names, swept, workdir, plt):
  _, _, _, order, pct, band = _columns(groups, swept)
  fig, ax = plt.subplots(figsize=(5, 5))
  ind, obs = pct('independent_std'), pct('std_accuracy')
  ci = band('std_accuracy_ci')
  ax.errorbar(ind, obs, yerr=np.abs(ci - obs[:, None]).T, fmt='o', capsize=3,
              label='observed std (95% CI) against independent-error std')
  if any(g.get('calibrated_binary_std') is not None for g in groups):
    binary = pct('calibrated_binary_std')
    ax.errorbar(binary, obs, yerr=np.abs(ci - obs[:, None]).T, fmt='x', capsize=3,
                label='observed std against Theorem 3 (calibrated binary)')
  for xi, yi, name in zip(ind, obs, np.array(names)[order]):
    ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords='offset points')
  finite = np.concatenate([ind, obs, ci.ravel()])
  finite = finite[np.isfinite(finite)]
  top = 1.1 * finite.max() if finite.size else 1.0
  ax.plot([0, top], [0, top], 'k--', lw=1, label='observed = independent')
  ax.set_xlim(0, top)
  ax.set_ylim(0, top)
  ax.set_xlabel('std predicted by independent errors (pp)')
  ax.set_ylabel('observed test-set std (pp)')
  ax.set_title('Above the line: distribution-wise variance')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, PLOTS[1]), dpi=120)
  plt.close(fig)


def plot_ensemble_sizes(summary, workdir, plt):
  """Vote and softmax ensemble accuracy against ensemble size, one panel per group."""
  groups = summary['groups']
  cols = min(4, len(groups))
  rows = -(-len(groups) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
  for ax, g in zip(axes.flat, groups):
    sizes = np.array(g.get('ensemble_sizes') or [], float)
    for key, label in (('ensemble_size_accuracy_vote', 'plurality vote'),
                       ('ensemble_size_accuracy_softmax', 'mean softmax')):
      ax.plot(sizes, 100 * _floats(g.get(key) or []), 'o-', label=label)
    if sizes.size and sizes.max() > 1:
      ax.set_xscale('log', base=2)
    ax.set_title(g.get('name', str(g['group'])), fontsize=8)
    ax.set_xlabel('ensemble size (models)', fontsize=8)
    ax.set_ylabel('test accuracy (%)', fontsize=8)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(groups):]:
    ax.axis('off')
  fig.suptitle(f"Ensemble accuracy against size (mean over up to "
               f"{summary.get('ensemble_subsets', '?')} random subsets per size)", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, ENSEMBLE_PLOT), dpi=110)
  plt.close(fig)


def plot_difficulty(summary, per_example, workdir, plt):
  groups = summary['groups']
  names = [g.get('name', str(g['group'])) for g in groups]
  plots = difficulty_plots(summary, per_example)
  if DIFFICULTY_PLOTS[0] in plots:
    levels = summary.get('margin_quantile_levels', [])
    models = [m for m in summary['models'] if m.get('diverged_at_step') is None]
    acc = 100 * _floats([m['test_accuracy'] for m in models])
    keys = [k for k in ('margin_quantiles', 'normalized_margin_quantiles') if k in models[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes.flat, keys):
      q = np.array([[np.nan if v is None else v for v in m[key]] for m in models], float)
      for j, level in enumerate(levels):
        ax.scatter(q[:, j], acc, s=10, label=f'q={level:g}')
      ax.set_xlabel(key.replace('_', ' ') + (' (feature space / root total variance)'
                                             if key.startswith('normalized') else ' (logits)'))
      ax.set_ylabel('test accuracy of the model (%)')
      ax.legend(fontsize=7)
    fig.suptitle('Margin quantiles vs accuracy, one point per model and quantile', fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, DIFFICULTY_PLOTS[0]), dpi=110)
    plt.close(fig)
  for plot, y_key, p_key, ylabel, xlabel in (
      (DIFFICULTY_PLOTS[1], 'depth_mean', 'example_accuracy', 'mean prediction depth',
       'test-example accuracy p_i over the group\'s models'),
      (DIFFICULTY_PLOTS[2], 'forgetting_mean', 'probe_accuracy', 'mean forgetting events',
       'probe training example: accuracy p_i after the last epoch')):
    if plot not in plots:
      continue
    y, p = per_example[y_key], per_example[p_key]
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    for g, (ax, name) in enumerate(zip(axes.flat, names)):
      ax.scatter(p[g], y[g], s=3, alpha=0.25)
      # Binned means make the trend readable through the scatter.
      bins = np.linspace(0, 1, 11)
      which = np.clip(np.digitize(p[g], bins) - 1, 0, 9)
      # NaN: forgetting of a probe no model ever got right (counted as never learned).
      means = [np.nanmean(y[g][which == b]) if np.any((which == b) & np.isfinite(y[g]))
               else np.nan for b in range(10)]
      ax.plot((bins[:-1] + bins[1:]) / 2, means, 'k.-', label='bin mean')
      ax.set_title(name, fontsize=8)
      ax.set_xlabel(xlabel, fontsize=7)
      ax.set_ylabel(ylabel, fontsize=8)
      ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
      ax.axis('off')
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, plot), dpi=110)
    plt.close(fig)


def _histograms(plt, values, names, xlabel, ylabel, path, bins=20):
  cols = min(4, len(values))
  rows = -(-len(values) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  for ax, v, name in zip(axes.flat, values, names):
    ax.hist(v, bins=bins)
    ax.set_title(name, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
  for ax in list(axes.flat)[len(values):]:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
