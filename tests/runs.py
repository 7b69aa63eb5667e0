"""Runs that several test modules share: a tiny ensemble trained in-process, and the CLI."""

import os
import subprocess
import sys

import jax
import numpy as np

from varjax import ensemble
from varjax.ensemble import mesh as mesh_lib
from varjax.training import step as step_lib

from conftest import REPO, random_images, tiny_config

NUM_TRAIN = 64


DIFFICULTY = {'difficulty.prediction_depth': True, 'difficulty.depth_k': 3,
              'difficulty.forgetting': True, 'difficulty.forgetting_probe_size': 16}


def run(num_models, first_model_id=0, models_per_chunk=1, num_devices=1, **overrides):
  """Trains a tiny ensemble on random data with every difficulty probe on.

  Returns per-model final variables and evaluation outputs (logits, depth,
  feature margins and the forgetting records), all host arrays.
  """
  config = tiny_config(num_models=num_models, first_model_id=first_model_id,
                       **{'ensemble.models_per_chunk': models_per_chunk}, **DIFFICULTY,
                       **overrides)
  mesh = mesh_lib.make_mesh(jax.devices()[:num_devices])
  ens = ensemble.Ensemble(config, NUM_TRAIN, mesh)
  images, labels = random_images(NUM_TRAIN)
  kernel = step_lib.whitening_kernel_for(images, config.model)
  state = ens.init(kernel)
  for epoch, steps in ens.recipe.epochs():
    orders = ens.orders(epoch)
    for s in steps:
      state, _ = ens.train_step(state, orders, images, labels, s)
    state = ens.record_forgetting(state, images[:16], labels[:16])
  support = ens.embeddings(state, jax.numpy.asarray(images[8:24]))
  outputs = ens.eval_outputs(state, jax.numpy.asarray(images[:8]), labels[:8], support,
                             labels[8:24])
  np.testing.assert_array_equal(outputs['logits'], ens.logits(state, images[:8]))
  outputs['forgetting'] = state['forgetting']
  final = step_lib.final_variables(state, ens.recipe)
  return jax.tree.map(np.asarray, final), jax.tree.map(np.asarray, outputs)


def assert_models_equal(a, b, a_index, b_index):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x[a_index], y[b_index])


TINY = ('--config.num_models=3', '--config.model.widths=(4,8,8)',
        '--config.model.whiten_num_images=64', '--config.data.train_size=256',
        '--config.data.holdout_size=128', '--config.train.batch_size=64',
        '--config.train.epochs=1', '--config.eval.batch_size=100')


def run_main(workdir, *flags, devices=1, config='experiments/airbench.py:smoke'):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'varjax.main', f'--config={config}',
         f'--workdir={workdir}', *TINY, *flags]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
