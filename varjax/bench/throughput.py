"""Throughput benchmark: the ensemble step vs the same model trained one at a time.

``benchmark`` (the command ``python -m varjax.bench``) yields one record per
(num_models, formulation): model-images/s of the
ensemble and of one model at a time (same per-model batch, same jitted step),
their ratio, compile time, MFU against a dense matmul peak measured in the
same process, and the evaluation (+ analysis) throughput. Synthetic uint8 data:
speed does not depend on pixel values.

A run has two step programs: while the whitening bias trains (the first
``train.whiten_bias_epochs``) and after (no backward through the whitening
layer). Both are timed; ``step_s`` and the throughputs weight them by the
config's schedule, ``live_step_s`` / ``frozen_step_s`` give each. ``--peer``
runs another trainer's command (``benchmarks/torch_peer.py``: the same network
in PyTorch, one seed after another) in the same run, weighted the same way,
for ``ratio_to_peer``. Each timing is the best of ``--repeats`` windows of
``--steps`` steps (the best window is the least disturbed on a shared machine).
"""

import json
import shlex
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from varjax import ensemble as ensemble_lib
from varjax.ensemble import mesh as mesh_lib
from varjax.run import evaluate

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


def train_flops_per_image(widths, whiten_width=24, kernel_size=2, whiten_bias_live=True):
  """Forward + backward: 3x the forward FLOPs of every layer but the frozen whitening
  conv, which has neither a kernel nor an input gradient. Once the whitening
  bias is frozen (``whiten_bias_live=False``) nothing needs the input gradient
  of the first 3x3 conv either."""
  size = 32 - kernel_size + 1
  whiten = 2 * size ** 2 * kernel_size ** 2 * 3 * whiten_width
  flops = 3 * forward_flops_per_image(widths, whiten_width, kernel_size) - 2 * whiten
  if not whiten_bias_live:
    flops -= 2 * size ** 2 * 9 * whiten_width * widths[0]
  return flops


def live_fraction(config):
  """Fraction of the run's steps that train the whitening bias (the costlier program)."""
  return min(1.0, config.train.whiten_bias_epochs / config.train.epochs)


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


def _best_window(run_step, first_step, steps, repeats):
  """Seconds per step of the best of ``repeats`` windows of ``steps`` steps."""
  best, s = float('inf'), first_step
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      metrics = run_step(s)
      s += 1
    jax.block_until_ready(metrics)
    best = min(best, (time.perf_counter() - start) / steps)
  return best


def time_training(config, num_train, steps, mesh=None, repeats=1):
  """The ensemble of ``config`` and its step times: (ens, state, times) with times
  {'live_compile_s', 'live_step_s', 'frozen_compile_s', 'frozen_step_s'} (the
  step programs before and after the whitening bias freezes; the frozen ones
  are None when the bias trains throughout)."""
  ens = ensemble_lib.build(config, num_train, mesh)
  rng = np.random.default_rng(0)
  rep = mesh_lib.replicated(ens.mesh)
  images = ens.step_images(rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8))
  labels = jax.device_put(rng.integers(0, 10, num_train).astype(np.int32), rep)
  kernel = np.random.default_rng(1).normal(size=(2, 2, 3, 24)).astype(np.float32) * 0.1
  state = ens.init(kernel)
  orders = ens.orders(0)
  holder = [state]

  def run_step(s):
    holder[0], metrics = ens.train_step(holder[0], orders, images, labels, s)
    return metrics

  times = {}
  phases = [('live', 0)]
  if live_fraction(config) < 1:
    phases.append(('frozen', ens.recipe.whiten_bias_steps))
  for phase, first in phases:
    start = time.perf_counter()
    jax.block_until_ready(run_step(first))  # compiles this phase's program
    times[f'{phase}_compile_s'] = time.perf_counter() - start
    times[f'{phase}_step_s'] = _best_window(run_step, first + 1, steps, repeats)
  times.setdefault('frozen_compile_s', None)
  times.setdefault('frozen_step_s', None)
  return ens, holder[0], times


def run_step_seconds(times, fraction):
  """Seconds per step averaged over a run whose first ``fraction`` of steps are live."""
  if times['frozen_step_s'] is None:
    return times['live_step_s']
  return fraction * times['live_step_s'] + (1 - fraction) * times['frozen_step_s']


def time_peer(command, config, steps):
  """Model-images/s of the peer trainer, weighted over the run like ``run_step_seconds``."""
  base = shlex.split(command) + [f'--widths={",".join(map(str, config.model.widths))}',
                                 f'--batch={config.train.batch_size}', f'--steps={steps}']
  rates = {}
  for phase, extra in (('live', []), ('frozen', ['--freeze_whiten_bias'])):
    out = subprocess.run(base + extra, check=True, capture_output=True, text=True).stdout
    rates[phase] = json.loads(out.strip().splitlines()[-1])
  fraction = live_fraction(config)
  seconds = (fraction / rates['live']['model_images_per_s']
             + (1 - fraction) / rates['frozen']['model_images_per_s'])
  return 1 / seconds, rates


def time_evaluation(ens, state, num_test, batch_size):
  """Model-images/s of TTA evaluation with the analysis kernel (second pass, compiled)."""
  rng = np.random.default_rng(2)
  rep = mesh_lib.replicated(ens.mesh)
  images = jax.device_put(rng.integers(0, 256, (num_test, 32, 32, 3), dtype=np.uint8), rep)
  labels = jax.device_put(rng.integers(0, 10, num_test).astype(np.int32), rep)
  run = evaluate.make_evaluator(ens, num_test, 10, batch_size, ens.config.analysis)
  run(state, images, labels)
  start = time.perf_counter()
  run(state, images, labels)
  return ens.num_models * num_test / (time.perf_counter() - start)


def benchmark(base, models=(8, 32), formulations=('auto',), steps=5, sequential=True,
              evaluation=True, repeats=1, peer=None):
  """Yields one record per (formulation, number of models): see the module docstring.

  ``peer``: the command of a peer trainer to time in the same run, or None.
  """
  batch = base.train.batch_size
  fraction = live_fraction(base)
  # Enough training images for every timed step of both phases.
  num_train = batch * (2 * (steps * repeats + 1) + 2)
  rates = {'sequential': None, 'peer': None, 'peer_rates': None}
  if sequential:
    one = base.copy_and_resolve_references()
    one.num_models, one.ensemble.models_per_chunk = 1, 1
    one.ensemble.formulation = 'unrolled'
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    _, _, one_times = time_training(one, num_train, steps, mesh, repeats)
    rates['sequential'] = batch / run_step_seconds(one_times, fraction)
  if peer:
    rates['peer'], rates['peer_rates'] = time_peer(peer, base, max(steps, 10))
  for formulation in formulations:
    for n in models:
      config = base.copy_and_resolve_references()
      config.num_models = n
      config.ensemble.formulation = formulation
      ens, state, times = time_training(config, num_train, steps, repeats=repeats)
      record = _record(base, ens, times, rates)
      if evaluation:
        num_test = min(2 * base.eval.batch_size, 10_000)
        record['eval_model_images_per_s'] = round(
            time_evaluation(ens, state, num_test, base.eval.batch_size), 1)
        record['eval_tta_level'] = base.eval.tta_level
      yield record
      del state


def _record(base, ens, times, rates):
  """The JSON record of one timed ensemble (see the module docstring)."""
  backend = jax.default_backend()
  widths, batch, n = tuple(base.model.widths), base.train.batch_size, ens.num_models
  fraction = live_fraction(base)
  flops = (fraction * train_flops_per_image(widths)
           + (1 - fraction) * train_flops_per_image(widths, whiten_bias_live=False))
  peak = matmul_peak_flops(ens.options.dtype)
  seconds = run_step_seconds(times, fraction)
  throughput = n * batch / seconds
  rounded = lambda v, d=4: None if v is None else round(v, d)
  sequential, peer, peer_rates = rates['sequential'], rates['peer'], rates['peer_rates']
  return {
      'backend': backend, 'device': jax.devices()[0].device_kind,
      'num_devices': jax.device_count(), 'num_models': n,
      'formulation': ens.formulation, 'models_per_chunk': ens.models_per_chunk,
      'compute_dtype': ens.compute_dtype, 'widths': widths, 'batch_size': batch,
      'compile_s': round(times['live_compile_s'], 2),
      'frozen_compile_s': rounded(times['frozen_compile_s'], 2),
      'live_step_s': round(times['live_step_s'], 4),
      'frozen_step_s': rounded(times['frozen_step_s']),
      'live_fraction': round(fraction, 4), 'step_s': round(seconds, 4),
      'ensemble_model_images_per_s': round(throughput, 1),
      'sequential_model_images_per_s': sequential and round(sequential, 1),
      'ratio': sequential and round(throughput / sequential, 3),
      'peer_model_images_per_s': peer and round(peer, 1),
      'peer_live_frozen': peer_rates and [peer_rates['live']['model_images_per_s'],
                                          peer_rates['frozen']['model_images_per_s']],
      'ratio_to_peer': peer and round(throughput / peer, 3),
      'train_gflop_per_image': round(flops / 1e9, 4),
      'achieved_tflop_per_s': round(throughput * flops / 1e12, 3),
      'peak_matmul_tflop_per_s': round(peak / 1e12, 3),
      'mfu': round(throughput * flops / peak, 4),
      'runs_per_hour': round(throughput * 3600 / (base.train.epochs
                                                  * (base.data.train_size or 50_000)), 1),
  }
