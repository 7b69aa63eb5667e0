"""The report's plots from a hand-made summary: which plots, the swept axis, and the PNGs.

About 3 s (matplotlib draws eight figures).
"""

import numpy as np
import pytest

from varjax.report import plots as report_plots
LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9]


def summary(num_groups=2, models_per_group=3, ensemble_sizes=True, margins=True):
  groups, models = [], []
  for g in range(num_groups):
    group = {'group': g, 'name': f'lr={0.1 * 4 ** g:g}', 'values': {'lr': 0.1 * 4 ** g},
             'num_models': models_per_group, 'mean_accuracy': 0.6 + 0.01 * g,
             'std_accuracy': 0.01, 'std_accuracy_ci': [0.005, 0.02],
             'independent_std': 0.008, 'distribution_std': 0.006,
             'distribution_std_ci': [None, None]}  # a CI the data could not bound
    if ensemble_sizes:
      group.update({'ensemble_sizes': [1, 2, 3], 'ensemble_size_accuracy_vote': [0.6, 0.62, 0.63],
                    'ensemble_size_accuracy_softmax': [0.6, 0.63, None]})
    groups.append(group)
    for i in range(models_per_group):
      model = {'id': g * models_per_group + i, 'group': g, 'test_accuracy': 0.6 + 0.01 * i}
      if margins:
        model['margin_quantiles'] = [q + i for q in LEVELS]
        model['normalized_margin_quantiles'] = [q / 2 for q in LEVELS]
      models.append(model)
  return {'groups': groups, 'models': models, 'margin_quantile_levels': LEVELS,
          'ensemble_subsets': 4}


def per_example(num_groups=2, n=20, probes=10):
  rng = np.random.default_rng(0)
  return {'example_accuracy': rng.uniform(size=(num_groups, n)),
          'depth_mean': rng.uniform(0, 8, size=(num_groups, n)),
          'probe_accuracy': rng.uniform(size=(num_groups, probes)),
          # NaN: a probe no model ever learned.
          'forgetting_mean': np.where(np.arange(probes) == 0, np.nan,
                                      rng.uniform(0, 2, size=(num_groups, probes)))}


def test_plot_names_follow_what_the_run_measured():
  assert report_plots.plot_names(summary(ensemble_sizes=False, margins=False), None) == list(
      report_plots.PLOTS[:3])
  assert report_plots.plot_names(summary(), per_example()) == [
      *report_plots.PLOTS[:3], report_plots.ENSEMBLE_PLOT, report_plots.PLOTS[3],
      *report_plots.DIFFICULTY_PLOTS]


@pytest.mark.parametrize('values, swept, want_label, want_log', [
    ([0.1, 0.8], ['lr'], 'lr', True),  # spans a factor 8 > 4: log axis
    ([0.5, 2.0], ['lr'], 'lr', False),  # a factor 4: linear
    ([-1.0, 8.0], ['lr'], 'lr', False),  # not all positive: linear
    (['a', 'b'], ['lr'], 'group', False),  # nothing numeric: the group index
])
def test_x_axis_is_the_first_numeric_swept_value(values, swept, want_label, want_log):
  groups = [{'values': {'lr': v, 'name': str(v)}} for v in values]
  x, label, log = report_plots.x_axis(groups, ['name'] + swept)
  assert (label, log) == (want_label, want_log)
  np.testing.assert_array_equal(x, values if label == 'lr' else [0.0, 1.0])


def test_plot_all_draws_every_named_plot(tmp_path):
  s, p = summary(), per_example()
  report_plots.plot_all(s, p, str(tmp_path), ['lr'])
  names = report_plots.plot_names(s, p)
  assert sorted(f.name for f in tmp_path.iterdir()) == sorted(names)
  for name in names:
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
