"""Checkpoints: exact round trip, corruption and config changes detected, divergence masked."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax import checkpoint
from varjax import ensemble
from varjax import step as step_lib
from varjax import train
from varjax.models import airbench

from conftest import random_images, tiny_config
from ensemble_test import NUM_TRAIN, assert_models_equal


def sharded_state(num_models=8):
  mesh = ensemble.make_mesh(jax.devices()[:min(8, len(jax.devices()))])
  rng = np.random.default_rng(0)
  tree = {'w': rng.normal(size=(num_models, 3, 5)).astype(np.float32),
          'count': np.arange(num_models, dtype=np.int32),
          'bias': rng.normal(size=(num_models,)).astype(np.float32)}
  return jax.device_put(tree, ensemble.model_sharding(mesh))


def test_round_trip_is_exact_and_keeps_the_last_k(tmp_path):
  config = tiny_config(**{'checkpoint.keep': 2})
  state = sharded_state()
  totals = {'loss': state['bias'] * 3}
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  for step in (1, 2, 3):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, state), totals)
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'manifests')) == ['2.json', '3.json']
  template = jax.tree.map(jnp.zeros_like, state)
  again = checkpoint.Checkpointer(str(tmp_path), config)
  step, restored, restored_totals = again.restore_latest(template, {'loss': state['bias']})
  again.close()
  assert step == 3
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want) * 3)
    assert got.sharding == want.sharding
  np.testing.assert_array_equal(restored_totals['loss'], totals['loss'])


def test_no_checkpoint_returns_the_templates(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), tiny_config())
  state = sharded_state()
  step, restored, _ = ckpt.restore_latest(state, {})
  ckpt.close()
  assert step == 0 and restored is state


def test_corrupt_checkpoint_is_detected(tmp_path):
  config = tiny_config()
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  state = sharded_state()
  ckpt.save(4, state, {'loss': state['bias']})
  ckpt.close()
  step_dir = tmp_path / 'checkpoints' / '4'
  files = sorted(p for p in step_dir.rglob('*') if p.is_file() and p.stat().st_size > 0)
  victim = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 0xFF
  victim.write_bytes(bytes(data))
  again = checkpoint.Checkpointer(str(tmp_path), config)
  with pytest.raises(checkpoint.CheckpointError, match='is corrupt'):
    again.restore_latest(jax.tree.map(jnp.zeros_like, state), {'loss': state['bias']})


def test_resume_with_a_different_config_names_the_fields(tmp_path):
  config = tiny_config()
  train.prepare_workdir(str(tmp_path), config)
  os.makedirs(tmp_path / 'checkpoints' / '2')
  changed = tiny_config(**{'opt.lr': 1.0, 'train.epochs': 3.0, 'checkpoint.keep': 5})
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.prepare_workdir(str(tmp_path), changed)
  assert 'opt.lr' in str(e.value) and 'train.epochs' in str(e.value)
  assert 'checkpoint.keep' not in str(e.value) and '--config.overwrite' in str(e.value)
  # The same config (checkpoint settings aside) resumes; overwrite starts again.
  train.prepare_workdir(str(tmp_path), tiny_config(**{'checkpoint.keep': 5}))
  changed.overwrite = True
  train.prepare_workdir(str(tmp_path), changed)
  assert not (tmp_path / 'checkpoints').exists()
  assert json.loads((tmp_path / 'config.json').read_text())['opt']['lr'] == 1.0


def train_models(num_models, first_model_id=0, **overrides):
  config = tiny_config(num_models=num_models, first_model_id=first_model_id, **overrides)
  ens = ensemble.Ensemble(config, NUM_TRAIN, ensemble.make_mesh(jax.devices()[:1]))
  images, labels = random_images(NUM_TRAIN)
  state = ens.init(airbench.whitening_kernel_for(images, config.model))
  for epoch, steps in ens.plan.epochs():
    orders = ens.orders(epoch)
    for s in steps:
      state, _ = ens.train_step(state, orders, images, labels, s)
  final = jax.tree.map(np.asarray, step_lib.final_variables(state, ens.plan))
  return final, np.asarray(state['diverged_at'])


def test_diverging_model_is_frozen_and_leaves_the_others_unchanged():
  sweep = {'sweep.lr_multipliers': (1.0, 1e30), 'sweep.seeds_per_point': 1}
  final, diverged = train_models(2, **sweep)
  assert diverged[0] == -1 and diverged[1] >= 0
  assert all(np.all(np.isfinite(x[1])) for x in jax.tree.leaves(final))
  alone, alone_diverged = train_models(1)
  assert alone_diverged[0] == -1
  assert_models_equal(final, alone, 0, 0)
