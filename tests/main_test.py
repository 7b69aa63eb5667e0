"""End to end through the command line: a tiny run, its outputs, and user errors."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from varjax import errors

from varjax import report
from varjax.report import plots as report_plots
from varjax.run import train
from varjax.run import workdir as workdir_lib
from conftest import CIFAR10_BINARY, REPO, needs_shared_data
from runs import TINY, run_main

# Every example-difficulty probe on, over two epochs.
DIFFICULTY = ('--config.train.epochs=2', '--config.difficulty.prediction_depth=True',
              '--config.difficulty.depth_support_size=128', '--config.difficulty.forgetting=True',
              '--config.difficulty.forgetting_probe_size=64')


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """The tiny run, with the holdout written out again as an extra 'shifted' test set."""
  workdir = tmp_path_factory.mktemp('run')
  raw = (CIFAR10_BINARY / 'data_batch_5.bin').read_bytes()
  shifted = workdir.parent / 'shifted.bin'
  shifted.write_bytes(raw[-128 * 3073:])  # the last 128 training images: the holdout
  proc = run_main(workdir, f'--config.data.extra_test_sets=("binary:{shifted}",)', *DIFFICULTY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@needs_shared_data
def test_run_writes_summary_metrics_and_per_example(finished_run):
  workdir, proc = finished_run
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['num_models'] == 3 and summary['num_test'] == 128
  assert [m['id'] for m in summary['models']] == [0, 1, 2]
  for m in summary['models']:
    assert 0 <= m['test_accuracy'] <= 1 and m['group'] == 0
    for key in ('ece', 'margin_median', 'alpha_trim', 'accuracy_even', 'lr'):
      assert key in m, key
  (group,) = summary['groups']
  accs = np.array([m['test_accuracy'] for m in summary['models']])
  np.testing.assert_allclose(group['mean_accuracy'], accs.mean(), rtol=1e-6)
  np.testing.assert_allclose(group['std_accuracy'], accs.std(ddof=1), rtol=1e-5)
  assert len(group['std_accuracy_ci']) == 2 and len(group['distribution_std_ci']) == 2
  assert summary['seeds_needed_deltas'] == [0.001, 0.002, 0.005]
  assert len(group['seeds_needed']) == 3 and np.shape(group['seeds_needed_ci']) == (3, 2)
  assert group['ensemble_sizes'] == [1, 2, 3]
  for kind in ('vote', 'softmax'):  # the largest ensemble is the whole group
    np.testing.assert_allclose(group[f'ensemble_size_accuracy_{kind}'][-1],
                               group[f'ensemble_accuracy_{kind}'], rtol=1e-6)
  per_example = np.load(workdir / 'per_example.npz')
  assert per_example['example_accuracy'].shape == (1, 128)
  assert per_example['vote_counts'].shape == (1, 128, 10)
  np.testing.assert_array_equal(per_example['vote_counts'].sum(-1), 3)
  assert per_example['churn'].shape == (3, 3)
  # Example difficulty: depth in 0..8 (8 probe places) per model and example,
  # forgetting records of the 64 probe images over 2 epochs, all consistent with
  # the per-model summary.
  depth = per_example['prediction_depth']
  assert depth.shape == (3, 128) and depth.min() >= 0 and depth.max() <= 8
  assert summary['depth_probes'] == ['input', 'whiten', 'group1_conv1', 'group1_conv2',
                                     'group2_conv1', 'group2_conv2', 'group3_conv1',
                                     'group3_conv2']
  np.testing.assert_allclose([m['mean_depth'] for m in summary['models']], depth.mean(1),
                             rtol=1e-6)
  np.testing.assert_allclose(per_example['depth_mean'][0], depth.mean(0), rtol=1e-6)
  events = per_example['forgetting_events']
  assert events.shape == (3, 64) and events.max() <= 1  # 2 epochs: at most one event
  learned = per_example['learned_epoch']  # stays correct from this epoch on; -1: wrong at the end
  assert set(np.unique(learned)) <= {-1, 1, 2}
  np.testing.assert_array_equal(learned >= 0, per_example['probe_correct'] == 1)
  # Two epochs: correct in both (learned 1), only the second (2), only the first (one event).
  np.testing.assert_array_equal(per_example['cumulative_correct'],
                                2 * (learned == 1) + (learned == 2) + events)
  np.testing.assert_allclose(per_example['probe_accuracy'][0],
                             per_example['probe_correct'].mean(0), rtol=1e-6)
  assert summary['forgetting']['epochs_recorded'] == 2
  assert len(summary['models'][0]['margin_quantiles']) == 5
  np.testing.assert_allclose([m['margin_quantiles'][2] for m in summary['models']],
                             [m['margin_median'] for m in summary['models']], rtol=1e-6)
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert any('train_loss' in l for l in lines) and any('test_accuracy_mean' in l for l in lines)
  assert 'independent-errors std' in proc.stderr


@needs_shared_data
def test_rerun_of_finished_workdir_is_refused(finished_run):
  workdir, _ = finished_run
  before = (workdir / 'summary.json').read_text()
  proc = run_main(workdir)
  assert proc.returncode == 2
  assert 'holds a finished run' in proc.stderr and '--config.overwrite' in proc.stderr
  assert (workdir / 'summary.json').read_text() == before


def test_unknown_config_key_is_one_line_with_the_closest_key(tmp_path):
  proc = run_main(tmp_path, '--config.opt.lrr=1.0')
  assert proc.returncode == 2
  # Only varjax's own lines: jax-cuda12-plugin (the aot extra) logs a banner at
  # `import jax` on machines without CUDA.
  ours = [line for line in proc.stderr.splitlines() if line.startswith('varjax')]
  assert ours == ["varjax: ConfigError: Unknown config key 'opt.lrr' (from "
                  "--config.opt.lrr=1.0). Did you mean 'opt.lr'?"]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'summary.json').exists()


def test_a_resumed_run_rewrites_only_the_records_it_repeats():
  """12 steps, 4 per epoch: records at 4, 8 (epochs), 10 (a step log), 12 (epoch, final)."""
  records = [{'step': 4, 'epoch_seconds': 1}, {'step': 8, 'epoch_seconds': 1},
             {'step': 10, 'step_loss_mean': 1}, {'step': 12, 'step_loss_mean': 1},
             {'step': 12, 'epoch_seconds': 1}, {'step': 12, 'test_accuracy_mean': 0.5}]
  kept = lambda done: [i for i, r in enumerate(records)
                       if not workdir_lib.rewritten_on_resume(r, done, 12)]
  assert kept(0) == []
  assert kept(8) == [0, 1]  # epoch 2 is skipped, its record kept
  assert kept(9) == [0, 1]
  assert kept(12) == [0, 1, 2, 3]  # the last epoch and the final record are written again


def test_missing_data_directory_is_a_clear_error(tmp_path):
  proc = run_main(tmp_path / 'w', f'--config.data.dir={tmp_path / "nowhere"}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'nowhere' in proc.stderr and 'DataError' in proc.stderr


@needs_shared_data
@pytest.mark.parametrize('devices', [1, 3])
def test_a_model_rerun_alone_or_sharded_matches_the_ensemble(finished_run, tmp_path, devices):
  """Model 1 of the 3-model run, trained alone (1 device) or sharded 1 per device (3)."""
  workdir, _ = finished_run
  flags = (('--config.first_model_id=1', '--config.num_models=1') if devices == 1 else ())
  proc = run_main(tmp_path, *flags, *DIFFICULTY, devices=devices)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ensemble = json.loads((workdir / 'summary.json').read_text())['models']
  (other,) = [m for m in json.loads((tmp_path / 'summary.json').read_text())['models']
              if m['id'] == 1]
  want = dict(next(m for m in ensemble if m['id'] == 1))
  if devices == 1:  # alpha_trim is measured against the rest of the group
    for key in ('alpha_trim', 'alpha_trim_beyond_grid'):
      del want[key], other[key]
  # Margins and calibration are reduced inside the analysis update, which XLA
  # compiles differently for another N or mesh: equal to the last bit or two of
  # the logits (~1e-7 absolute), which a margin near 0 cannot meet relatively.
  for key in ('margin_median', 'margin_quantiles', 'normalized_margin_quantiles', 'ece'):
    np.testing.assert_allclose(other.pop(key), want.pop(key), rtol=2e-6, atol=1e-6,
                               err_msg=key)
  assert other == want


def run_preempted(workdir, *flags, **env):
  """run_main through tests/preempt.py, which kills the run or fills its disk at a step."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu', **env)
  cmd = [sys.executable, str(REPO / 'tests' / 'preempt.py'),
         '--config=experiments/airbench.py:smoke', f'--workdir={workdir}', *TINY, *flags]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@needs_shared_data
def test_sigterm_saves_at_the_next_step_and_the_rerun_ends_identical(finished_run, tmp_path):
  """A preemption notice mid-epoch (SIGTERM before step 2 of 4): the run saves after that
  step, exits 143 with one line; the rerun resumes there and ends as finished_run."""
  reference, _ = finished_run
  flags = (f'--config.data.extra_test_sets=("binary:{reference.parent / "shifted.bin"}",)',
           *DIFFICULTY, '--config.checkpoint.at_epoch_end=False',
           '--config.checkpoint.every_minutes=0')
  workdir = tmp_path / 'terminated'
  stopped = run_preempted(workdir, *flags, VARJAX_TEST_TERM_AT_STEP='2')
  assert stopped.returncode == 143, stopped.stderr[-3000:]
  last_line = stopped.stderr.strip().splitlines()[-1]
  assert last_line.startswith('varjax: Preempted: stopped by a preemption notice after 3 '
                              'steps'), last_line
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == ['3']
  resumed = run_main(workdir, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from checkpoint at step 3' in resumed.stderr
  want = json.loads((reference / 'summary.json').read_text())
  got = json.loads((workdir / 'summary.json').read_text())
  for key in ('models', 'groups', 'diverged', 'total_steps', 'forgetting', 'extra_test_sets'):
    assert got[key] == want[key], key


@needs_shared_data
def test_sigkill_then_full_disk_then_rerun_ends_with_the_uninterrupted_summary(finished_run,
                                                                              tmp_path):
  """finished_run's config, checkpointed every step (8 steps): killed after 3 steps;
  resumed, the disk fills after 6; the rerun finishes with finished_run's results."""
  reference, _ = finished_run
  flags = (f'--config.data.extra_test_sets=("binary:{reference.parent / "shifted.bin"}",)',
           *DIFFICULTY, '--config.checkpoint.every_steps=1')
  workdir = tmp_path / 'preempted'
  killed = run_preempted(workdir, *flags, VARJAX_TEST_KILL_AT_STEP='3')
  assert killed.returncode == -signal.SIGKILL and not (workdir / 'summary.json').exists()

  full = run_preempted(workdir, *flags, VARJAX_TEST_DISK_FULL_AT_STEP='6')
  assert full.returncode == 2, full.stderr[-3000:]
  assert 'resumed from checkpoint at step' in full.stderr
  last_line = full.stderr.strip().splitlines()[-1]
  assert last_line.startswith('varjax: CheckpointError: Writing '), last_line
  assert 'File too large' in last_line and 'rerun the same command' in last_line
  assert f"{workdir / 'checkpoints' / '5'}, is intact" in last_line

  resumed = run_main(workdir, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from checkpoint at step 5' in resumed.stderr
  want = json.loads((reference / 'summary.json').read_text())
  got = json.loads((workdir / 'summary.json').read_text())
  for key in ('models', 'groups', 'diverged', 'total_steps', 'forgetting', 'extra_test_sets'):
    assert got[key] == want[key], key
  # The forgetting records are part of the checkpointed state.
  with np.load(reference / 'per_example.npz') as a, np.load(workdir / 'per_example.npz') as b:
    for key in ('forgetting_events', 'learned_epoch', 'cumulative_correct', 'prediction_depth'):
      np.testing.assert_array_equal(a[key], b[key])
  # Each metrics record once: 2 epochs and the final one.
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [4, 8, 8]


@needs_shared_data
def test_extra_test_set_is_analysed_like_the_main_one(finished_run):
  """The extra set holds the holdout's images again, so its results equal the main ones."""
  workdir, _ = finished_run
  summary = json.loads((workdir / 'summary.json').read_text())
  (extra,) = summary['extra_test_sets']
  assert extra['name'] == 'shifted' and extra['num_test'] == 128
  for main, other in zip(summary['models'], extra['models']):
    assert other['id'] == main['id']
    assert other['test_accuracy'] == main['test_accuracy'] and other['ece'] == main['ece']
  assert extra['groups'] == summary['groups']
  per_example = np.load(workdir / 'per_example.npz')
  np.testing.assert_array_equal(per_example['shifted/example_accuracy'],
                                per_example['example_accuracy'])
  paths = report.write_report(str(workdir))
  text = (workdir / 'report.md').read_text()
  assert '## Distribution shift: shifted (128 images)' in text and '## Example difficulty' in text
  for name in report_plots.DIFFICULTY_PLOTS:
    assert str(workdir / name) in paths and (workdir / name).stat().st_size > 0
