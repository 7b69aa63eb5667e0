"""Checkpoints: exact round trip, corruption and config changes detected, divergence masked,
resume on another device count, a full disk or read-only workdir.

On the 2-core VM at load average 8: the resume on 4 devices 50 s (it compiles the step for
two meshes), the divergence test 75 s, the rest under 1 s each.
"""

import contextlib
import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax import errors

from varjax.run import checkpoint
from varjax import ensemble
from varjax.ensemble import mesh as mesh_lib
from varjax.training import step as step_lib
from varjax.run import train
from varjax.run import workdir as workdir_lib
from varjax.models import airbench

from conftest import random_images, tiny_config
from runs import NUM_TRAIN, assert_models_equal


def sharded_state(num_models=8, size=(3, 5)):
  mesh = mesh_lib.make_mesh(jax.devices()[:min(8, len(jax.devices()))])
  rng = np.random.default_rng(0)
  tree = {'w': rng.normal(size=(num_models, *size)).astype(np.float32),
          'count': np.arange(num_models, dtype=np.int32),
          'bias': rng.normal(size=(num_models,)).astype(np.float32)}
  return jax.device_put(tree, mesh_lib.model_sharding(mesh))


def test_round_trip_is_exact_and_keeps_the_last_k(tmp_path):
  config = tiny_config(**{'checkpoint.keep': 2})
  state = sharded_state()
  totals = {'loss': state['bias'] * 3}
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  for step in (1, 2, 3):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, state), totals)
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'manifests')) == [
      '2.process_0.json', '3.process_0.json']
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
  with pytest.raises(errors.CheckpointError, match='is corrupt'):
    again.restore_latest(jax.tree.map(jnp.zeros_like, state), {'loss': state['bias']})


def test_resume_with_a_different_config_names_the_fields(tmp_path):
  config = tiny_config()
  workdir_lib.prepare_workdir(str(tmp_path), config)
  os.makedirs(tmp_path / 'checkpoints' / '2')
  changed = tiny_config(**{'opt.lr': 1.0, 'train.epochs': 3.0, 'checkpoint.keep': 5})
  with pytest.raises(errors.CheckpointError) as e:
    workdir_lib.prepare_workdir(str(tmp_path), changed)
  assert 'opt.lr' in str(e.value) and 'train.epochs' in str(e.value)
  assert 'checkpoint.keep' not in str(e.value) and '--config.overwrite' in str(e.value)
  # The same config (checkpoint settings aside) resumes; overwrite starts again.
  workdir_lib.prepare_workdir(str(tmp_path), tiny_config(**{'checkpoint.keep': 5}))
  changed.overwrite = True
  workdir_lib.prepare_workdir(str(tmp_path), changed)
  assert not (tmp_path / 'checkpoints').exists()
  assert json.loads((tmp_path / 'config.json').read_text())['opt']['lr'] == 1.0


def train_models(num_models, first_model_id=0, **overrides):
  config = tiny_config(num_models=num_models, first_model_id=first_model_id, **overrides)
  ens = ensemble.Ensemble(config, NUM_TRAIN, mesh_lib.make_mesh(jax.devices()[:1]))
  images, labels = random_images(NUM_TRAIN)
  state = ens.init(step_lib.whitening_kernel_for(images, config.model))
  for epoch, steps in ens.recipe.epochs():
    orders = ens.orders(epoch)
    for s in steps:
      state, _ = ens.train_step(state, orders, images, labels, s)
  final = jax.tree.map(np.asarray, step_lib.final_variables(state, ens.recipe))
  return final, np.asarray(state['diverged_at'])


def test_diverging_model_is_frozen_and_leaves_the_others_unchanged():
  sweep = {'sweep.lr_multipliers': (1.0, 1e30), 'sweep.seeds_per_point': 1}
  final, diverged = train_models(2, **sweep)
  assert diverged[0] == -1 and diverged[1] >= 0
  assert all(np.all(np.isfinite(x[1])) for x in jax.tree.leaves(final))
  alone, alone_diverged = train_models(1)
  assert alone_diverged[0] == -1
  assert_models_equal(final, alone, 0, 0)


def test_resume_on_half_the_devices_equals_an_uninterrupted_run(tmp_path):
  """Saved mid-run on 8 devices (1 model each, chunks of 1), resumed on 4 (2 each, chunks
  of 2): every model's final weights equal the uninterrupted 8-device run's, bit for bit."""
  # One compiled step program per mesh: the whitening bias trains throughout.
  config = tiny_config(num_models=8, **{'train.whiten_bias_epochs': 1.5})
  images, labels = random_images(NUM_TRAIN)
  kernel = step_lib.whitening_kernel_for(images, config.model)

  def ensemble_on(num_devices):
    return ensemble.Ensemble(config, NUM_TRAIN, mesh_lib.make_mesh(jax.devices()[:num_devices]))

  def train(ens, state, first, last):
    for epoch, steps in ens.recipe.epochs():
      orders = ens.orders(epoch)
      for s in steps:
        if first <= s < last:
          state, _ = ens.train_step(state, orders, images, labels, s)
    return state

  eight = ensemble_on(8)
  total = eight.recipe.total_steps
  stop = total // 2  # mid-epoch (4 steps per epoch, 6 in all)
  reference = train(eight, eight.init(kernel), 0, total)
  state = train(eight, eight.init(kernel), 0, stop)
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(stop, state, {'loss': eight.zeros(())})
  ckpt.close()

  four = ensemble_on(4)
  assert (eight.models_per_chunk, four.models_per_chunk) == (1, 2)
  again = checkpoint.Checkpointer(str(tmp_path), config)
  done, state, _ = again.restore_latest(four.init(kernel), {'loss': four.zeros(())})
  again.close()
  assert done == stop
  assert all(x.sharding == mesh_lib.model_sharding(four.mesh) for x in jax.tree.leaves(state))
  resumed = train(four, state, stop, total)
  for got, want in zip(jax.tree.leaves(step_lib.final_variables(resumed, four.recipe)),
                       jax.tree.leaves(step_lib.final_variables(reference, eight.recipe))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@contextlib.contextmanager
def file_size_limit(num_bytes):
  """Writes that would grow a file past ``num_bytes`` fail (EFBIG), as on a full disk.

  The kernel refuses them for every thread of this process, tensorstore's included
  (Python ignores SIGXFSZ, so the write returns the error instead of killing it).
  """
  resource = pytest.importorskip('resource')
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_full_disk_keeps_the_last_good_checkpoint_and_a_rerun_resumes(tmp_path):
  config = tiny_config()
  state = sharded_state(size=(64, 1024))  # 2 MiB: its data file outgrows the limit
  totals = {'loss': state['bias']}
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(1, state, totals)
  ckpt.save(2, jax.tree.map(lambda x: x * 2, state), totals)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  with file_size_limit(256 * 1024):
    with pytest.raises(errors.CheckpointError) as e:
      ckpt.save(3, jax.tree.map(lambda x: x * 3, state), totals)
      ckpt.close()  # the write fails in the background; reported here at the latest
  message = str(e.value)
  assert '\n' not in message and 'File too large' in message, message
  assert f"{tmp_path / 'checkpoints' / '2'}, is intact" in message
  assert 'rerun the same command' in message
  # The rerun, with room again: resumes from step 2 and saves on.
  again = checkpoint.Checkpointer(str(tmp_path), config)
  step, restored, _ = again.restore_latest(jax.tree.map(jnp.zeros_like, state), totals)
  assert step == 2
  np.testing.assert_array_equal(np.asarray(restored['w']), np.asarray(state['w']) * 2)
  again.save(4, restored, totals)
  again.close()
  assert checkpoint.finished_steps(tmp_path / 'checkpoints') == [2, 4]
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'manifests')) == ['2.process_0.json', '4.process_0.json']


def test_read_only_manifests_are_a_clear_error(tmp_path, monkeypatch):
  """The checksums are written on a background thread; its failure reaches the caller."""
  config = tiny_config()
  state = sharded_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)

  def read_only(path, obj, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

  monkeypatch.setattr(checkpoint.files, 'write_json', read_only)
  ckpt.save(1, state, {'loss': state['bias']})
  with pytest.raises(errors.CheckpointError, match='Read-only file system') as e:
    ckpt.close()
  assert 'the checksums' in str(e.value) and "checkpoints/1, is intact" in str(e.value)
  monkeypatch.undo()
  again = checkpoint.Checkpointer(str(tmp_path), config)  # no manifest: trusted, resumed
  assert again.restore_latest(jax.tree.map(jnp.zeros_like, state), {'loss': state['bias']}
                              )[0] == 1
  again.close()


def test_storage_errors_are_one_line_naming_the_last_checkpoint(tmp_path):
  os.makedirs(tmp_path / 'checkpoints' / '7')
  os.makedirs(tmp_path / 'checkpoints' / '9.orbax-checkpoint-tmp')
  error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / 'metrics.jsonl'))
  message = checkpoint.storage_error_message(error, str(tmp_path))
  assert 'No space left on device' in message and 'metrics.jsonl' in message
  assert f"{tmp_path / 'checkpoints' / '7'}, is intact" in message and '\n' not in message
  assert checkpoint.storage_error_message(FileNotFoundError(errno.ENOENT, 'x'), '.') is None


def test_a_remote_workdir_is_refused_in_one_line_naming_checkpoint_directory():
  with pytest.raises(errors.WorkdirError) as e:
    workdir_lib.prepare_workdir('gs://bucket/run', tiny_config())
  assert '\n' not in str(e.value) and 'checkpoint.directory' in str(e.value)
