"""The run-level bound: compiles, checkpoint bytes and evaluation added to the training steps."""

import math
import types

import jax
import numpy as np
import pytest

from varjax.aot import run_bound
from varjax.ensemble import ensemble
from varjax.ensemble import mesh as mesh_lib
from varjax.training import step as step_lib
from conftest import random_images
from conftest import tiny_config


@pytest.mark.parametrize('compile_s,run_s', [(9.0, 10.0), (100.0, 3.0), (0.5, 60.0), (40, 40)])
def test_runs_sharing_one_compile_is_the_smallest_k_under_ten_percent(compile_s, run_s):
  k = run_bound.runs_for_compile_share(compile_s, run_s)
  share = lambda k: compile_s / (compile_s + k * run_s)
  assert share(k) <= 0.1 + 1e-12 and (k == 1 or share(k - 1) > 0.1)


def test_checkpoint_bytes_are_those_of_the_state_a_run_saves():
  config = tiny_config(num_models=3, **{'ensemble.chunk_loop': 'scan'})
  ens = ensemble.Ensemble(config, 256, mesh_lib.make_mesh(jax.devices()[:1]))
  images, _ = random_images(256)
  state = ens.init(step_lib.whitening_kernel_for(images, config.model))
  saved = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
  assert run_bound.checkpoint_bytes(ens) == saved


def test_run_record_adds_compiles_and_one_evaluation_pass(monkeypatch):
  monkeypatch.setattr(run_bound, 'checkpoint_bytes', lambda ens: 123)
  ens = types.SimpleNamespace(num_models=64, config=tiny_config(**{'eval.batch_size': 1000}))
  records = [
      {'program': 'init', 'compile_s': 2.0},
      {'program': 'train_step', 'compile_s': 20.0, 'runs_per_hour_bound': 64 * 3600 / 50.0},
      {'program': 'eval_outputs', 'compile_s': 6.0, 'roofline_step_s': 0.01},
      {'program': 'analysis_update', 'compile_s': 2.0, 'roofline_step_s': 0.002}]
  record = run_bound.run_record(records, ens, types.SimpleNamespace(name='h100'), 10_000)
  # 50 s of training steps, 10 batches x 12 ms of evaluation, 30 s of compiles.
  assert record['train_s_bound'] == pytest.approx(50.0)
  assert record['eval_s_bound'] == pytest.approx(0.12)
  assert record['run_s_bound'] == pytest.approx(80.12)
  assert record['runs_per_hour_run'] == pytest.approx(64 * 3600 / 80.12, abs=0.1)
  assert record['compile_share'] == pytest.approx(30 / 80.12, abs=1e-3)
  assert record['runs_sharing_compile_for_10pct'] == math.ceil(9 * 30 / 50.12)
  assert record['checkpoint_bytes_per_save'] == 123
  assert run_bound.run_record(records[1:], ens, None, 10_000) is None
