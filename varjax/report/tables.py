"""Tables and plots of a finished run or sweep: one row per group (grid point).

``write_report(workdir)`` (``python -m varjax.report --workdir=DIR``) reads DIR/summary.json
(and per_example.npz when present) and writes
  report.md                      the variance table, one row per group, and one
                                 more table per extra test set (distribution shift);
  report.csv                     the same numbers, full precision, for pandas (one
                                 block of rows per test set);
  std_vs_swept.png               std and distribution-wise std vs the swept value
                                 (log x when it spans a factor > 4), 95% CI bands;
  observed_vs_independent.png    observed std vs the std independent errors predict;
  accuracy_histograms.png        per-model accuracies, one panel per group;
  ensemble_size_accuracy.png     vote and softmax ensemble accuracy against
                                 ensemble size, one panel per group;
  example_accuracy_histograms.png  per-example accuracy p_i, one panel per group;
and, when the run measured them (config.difficulty):
  margin_quantiles_vs_accuracy.png  each model's margin quantiles (raw and
                                 normalized) against its test accuracy;
  depth_vs_example_accuracy.png  mean prediction depth of each test example vs p_i;
  forgetting_vs_example_accuracy.png  mean forgetting events of each probe
                                 training example vs its final accuracy p_i;
and, when the run measured lenses (config.lenses), a "Lenses" table and the
plots of varjax/report/lenses.py. The plots are drawn by varjax/report/plots.py.
"""

import csv
import json
import math
import os

import numpy as np

from varjax import errors
from varjax.report import lenses as report_lenses
from varjax.report import plots as report_plots
CI = 'ci'  # format of a [low, high] pair of fractions
COLUMNS = (  # (summary key, header, format)
    ('num_models', 'models', '{:d}'),
    ('mean_accuracy', 'mean acc', '{:.2%}'),
    ('std_accuracy', 'std', '{:.3%}'),
    ('std_accuracy_ci', 'std 95% CI', CI),
    ('independent_std', 'indep. std', '{:.3%}'),
    ('independence_ratio', 'ratio', '{:.2f}'),
    ('distribution_std', 'dist. std', '{:.3%}'),
    ('distribution_std_ci', 'dist. std 95% CI', CI),
    ('split_half_corr', 'split-half r', '{:.2f}'),
    ('mean_disagreement', 'disagreement', '{:.2%}'),
    ('mean_error', 'error', '{:.2%}'),
    ('cace', 'CACE', '{:.2%}'),
    ('ensemble_accuracy_vote', 'ens. acc (vote)', '{:.2%}'),
    ('ensemble_accuracy_softmax', 'ens. acc (softmax)', '{:.2%}'),
)
# Shown when some group has them: Theorem 3's prediction for two classes.
OPTIONAL_COLUMNS = (
    ('calibrated_binary_std', 'calibrated binary std', '{:.3%}'),
    ('calibrated_binary_std_ci', 'calibrated binary std 95% CI', CI),
)


def load_summary(workdir):
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    raise errors.WorkdirError(f'{path} does not exist: {workdir} holds no finished run.')
  with open(path) as f:
    return json.load(f)


def swept_keys(groups):
  """Keys of the groups' ``values`` that differ between groups, in first-seen order."""
  keys = []
  for g in groups:
    keys += [k for k in g.get('values', {}) if k not in keys]
  varying = [k for k in keys if len({json.dumps(g['values'].get(k)) for g in groups}) > 1]
  return varying or keys


def _fmt(value, fmt):
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if fmt == CI:
    return f'{value[0]:.3%} .. {value[1]:.3%}' if None not in value else 'n/a'
  return fmt.format(int(value) if fmt == '{:d}' else value)


def _seeds_cell(value, ci):
  """'n (lo .. hi)' seeds per arm."""
  if value is None:
    return 'n/a'
  lo, hi = ci if ci else (None, None)
  bounds = f' ({lo:.0f} .. {hi:.0f})' if None not in (lo, hi) else ''
  return f'{value:.0f}{bounds}'


def seeds_headers(summary):
  return [f'seeds/arm for {100 * d:g}pp' for d in summary.get('seeds_needed_deltas', [])]


def table_columns(groups):
  """COLUMNS, then the OPTIONAL_COLUMNS some group has."""
  return COLUMNS + tuple(c for c in OPTIONAL_COLUMNS
                         if any(g.get(c[0]) is not None for g in groups))


def table_rows(summary, groups=None):
  """Header and rows of the table (strings), one row per group (default: the main test set's)."""
  groups = summary['groups'] if groups is None else groups
  keys = swept_keys(groups)
  seeds = seeds_headers(summary)
  columns = table_columns(groups)
  header = ['group'] + keys + [h for _, h, _ in columns] + seeds
  rows = []
  for g in groups:
    row = [g.get('name', str(g['group']))]
    row += [f"{g['values'][k]:.4g}" if isinstance(g['values'].get(k), float)
            else str(g['values'].get(k, '')) for k in keys]
    row += [_fmt(g.get(key), fmt) for key, _, fmt in columns]
    needed, ci = g.get('seeds_needed') or [None] * len(seeds), g.get('seeds_needed_ci')
    row += [_seeds_cell(needed[d], ci[d] if ci else None) for d in range(len(seeds))]
    rows.append(row)
  return header, rows


NOTES = (
    'std: over the group\'s models (ddof 1), with a 95% chi-squared CI (exact for normally '
    'distributed accuracies); indep. std: what independent per-example errors predict; '
    'ratio = std^2 / indep. std^2; dist. std: unbiased distribution-wise std (0 when its '
    'estimate is negative), its CI the chi-squared CI of the variance minus indep. std^2 '
    '(same assumption; conditional on the test set); disagreement vs error: equal for a '
    'class-wise calibrated ensemble (GDE); CACE: class-aggregated calibration error of the '
    'vote fraction (Jiang et al. 2022, Eq. 6), biased upward when the group has few models '
    '(read it with the models column); ensembles: plurality vote (ties to the larger summed '
    'softmax) and mean softmax of all the group\'s models; seeds/arm: seeds per arm for a '
    'two-arm comparison to detect that accuracy difference with power {power:g} at level '
    '{alpha:g} (two-sided), n = 2 (z_(1-alpha/2) + z_power)^2 std^2 / difference^2, in '
    'brackets at the ends of the std CI.{binary}')
BINARY_NOTE = (' Calibrated binary std: sqrt(error / (2 n)), the test-set std that class-calibrated '
               'two-class models with independent errors have (the study\'s Theorem 3); its CI '
               'propagates the mean error\'s normal CI.')


def write_markdown(summary, path, per_example=None):
  header, rows = table_rows(summary)
  lines = [f"# {summary.get('name', 'varjax')} ({summary.get('variant', '')}): "
           f"{summary['num_models']} models, {summary['num_test']} test images "
           f"({summary.get('test_set', '')})", '',
           '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  binary = any(g.get('calibrated_binary_std') is not None for g in summary['groups'])
  lines += ['', NOTES.format(power=summary.get('seeds_needed_power', 0.8),
                             alpha=summary.get('seeds_needed_alpha', 0.05),
                             binary=BINARY_NOTE if binary else ''), '']
  for extra in summary.get('extra_test_sets', []):
    header, rows = table_rows(summary, extra['groups'])
    lines += [f"## Distribution shift: {extra['name']} ({extra['num_test']} images)", '',
              '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows] + ['']
  lines += difficulty_lines(summary)
  lines += report_lenses.lens_lines(summary)
  lines += [f'![{name}]({name})' for name in report_plots.plot_names(summary, per_example)]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def difficulty_lines(summary):
  """Markdown table of the example-difficulty correlations per group ([] if none)."""
  groups = summary['groups']
  if 'margin_quantile_accuracy_corr' not in groups[0]:
    return []
  levels = summary.get('margin_quantile_levels', [])
  median = levels.index(0.5) if 0.5 in levels else len(levels) // 2
  forgetting = {g['group']: g for g in summary.get('forgetting', {}).get('groups', [])}
  header = ['group', 'r(median margin, acc)', 'r(median norm. margin, acc)', 'mean depth',
            'r(depth, p_i)', 'forgetting events', 'never learned', 'r(forgetting, p_i)']
  lines = ['## Example difficulty', '', '| ' + ' | '.join(header) + ' |',
           '|' + ' --- |' * len(header)]
  pick = lambda v: v[median] if isinstance(v, list) else None
  for g in groups:
    f = forgetting.get(g['group'], {})
    row = [g.get('name', str(g['group'])),
           _fmt(pick(g.get('margin_quantile_accuracy_corr')), '{:.2f}'),
           _fmt(pick(g.get('normalized_margin_quantile_accuracy_corr')), '{:.2f}'),
           _fmt(g.get('mean_prediction_depth'), '{:.2f}'),
           _fmt(g.get('depth_accuracy_corr'), '{:.2f}'),
           _fmt(f.get('mean_forgetting_events'), '{:.3f}'),
           _fmt(f.get('never_learned'), '{:.1%}'),
           _fmt(f.get('forgetting_accuracy_corr'), '{:.2f}')]
    lines.append('| ' + ' | '.join(row) + ' |')
  probes = summary.get('depth_probes')
  lines += ['', 'r: Pearson correlation; of margin quantiles with test accuracy across the '
            'group\'s models; of prediction depth (k-NN probes' + (
                f" at {', '.join(probes)}" if probes else '') + '; 0 = every probe agrees '
            'with the final prediction) and forgetting events with the example accuracy p_i '
            'across examples (forgetting: probe training examples, p_i after the last epoch; '
            'events averaged over the (model, example) pairs ever classified right, the '
            'never-right ones counted apart as never learned). n/a: not measured or too few '
            'models.', '']
  return lines


def write_csv(summary, path):
  groups = summary['groups']
  keys = swept_keys(groups)
  metric_keys = [k for k, _, fmt in table_columns(groups) if fmt != CI]
  deltas = summary.get('seeds_needed_deltas', [])
  seeds = [f'seeds_needed_{d:g}{end}' for d in deltas for end in ('', '_low', '_high')]
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['test_set', 'group', 'name'] + keys + metric_keys
               + ['std_ci_low', 'std_ci_high', 'distribution_std_ci_low',
                  'distribution_std_ci_high'] + seeds)
    sets = [(summary.get('test_set', 'test'), groups)] + [
        (e['name'], e['groups']) for e in summary.get('extra_test_sets', [])]
    for test_set, rows in sets:
      for g in rows:
        intervals = [v for k in ('std_accuracy_ci', 'distribution_std_ci')
                     for v in (g.get(k) or [None, None])]
        needed = g.get('seeds_needed') or [None] * len(deltas)
        needed_ci = g.get('seeds_needed_ci') or [[None, None]] * len(deltas)
        w.writerow([test_set, g['group'], g.get('name', '')]
                   + [g['values'].get(k) for k in keys]
                   + [g.get(k) for k in metric_keys] + intervals
                   + [v for n, ci in zip(needed, needed_ci) for v in (n, *ci)])


def write_report(workdir):
  """Writes report.md, report.csv and the plots into ``workdir``; returns their paths."""
  summary = load_summary(workdir)
  npz = os.path.join(workdir, 'per_example.npz')
  per_example = np.load(npz) if os.path.exists(npz) else None
  write_markdown(summary, os.path.join(workdir, 'report.md'), per_example)
  write_csv(summary, os.path.join(workdir, 'report.csv'))
  report_plots.plot_all(summary, per_example, workdir, swept_keys(summary['groups']))
  outputs = ['report.md', 'report.csv'] + report_plots.plot_names(summary, per_example)
  return [os.path.join(workdir, name) for name in outputs]
