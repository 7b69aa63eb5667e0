r"""Throughput benchmark: the ensemble step vs the same model trained one at a time.

  python -m varjax.bench --config=experiments/airbench.py:cpu --models=8,32 --steps=5

Prints one JSON line per (num_models, formulation): model-images/s of the
ensemble and of one model at a time (same per-model batch, same jitted step),
their ratio, compile time, MFU against a dense matmul peak measured in the
same process, and the evaluation (+ analysis) throughput. Synthetic uint8 data:
speed does not depend on pixel values.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import cli
from varjax import ensemble as ensemble_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].')
_MODELS = flags.DEFINE_list('models', ['8', '32'], 'Ensemble sizes to time.')
_FORMULATIONS = flags.DEFINE_list('formulations', ['auto'],
                                  'ensemble.formulation values to compare.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per setting (after one warm-up).')
_SEQUENTIAL = flags.DEFINE_bool('sequential', True, 'Also time one model at a time.')
_EVAL = flags.DEFINE_bool('eval', True, 'Also time evaluation with the analysis kernel.')
flags.mark_flags_as_required(['config'])


def forward_flops_per_image(widths, whiten_width=24, kernel_size=2, num_classes=10):
  """Multiply-adds x 2 of one forward pass (convs and head; elementwise ops ignored)."""
  size = 32 - kernel_size + 1
  flops = 2 * size * size * kernel_size ** 2 * 3 * whiten_width
  c_in = whiten_width
  for width in widths:
    flops += 2 * size * size * 9 * c_in * width  # conv1 at full resolution
    size //= 2
    flops += 2 * size * size * 9 * width * width  # conv2 after the pool
    c_in = width
  return flops + 2 * widths[-1] * num_classes


def train_flops_per_image(widths, whiten_width=24, kernel_size=2):
  """Forward + backward: 3x the forward FLOPs of every layer but the frozen whitening
  conv, which has neither a kernel nor an input gradient."""
  whiten = 2 * (32 - kernel_size + 1) ** 2 * kernel_size ** 2 * 3 * whiten_width
  return 3 * forward_flops_per_image(widths, whiten_width, kernel_size) - 2 * whiten


def matmul_peak_flops(dtype, size=None, repeats=5):
  """Best FLOP/s of a square matmul chain on the default device."""
  size = size or (1024 if jax.default_backend() == 'cpu' else 8192)
  a = jnp.ones((size, size), dtype) / size
  f = jax.jit(lambda x: x @ x @ x @ x)  # three matmuls
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 3 * 2 * size ** 3 / best


def time_training(config, num_train, steps, mesh=None):
  """(compile_s, seconds per step) of the ensemble described by ``config``."""
  ens = ensemble_lib.Ensemble(config, num_train, mesh)
  rng = np.random.default_rng(0)
  rep = ensemble_lib.replicated(ens.mesh)
  images = jax.device_put(rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8), rep)
  labels = jax.device_put(rng.integers(0, 10, num_train).astype(np.int32), rep)
  kernel = np.random.default_rng(1).normal(size=(2, 2, 3, 24)).astype(np.float32) * 0.1
  state = ens.init(kernel)
  orders = ens.orders(0)
  start = time.perf_counter()
  state, metrics = ens.train_step(state, orders, images, labels, 0)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for s in range(1, steps + 1):
    state, metrics = ens.train_step(state, orders, images, labels, s)
  jax.block_until_ready(metrics)
  return ens, state, compile_s, (time.perf_counter() - start) / steps


def time_evaluation(ens, state, num_test, batch_size):
  """Model-images/s of TTA evaluation with the analysis kernel (second pass, compiled)."""
  from varjax import train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  rep = ensemble_lib.replicated(ens.mesh)
  images = jax.device_put(rng.integers(0, 256, (num_test, 32, 32, 3), dtype=np.uint8), rep)
  labels = jax.device_put(rng.integers(0, 10, num_test).astype(np.int32), rep)
  evaluate = train.make_evaluator(ens, num_test, 10, batch_size, ens.config.analysis)
  evaluate(state, images, labels)
  start = time.perf_counter()
  evaluate(state, images, labels)
  return ens.num_models * num_test / (time.perf_counter() - start)


def main(argv):
  del argv
  base = _CONFIG.value
  backend = jax.default_backend()
  widths = tuple(base.model.widths)
  batch = base.train.batch_size
  num_train = batch * (_STEPS.value + 2)
  dtype = ensemble_lib.COMPUTE_DTYPES[base.ensemble.compute_dtype]
  peak = matmul_peak_flops(dtype)
  flops = train_flops_per_image(widths)
  epoch_images = base.data.train_size or 50_000
  sequential = None
  if _SEQUENTIAL.value:
    one = base.copy_and_resolve_references()
    one.num_models, one.ensemble.models_per_chunk = 1, 1
    one.ensemble.formulation = 'unrolled'
    mesh = ensemble_lib.make_mesh(jax.devices()[:1])
    _, _, _, seconds = time_training(one, num_train, _STEPS.value, mesh)
    sequential = batch / seconds
  for formulation in _FORMULATIONS.value:
    for n in map(int, _MODELS.value):
      config = base.copy_and_resolve_references()
      config.num_models = n
      config.ensemble.formulation = formulation
      ens, state, compile_s, seconds = time_training(config, num_train, _STEPS.value)
      throughput = n * batch / seconds
      record = {
          'backend': backend, 'device': jax.devices()[0].device_kind,
          'num_devices': jax.device_count(), 'num_models': n,
          'formulation': ens.formulation, 'models_per_chunk': ens.models_per_chunk,
          'compute_dtype': base.ensemble.compute_dtype, 'widths': widths, 'batch_size': batch,
          'compile_s': round(compile_s, 2), 'step_s': round(seconds, 4),
          'ensemble_model_images_per_s': round(throughput, 1),
          'sequential_model_images_per_s': sequential and round(sequential, 1),
          'ratio': sequential and round(throughput / sequential, 3),
          'train_gflop_per_image': round(flops / 1e9, 4),
          'achieved_tflop_per_s': round(throughput * flops / 1e12, 3),
          'peak_matmul_tflop_per_s': round(peak / 1e12, 3),
          'mfu': round(throughput * flops / peak, 4),
          'runs_per_hour': round(throughput * 3600 / (base.train.epochs * epoch_images), 1),
      }
      if _EVAL.value:
        num_test = min(2 * base.eval.batch_size, 10_000)
        record['eval_model_images_per_s'] = round(
            time_evaluation(ens, state, num_test, base.eval.batch_size), 1)
        record['eval_tta_level'] = base.eval.tta_level
      print(json.dumps(record), flush=True)
      del state


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
