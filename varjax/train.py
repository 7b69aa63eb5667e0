"""train_and_evaluate: data -> ensemble training -> on-device analysis -> summary.

The whole loop of one run. Outputs in ``workdir``:
  config.json     the resolved config;
  metrics.jsonl   one JSON line per epoch (and every ``log.every_steps``);
  tensorboard/    the same scalars for TensorBoard;
  summary.json    per-model and per-group results (see ``write_summary``);
  per_example.npz per-example accuracy and vote counts per group, labels, the
                  model groups, and pairwise churn / error kappa.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from varjax import analysis
from varjax import config_check
from varjax import data as data_lib
from varjax import ensemble as ensemble_lib
from varjax import writers
from varjax.models import airbench

SUMMARY_FILE = 'summary.json'
PER_EXAMPLE_FILE = 'per_example.npz'
CONFIG_FILE = 'config.json'
# Large arrays: per example (G, n[, K]) and per pair of models (N, N).
PER_EXAMPLE_KEYS = analysis.PER_EXAMPLE_KEYS + analysis.PAIRWISE_KEYS


class WorkdirError(RuntimeError):
  """The workdir holds something a new run must not silently overwrite."""


def prepare_workdir(workdir, config):
  """Refuses to overwrite a finished run unless ``config.overwrite``; writes config.json."""
  os.makedirs(workdir, exist_ok=True)
  summary = os.path.join(workdir, SUMMARY_FILE)
  if os.path.exists(summary):
    if not config.overwrite:
      raise WorkdirError(
          f'{workdir} holds a finished run ({SUMMARY_FILE} exists). Choose another --workdir, '
          'or pass --config.overwrite=True to discard it and start again.')
    for name in (SUMMARY_FILE, PER_EXAMPLE_FILE, writers.METRICS_FILE):
      path = os.path.join(workdir, name)
      if os.path.exists(path):
        os.remove(path)
  with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def make_evaluator(ens, num_examples, num_classes, batch_size):
  """Returns evaluate(state, images, labels) -> analysis results (host NumPy).

  Test images and labels live on the device; each batch's TTA logits stay
  there and go straight into the analysis accumulators.
  """

  def take(images, labels, start, size):
    x = jax.lax.dynamic_slice_in_dim(images, start, size)
    y = jax.lax.dynamic_slice_in_dim(labels, start, size)
    return x, y, start + jnp.arange(size, dtype=jnp.int32)

  take = jax.jit(take, static_argnums=3)
  update = jax.jit(analysis.update, donate_argnums=0)
  finalize = jax.jit(analysis.finalize)

  def evaluate(state, images, labels):
    stats = analysis.init(ens.num_models, num_examples, num_classes, ens.groups)
    for start in range(0, num_examples, batch_size):
      x, y, ids = take(images, labels, jnp.int32(start), min(batch_size, num_examples - start))
      stats = update(stats, ens.logits(state, x), y, ids)
    return jax.tree.map(np.asarray, finalize(stats))

  return evaluate


def train_and_evaluate(config, workdir):
  """Trains ``config.num_models`` models at once and writes the run's outputs to ``workdir``."""
  config_check.check(config)
  prepare_workdir(workdir, config)
  dataset = data_lib.load(config.data)
  num_train, num_test = len(dataset.train_labels), len(dataset.test_labels)

  ens = ensemble_lib.Ensemble(config, num_train)
  plan = ens.plan
  num_params = airbench.num_params(
      airbench.init_variables(ens.model, jax.random.key(0), np.zeros(
          (config.model.whiten_kernel_size,) * 2 + (3, ens.model.whiten_width)))['params'])
  logging.info('%d models x %s params on %d %s device(s), %d per chunk; %d train / %d %s '
               'images; %d steps of batch %d', ens.num_models, f'{num_params:,}',
               ens.mesh.devices.size, jax.default_backend(), ens.models_per_chunk, num_train,
               num_test, dataset.test_name, plan.total_steps, plan.batch_size)

  replicated = ensemble_lib.replicated(ens.mesh)
  train_images = jax.device_put(dataset.train_images, replicated)
  train_labels = jax.device_put(dataset.train_labels, replicated)
  state = ens.init(airbench.whitening_kernel_for(dataset.train_images, config.model))

  writer = writers.MetricWriter(workdir)
  train_time = 0.0
  last = None
  for epoch, steps in plan.epochs():
    start = time.perf_counter()
    orders = ens.orders(epoch)
    totals = None
    for step in steps:
      state, metrics = ens.train_step(state, orders, train_images, train_labels, step)
      totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
      if config.log.every_steps and (step + 1) % config.log.every_steps == 0:
        writer.write(step + 1, epoch=epoch, **{f'step_{k}_mean': float(v.mean())
                                               for k, v in metrics.items()})
    last = jax.tree.map(lambda t: np.asarray(t) / len(steps), totals)  # waits for the epoch
    seconds = time.perf_counter() - start
    train_time += seconds
    logging.info('epoch %d/%d  %.1fs  train loss %.4f  acc %.4f (mean over %d models)',
                 epoch + 1, plan.num_epochs, seconds, last['loss'].mean(),
                 last['accuracy'].mean(), ens.num_models)
    writer.write(steps[-1] + 1, epoch=epoch + 1, epoch_seconds=seconds,
                 train_loss=float(last['loss'].mean()),
                 train_accuracy=float(last['accuracy'].mean()))

  start = time.perf_counter()
  evaluate = make_evaluator(ens, num_test, dataset.num_classes, config.eval.batch_size)
  results = evaluate(state, jax.device_put(dataset.test_images, replicated),
                     jax.device_put(dataset.test_labels, replicated))
  eval_time = time.perf_counter() - start
  writer.write(plan.total_steps, test_accuracy_mean=float(results['accuracy'].mean()),
               test_accuracy_std=float(results['std_accuracy'][0]), eval_seconds=eval_time)
  writer.close()

  run_info = {'name': config.name, 'variant': config.variant, 'seed': config.seed,
              'num_params_per_model': num_params, 'num_train': num_train,
              'test_set': dataset.test_name, 'num_test': num_test,
              'total_steps': plan.total_steps, 'backend': jax.default_backend(),
              'num_devices': int(ens.mesh.devices.size),
              'models_per_chunk': ens.models_per_chunk,
              'train_seconds': train_time, 'eval_seconds': eval_time}
  summary = write_summary(workdir, ens, run_info, last, results, dataset.test_labels)
  for line in analysis.report_lines(results):
    logging.info('%s', line)
  return summary


def write_summary(workdir, ens, run_info, train_metrics, results, test_labels):
  """Writes summary.json and per_example.npz; returns the summary dict."""
  n = ens.num_models
  per_model = {k: results[k] for k in analysis.PER_MODEL_KEYS}
  hparams = jax.tree.map(np.asarray, ens.hparams)
  models = []
  for k in range(n):
    entry = {'id': int(ens.model_ids[k]), 'seed': run_info['seed'],
             'group': int(ens.groups[k]),
             'test_accuracy': float(results['accuracy'][k]),
             'train_loss': float(train_metrics['loss'][k]),
             'train_accuracy': float(train_metrics['accuracy'][k])}
    entry.update({name: _json_value(v[k]) for name, v in hparams.items()})
    entry.update({name: _json_value(v[k]) for name, v in per_model.items()
                  if name != 'accuracy'})
    models.append(entry)
  num_groups = int(ens.groups.max()) + 1
  per_group = {k: results[k] for k in analysis.PER_GROUP_KEYS}
  groups = [{'group': g, **{k: _json_value(v[g]) for k, v in per_group.items()}}
            for g in range(num_groups)]
  summary = {**run_info, 'num_models': n, 'models': models, 'groups': groups}
  _write_json_atomic(os.path.join(workdir, SUMMARY_FILE), summary)
  np.savez_compressed(os.path.join(workdir, PER_EXAMPLE_FILE), labels=np.asarray(test_labels),
                      groups=np.asarray(ens.groups),
                      **{k: np.asarray(results[k]) for k in PER_EXAMPLE_KEYS})
  return summary


def _json_value(x):
  """A float or list of floats, with NaN (statistics of groups too small) as null."""
  x = np.asarray(x, np.float64)
  return [None if np.isnan(v) else float(v) for v in x] if x.ndim else (
      None if np.isnan(x) else float(x))


def _write_json_atomic(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
