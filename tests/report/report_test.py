"""An lr sweep end to end (one ensemble, two groups) and its report; the report's table."""

import csv
import json

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from varjax.report import tables as report
from varjax.report import lenses as report_lenses
from varjax.report import plots as report_plots
from conftest import needs_shared_data
from runs import run_main


@pytest.fixture(scope='module')
def lr_sweep_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('lr_sweep')
  proc = run_main(workdir, '--config.num_models=4', config='experiments/lr_sweep.py:smoke')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@needs_shared_data
def test_lr_sweep_summary_has_groups_and_values(lr_sweep_run):
  summary = json.loads((lr_sweep_run / 'summary.json').read_text())
  config = json.loads((lr_sweep_run / 'config.json').read_text())
  base_lr = config['opt']['lr']
  assert [m['group'] for m in summary['models']] == [0, 0, 1, 1]
  assert [m['lr'] for m in summary['models']] == [base_lr * 0.5] * 2 + [base_lr * 2.0] * 2
  assert [g['values']['lr_multiplier'] for g in summary['groups']] == [0.5, 2.0]
  for g in summary['groups']:
    accs = [m['test_accuracy'] for m in summary['models'] if m['group'] == g['group']]
    np.testing.assert_allclose(g['mean_accuracy'], np.mean(accs), rtol=1e-6)
    assert g['num_models'] == 2


@needs_shared_data
def test_report_writes_every_file_with_one_row_per_group(lr_sweep_run):
  paths = report.write_report(str(lr_sweep_run))
  names = sorted(p.rsplit('/', 1)[1] for p in paths)
  # Margin quantiles are always measured; depth and forgetting were not asked for.
  plots = [*report_plots.PLOTS, report_plots.ENSEMBLE_PLOT, 'margin_quantiles_vs_accuracy.png']
  assert names == sorted(['report.md', 'report.csv', *plots])
  for name in plots:
    assert (lr_sweep_run / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  rows = list(csv.DictReader((lr_sweep_run / 'report.csv').open()))
  summary = json.loads((lr_sweep_run / 'summary.json').read_text())
  assert len(rows) == 2 and [float(r['lr_multiplier']) for r in rows] == [0.5, 2.0]
  for row, g in zip(rows, summary['groups']):
    assert float(row['mean_accuracy']) == g['mean_accuracy']
  md = (lr_sweep_run / 'report.md').read_text().splitlines()
  table = [l for l in md if l.startswith('| ')]
  # Variance table and difficulty table: header, rule, 2 groups each.
  assert len(table) == 8 and 'lr_multiplier' in table[0] and 'dist. std 95% CI' in table[0]
  assert 'CACE' in table[0] and 'seeds/arm for 0.5pp' in table[0]
  assert 'r(median margin, acc)' in table[4] and table[6].endswith('| n/a | n/a | n/a | n/a |')


def fake_summary(groups):
  return {'name': 'x', 'num_models': 4, 'num_test': 10, 'models': [], 'groups': groups,
          'seeds_needed_deltas': [0.001, 0.005]}


def test_table_formats_and_marks_missing_values():
  groups = [{'group': 0, 'name': 'a', 'values': {'epochs': 1.0}, 'num_models': 2,
             'mean_accuracy': 0.5, 'std_accuracy': 0.01, 'std_accuracy_ci': [0.005, 0.02],
             'independence_ratio': None, 'seeds_needed': [1570.0, 63.0],
             'seeds_needed_ci': [[393.0, 6280.0], [16.0, 252.0]]},
            {'group': 1, 'name': 'b', 'values': {'epochs': 2.0}, 'num_models': 1,
             'mean_accuracy': 0.25, 'std_accuracy': None, 'std_accuracy_ci': [None, None]}]
  header, rows = report.table_rows(fake_summary(groups))
  assert header[:4] == ['group', 'epochs', 'models', 'mean acc']
  assert rows[0][:5] == ['a', '1', '2', '50.00%', '1.000%']
  assert rows[0][header.index('std 95% CI')] == '0.500% .. 2.000%'
  assert rows[1][header.index('std')] == 'n/a' and rows[1][header.index('ratio')] == 'n/a'
  assert header[-2:] == ['seeds/arm for 0.1pp', 'seeds/arm for 0.5pp']
  assert rows[0][-2:] == ['1570 (393 .. 6280)', '63 (16 .. 252)']
  assert rows[1][-2:] == ['n/a', 'n/a']


@needs_shared_data
def test_two_class_run_reports_the_calibrated_binary_prediction(tmp_path):
  # cat vs dog through the CLI: two-class data, model and analysis, and Theorem 3's column.
  proc = run_main(tmp_path, '--config.data.classes=(3, 5)', '--config.num_models=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  labels = np.load(tmp_path / 'per_example.npz')['labels']
  assert set(labels.tolist()) == {0, 1} and summary['num_test'] == len(labels)
  group = summary['groups'][0]
  np.testing.assert_allclose(group['calibrated_binary_std'],
                             np.sqrt(group['mean_error'] / (2 * len(labels))), rtol=1e-5)
  report.write_report(str(tmp_path))
  text = (tmp_path / 'report.md').read_text()
  assert 'calibrated binary std' in text and "Theorem 3" in text


def test_lens_table_and_plots_from_a_summary(tmp_path):
  groups, models = [], []
  for g, noise in enumerate((0.0, 1.0)):
    groups.append({'group': g, 'name': f'noise={noise:g}', 'values': {'label_noise': noise},
                   'num_models': 2, 'mean_accuracy': 0.4 - 0.3 * noise,
                   'mean_train_fit_accuracy': 0.99, 'mean_train_true_accuracy': 0.99 - 0.9 * noise,
                   'mean_sharpness_top_eigenvalue': 3.0, 'std_sharpness_top_eigenvalue': 0.5,
                   'sharpness_top_eigenvalue_accuracy_corr': -0.5,
                   'sharpness_top_eigenvalue_margin_quantile_corr': [0.1, 0.2, -0.7, 0.4, 0.5],
                   'group_misalignment': 150.0, 'group_misalignment_random_basis': 460.0})
    models += [{'id': 2 * g + i, 'group': g, 'test_accuracy': 0.3 + 0.01 * i,
                'margin_quantiles': [0.1, 0.2, 0.3 + i, 0.4, 0.5],
                'sharpness_top_eigenvalue': 2.0 + i, 'sharpness_trace': 10.0 + i}
               for i in range(2)]
  summary = {'name': 'x', 'num_models': 4, 'num_test': 10, 'models': models, 'groups': groups,
             'margin_quantile_levels': [0.1, 0.25, 0.5, 0.75, 0.9],
             'lenses': {'sharpness': {'images': 256, 'power_iterations': 15,
                                      'hutchinson_probes': 8}}}
  lines = report_lenses.lens_lines(summary)
  table = [l for l in lines if l.startswith('| ')]
  assert 'r(top eig., median margin)' in table[0] and 'label noise' in table[0]
  assert '| noise=1 | 1 | 10.00% | 99.0% | 9.0% | 3 ± 0.5 | -0.50 | -0.70 |' in table[3]
  assert table[3].endswith('| 150 (460) |') and len(table) == 4
  assert report_lenses.lens_plots(summary) == ['sharpness_vs_margin.png', 'lenses_by_group.png']
  matplotlib.use('Agg')
  report_lenses.plot_lenses(summary, str(tmp_path), plt)
  for name in report_lenses.lens_plots(summary):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert report_lenses.lens_lines({**summary, 'groups': [{'group': 0, 'values': {}}]}) == []
