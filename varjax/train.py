"""train_and_evaluate: data -> ensemble training -> on-device analysis -> summary.

The whole loop of one run. Outputs in ``workdir``:
  config.json     the resolved config;
  metrics.jsonl   one JSON line per epoch (and every ``log.every_steps``);
  tensorboard/    the same scalars for TensorBoard;
  summary.json    per-model and per-group results (see ``summary.write_summary``);
  per_example.npz per-example accuracy and vote counts per group, labels, the
                  model groups, and pairwise churn / error kappa;
  checkpoints/    orbax checkpoints; rerunning the command resumes from the latest.
"""

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from varjax import analysis
from varjax.analysis import accumulate
from varjax import checkpoint as checkpoint_lib
from varjax.config import schema
from varjax import data as data_lib
from varjax.training import step as step_lib
from varjax import ensemble as ensemble_lib
from varjax import lenses as lenses_lib
from varjax.ensemble import mesh as mesh_lib
from varjax import progress as progress_lib
from varjax import summary as summary_lib
from varjax.ensemble import grid as sweep
from varjax import writers
from varjax.models import airbench

CONFIG_FILE = 'config.json'


class WorkdirError(RuntimeError):
  """The workdir holds something a new run must not silently overwrite."""


def prepare_workdir(workdir, config, write=True):
  """Checks what ``workdir`` holds against ``config``; writes config.json.

  A finished run is kept unless ``config.overwrite`` (which also drops its
  checkpoints); checkpoints of a stopped run must come from the same config.
  Every process checks (so all raise the same error); only ``write`` ones write.
  """
  summary = os.path.join(workdir, summary_lib.SUMMARY_FILE)
  config_path = os.path.join(workdir, CONFIG_FILE)
  checkpoints = os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)
  if not config.overwrite:
    if os.path.exists(summary):
      raise WorkdirError(
          f'{workdir} holds a finished run ({summary_lib.SUMMARY_FILE} exists). Choose another '
          '--workdir, or pass --config.overwrite=True to discard it and start again.')
    if os.path.isdir(checkpoints) and os.path.exists(config_path):
      with open(config_path) as f:
        saved = ml_collections.ConfigDict(json.load(f))
      diff = checkpoint_lib.config_differences(saved, config)
      if diff:
        raise checkpoint_lib.CheckpointError(
            f'{workdir} holds checkpoints of a run with a different config: ' + '; '.join(diff)
            + '. Rerun with the original config to resume, choose another --workdir, or pass '
            '--config.overwrite=True to start again.')
  if not write:
    return
  os.makedirs(workdir, exist_ok=True)
  if config.overwrite:
    for name in (summary_lib.SUMMARY_FILE, summary_lib.PER_EXAMPLE_FILE, writers.METRICS_FILE):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
    shutil.rmtree(checkpoints, ignore_errors=True)
  with open(config_path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(config_path + '.tmp', config_path)


def rewritten_on_resume(record, done, total_steps):
  """Whether a run resumed after ``done`` steps writes metrics ``record`` again.

  It writes every record after step ``done``; resumed at the very end, it
  re-enters the last epoch and writes its epoch and final records again.
  """
  step = record.get('step', total_steps + 1)
  if step != done:
    return step > done
  return done == total_steps and ('epoch_seconds' in record or 'test_accuracy_mean' in record)


def host_gatherer(mesh):
  """Returns to_host(tree) -> NumPy: gathers arrays sharded over all processes' devices."""
  gather = jax.jit(lambda tree: tree, out_shardings=mesh_lib.replicated(mesh))
  return lambda tree: jax.tree.map(np.asarray, gather(tree))


def make_evaluator(ens, num_examples, num_classes, batch_size, analysis_config,
                   groups=None, support=(), support_labels=None):
  """Returns evaluate(state, images, labels) -> analysis results (host NumPy).

  Test images and labels live on the device; each batch's TTA logits (and the
  difficulty probes the config asks for) stay there and go straight into the
  analysis accumulators (replicated over the mesh; only the final results are
  gathered). ``groups`` (N,): each model's group, -1 for one that joins no
  group statistic (diverged); default ``ens.groups``. ``support``,
  ``support_labels``: the prediction-depth support set (``support_embeddings``).
  """

  def take(images, labels, start, size):
    x = jax.lax.dynamic_slice_in_dim(images, start, size)
    y = jax.lax.dynamic_slice_in_dim(labels, start, size)
    return x, y, start + jnp.arange(size, dtype=jnp.int32)

  take = jax.jit(take, static_argnums=3)
  replicated = mesh_lib.replicated(ens.mesh)
  finalize = jax.jit(analysis.finalize, out_shardings=replicated)

  def evaluate(state, images, labels):
    stats = ens.analysis_init(num_examples, num_classes, groups, analysis_config)
    # From each process's own copy: device_put would first compare the copies across
    # processes, and the NaN the state holds never equals itself.
    stats = jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), replicated, lambda index, x=np.asarray(x): x[index]), stats)
    for start in range(0, num_examples, batch_size):
      x, y, ids = take(images, labels, jnp.int32(start), min(batch_size, num_examples - start))
      outputs = ens.eval_outputs(state, x, y, support, support_labels)
      logits = outputs.pop('logits')
      stats = ens.analysis_update(stats, logits, y, ids, outputs)
    return jax.tree.map(np.asarray, finalize(stats))

  return evaluate


def support_embeddings(ens, state, images, batch_size):
  """Each probe place's embeddings (N, S, D_l) of the support images, batch by batch."""
  parts = [ens.embeddings(state, images[start:start + batch_size])
           for start in range(0, images.shape[0], batch_size)]
  return tuple(jnp.concatenate(layer, axis=1) for layer in zip(*parts))


def train_and_evaluate(config, workdir, progress_desc=None):
  """Trains ``config.num_models`` models at once and writes the run's outputs to ``workdir``.

  ``progress_desc``: the label of the terminal progress bar (default the
  config's name); a sweep runner names its point there.
  """
  schema.check(config)
  # Multi-process runs (jax.distributed): process 0 writes the outputs; every
  # process trains its own models and writes its part of each checkpoint.
  is_writer = jax.process_index() == 0
  prepare_workdir(workdir, config, write=is_writer)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('varjax: workdir prepared')
  dataset = data_lib.load(config.data)
  num_train, num_test = len(dataset.train_labels), len(dataset.test_labels)

  ens = ensemble_lib.Ensemble(config, num_train)
  recipe = ens.recipe
  num_params = airbench.num_params(
      airbench.init_variables(ens.model, jax.random.key(0), np.zeros(
          (config.model.whiten_kernel_size,) * 2 + (3, ens.model.whiten_width)))['params'])
  logging.info('%d models x %s params on %d %s device(s), %d per chunk; %d train / %d %s '
               'images; %d steps of batch %d', ens.num_models, f'{num_params:,}',
               ens.mesh.devices.size, jax.default_backend(), ens.models_per_chunk, num_train,
               num_test, dataset.test_name, recipe.total_steps, recipe.batch_size)

  replicated = mesh_lib.replicated(ens.mesh)
  to_host = host_gatherer(ens.mesh)
  train_images = jax.device_put(dataset.train_images, replicated)
  train_labels = jax.device_put(dataset.train_labels, replicated)
  state = ens.init(step_lib.whitening_kernel_for(dataset.train_images, config.model))
  probe_images, probe_labels = train_images[:ens.num_probes], train_labels[:ens.num_probes]

  zeros = lambda: {k: ens.zeros(()) for k in ('loss', 'accuracy')}
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  done, state, totals = ckpt.restore_latest(state, zeros())
  if is_writer:  # records of the steps this run repeats, and any half-written line
    writers.keep_records(workdir, lambda r: not rewritten_on_resume(r, done, recipe.total_steps))
  writer = writers.MetricWriter(workdir) if is_writer else writers.NullWriter()
  progress = progress_lib.Progress(recipe.total_steps, ens.num_models * recipe.batch_size,
                                   done=done, desc=progress_desc or config.name,
                                   enable=None if is_writer else False)
  train_time = 0.0
  last = None
  for epoch, steps in recipe.epochs():
    if steps[-1] < done - 1 or (steps[-1] == done - 1 and done < recipe.total_steps):
      continue  # finished before the restored checkpoint
    start = time.perf_counter()
    orders = ens.orders(epoch)
    if done <= steps[0]:
      totals = zeros()  # a fresh epoch; otherwise the restored epoch's running totals
    checkpoint_waits = []
    for step in steps:
      if step < done:
        continue
      state, metrics = ens.train_step(state, orders, train_images, train_labels, step)
      totals = jax.tree.map(jnp.add, totals, metrics)
      progress.update(step + 1, wait_for=metrics)
      if ens.num_probes and step == steps[-1]:  # before the epoch's checkpoint
        state = ens.record_probes(state, probe_images, probe_labels)
      if config.log.every_steps and (step + 1) % config.log.every_steps == 0:
        writer.write(step + 1, epoch=epoch, **{f'step_{k}_mean': float(v.mean())
                                               for k, v in to_host(metrics).items()})
      if ckpt.should_save(step + 1, step == steps[-1], recipe.total_steps):
        checkpoint_waits.append(ckpt.save(step + 1, state, totals))
    done = steps[-1] + 1
    last = jax.tree.map(lambda t: t / len(steps), to_host(totals))  # waits for the epoch
    seconds = time.perf_counter() - start
    train_time += seconds
    with progress.paused():
      logging.info('epoch %d/%d  %.1fs  train loss %.4f  acc %.4f (mean over %d models)',
                   epoch + 1, recipe.num_epochs, seconds, last['loss'].mean(),
                   last['accuracy'].mean(), ens.num_models)
    writer.write(steps[-1] + 1, epoch=epoch + 1, epoch_seconds=seconds,
                 train_loss=float(last['loss'].mean()),
                 train_accuracy=float(last['accuracy'].mean()),
                 checkpoints_saved=len(checkpoint_waits),
                 checkpoint_wait_seconds=sum(checkpoint_waits),
                 checkpoint_wait_max_seconds=max(checkpoint_waits, default=0.0))

  progress.close()
  start = time.perf_counter()
  ckpt.close()
  close_seconds = time.perf_counter() - start
  diverged = to_host(state['diverged_at'])
  for k in np.flatnonzero(diverged >= 0):
    logging.warning('model %d diverged at step %d: frozen there, excluded from its group',
                    ens.model_ids[k], diverged[k])
  start = time.perf_counter()
  groups = np.where(diverged >= 0, -1, ens.groups)
  num_groups = int(ens.groups.max()) + 1
  dynamics = None
  if ens.num_probes:
    stats = jax.jit(analysis.dynamics_stats, out_shardings=replicated)(
        state['dynamics'], jnp.asarray(accumulate.group_membership(groups, num_groups)))
    dynamics = {**to_host(state['dynamics']), **jax.tree.map(np.asarray, stats),
                'probe_labels': dataset.train_labels[:ens.num_probes]}
  support, support_labels = (), None
  if ens.depth_k:
    size = min(config.difficulty.depth_support_size, num_train)
    if size < ens.depth_k:
      raise schema.ConfigError(
          f'difficulty.depth_k={ens.depth_k} exceeds the {size} support images (the '
          'training set is smaller than difficulty.depth_support_size); lower depth_k.')
    support = support_embeddings(ens, state, train_images[:size], config.eval.batch_size)
    support_labels = train_labels[:size]
  evaluate = make_evaluator(ens, num_test, dataset.num_classes, config.eval.batch_size,
                            config.analysis, groups, support, support_labels)
  results = evaluate(state, jax.device_put(dataset.test_images, replicated),
                     jax.device_put(dataset.test_labels, replicated))
  extra = []
  for spec in config.data.extra_test_sets:
    name, images, labels = data_lib.load_extra_test_set(spec, config.data)
    evaluate_extra = make_evaluator(ens, len(labels), dataset.num_classes,
                                    config.eval.batch_size, config.analysis, groups,
                                    support, support_labels)
    extra.append((name, labels, evaluate_extra(state, jax.device_put(images, replicated),
                                               jax.device_put(labels, replicated))))
    logging.info('%s (%d images): mean accuracy %.4f', name, len(labels),
                 extra[-1][2]['accuracy'].mean())
  eval_time = time.perf_counter() - start
  start = time.perf_counter()
  lenses = (lenses_lib.measure(ens, state, train_images, train_labels, to_host)
            if lenses_lib.enabled(config) else None)
  lenses_time = time.perf_counter() - start
  writer.write(recipe.total_steps, test_accuracy_mean=float(results['accuracy'].mean()),
               test_accuracy_std=summary_lib.json_value(results['std_accuracy'][0]),
               eval_seconds=eval_time, checkpoint_close_seconds=close_seconds)
  writer.close()

  run_info = {'name': config.name, 'variant': config.variant, 'seed': config.seed,
              'num_params_per_model': num_params, 'num_train': num_train,
              'test_set': dataset.test_name, 'num_test': num_test,
              'total_steps': recipe.total_steps, 'backend': jax.default_backend(),
              'num_devices': int(ens.mesh.devices.size),
              'models_per_chunk': ens.models_per_chunk,
              'train_seconds': train_time, 'eval_seconds': eval_time,
              'lenses_seconds': lenses_time}
  summary = None
  if is_writer:
    summary = summary_lib.write_summary(workdir, ens, run_info, last, results,
                                        dataset.test_labels, diverged, extra, dynamics, lenses)
  for line in analysis.report_lines(results, sweep.point_names(config),
                                    tuple(config.analysis.seeds_needed_deltas)):
    logging.info('%s', line)
  return summary
