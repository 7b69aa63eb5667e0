"""train_and_evaluate: one run, in phases: prepare, train, evaluate, measure, write.

Outputs in ``workdir``:
  config.json     the resolved config;
  metrics.jsonl   one JSON line per epoch (and every ``log.every_steps``);
  tensorboard/    the same scalars for TensorBoard;
  summary.json    per-model and per-group results (run/summary.py);
  per_example.npz per-example accuracy and vote counts per group, labels, the
                  model groups, pairwise churn / error kappa, measurements' arrays;
  checkpoints/    orbax checkpoints; rerunning the command resumes from the latest.

Multi-process runs (jax.distributed): process 0 writes the outputs; every
process trains its own models and writes its part of each checkpoint.

Example:
  >>> summary = train_and_evaluate(config, '/tmp/run')   # doctest: +SKIP
"""

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from varjax import analysis
from varjax import data as data_lib
from varjax import ensemble as ensemble_lib
from varjax import errors
from varjax.analysis import accumulate
from varjax.config import schema
from varjax.ensemble import grid
from varjax.ensemble import mesh as mesh_lib
from varjax.models import airbench
from varjax.run import checkpoint as checkpoint_lib
from varjax.run import compilation
from varjax.run import evaluate
from varjax.run import measurements as measurements_lib
from varjax.run import preemption
from varjax.run import progress as progress_lib
from varjax.run import summary as summary_lib
from varjax.run import workdir as workdir_lib
from varjax.run import writers
from varjax.training import step as step_lib


@dataclasses.dataclass
class Run:
  """What the phases of one run share: its inputs, ensemble, state and timings."""
  config: Any
  workdir: str
  is_writer: bool
  dataset: Any
  ens: Any
  state: Any
  train_images: Any
  train_labels: Any
  to_host: Any
  measurements: list
  num_params: int
  step_images: Any  # the training images as the step programs take them
  seconds: dict = dataclasses.field(default_factory=dict)
  writer: Any = None
  compile_stats: Any = None
  checkpoint_bytes: Any = None


def train_and_evaluate(config, workdir, progress_desc=None):
  """Trains ``config.num_models`` models at once and writes the run's outputs to ``workdir``.

  ``progress_desc``: the label of the terminal progress bar (default the
  config's name); a sweep runner names its point there. Returns the summary
  (on process 0; None on the others). A preemption notice (SIGTERM) saves a
  checkpoint at the next step and raises errors.Preempted.
  """
  schema.check(config)
  with checkpoint_lib.storage_errors(workdir), compilation.CompileStats() as compiled:
    run = prepare(config, workdir)
    with compilation.CompileStats() as in_training:
      train_metrics = train(run, progress_desc or config.name)
    with compilation.CompileStats() as in_evaluation:
      diverged, results, extra = evaluate_all(run)
    measured = [m.after_training(run.state, measurements_lib.Evaluation(
        results, _membership(run.ens, diverged))) for m in run.measurements]
    # Each phase's own time, without the compiles it waited for.
    run.seconds['train'] -= in_training.seconds
    run.seconds['eval'] -= in_evaluation.seconds
    run.compile_stats = compiled
    return write(run, train_metrics, diverged, results, extra, measured)


def prepare(config, workdir):
  """Checks the workdir, loads the data, builds the ensemble and its initial state."""
  is_writer = jax.process_index() == 0
  workdir_lib.prepare_workdir(workdir, config, write=is_writer)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('varjax: workdir prepared')
  dataset = data_lib.load(config.data)
  ens = ensemble_lib.build(config, len(dataset.train_labels),
                          num_examples=len(dataset.test_labels))
  replicated = mesh_lib.replicated(ens.mesh)
  train_images = jax.device_put(dataset.train_images, replicated)
  step_images = (train_images if ens.recipe.crop == 'gather'
                 else ens.step_images(dataset.train_images))
  train_labels = jax.device_put(dataset.train_labels, replicated)
  state = ens.init(step_lib.whitening_kernel_for(dataset.train_images, config.model))
  to_host = evaluate.host_gatherer(ens.mesh)
  context = measurements_lib.Context(config, ens, train_images, train_labels, to_host)
  run = Run(config, workdir, is_writer, dataset, ens, state, train_images, train_labels,
            to_host, measurements_lib.enabled(context), num_params(ens), step_images)
  logging.info('%d models x %s params on %d %s device(s), %d per chunk; %d train / %d %s '
               'images; %d steps of batch %d', ens.num_models, f'{run.num_params:,}',
               ens.mesh.devices.size, jax.default_backend(), ens.models_per_chunk,
               len(dataset.train_labels), len(dataset.test_labels), dataset.test_name,
               ens.recipe.total_steps, ens.recipe.batch_size)
  return run


def platform_info(ens):
  """What ran the run: backend, devices, processes, versions and XLA's flags."""
  return {'backend': jax.default_backend(), 'device_kind': ens.mesh.devices.flat[0].device_kind,
          'num_devices': int(ens.mesh.devices.size), 'num_processes': jax.process_count(),
          'jax_version': jax.__version__, 'jaxlib_version': jaxlib.__version__,
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def num_params(ens):
  """Parameters of one model (the whitening filters included)."""
  kernel = np.zeros((ens.config.model.whiten_kernel_size,) * 2 + (3, ens.model.whiten_width))
  return airbench.num_params(
      airbench.init_variables(ens.model, jax.random.key(0), kernel)['params'])


def train(run, progress_desc):
  """The epoch loop, resumed from the latest checkpoint; returns the last epoch's mean
  train metrics per model (host arrays)."""
  ens, recipe = run.ens, run.ens.recipe
  zeros = lambda: {k: ens.zeros(()) for k in ('loss', 'accuracy')}
  ckpt = checkpoint_lib.Checkpointer(run.workdir, run.config)
  done, run.state, totals = ckpt.restore_latest(run.state, zeros())
  if run.is_writer:  # records of the steps this run repeats, and any half-written line
    writers.keep_records(run.workdir, lambda r: not workdir_lib.rewritten_on_resume(
        r, done, recipe.total_steps))
  writer = writers.MetricWriter(run.workdir) if run.is_writer else writers.NullWriter()
  progress = progress_lib.Progress(recipe.total_steps, ens.num_models * recipe.batch_size,
                                   done=done, desc=progress_desc,
                                   enable=None if run.is_writer else False)
  loop_start, last = time.perf_counter(), None
  run.seconds['checkpoint'] = 0.0
  if done < recipe.total_steps:  # both step programs now: no step waits for a compile
    ens.compile_steps(run.state, ens.orders(0), run.step_images, run.train_labels)
  with preemption.Notice() as notice:
    for epoch, steps in recipe.epochs():
      if steps[-1] < done - 1 or (steps[-1] == done - 1 and done < recipe.total_steps):
        continue  # finished before the restored checkpoint
      if done <= steps[0]:
        totals = zeros()  # a fresh epoch; otherwise the restored epoch's running totals
      start = time.perf_counter()
      totals, waits = _train_epoch(run, epoch, steps, done, totals, ckpt, writer, progress,
                                   notice)
      done = steps[-1] + 1
      last = jax.tree.map(lambda t, n=len(steps): t / n, run.to_host(totals))  # waits for it
      _end_epoch(run, epoch, done, last, time.perf_counter() - start, waits, writer, progress)
  progress.close()
  start = time.perf_counter()
  ckpt.close()
  run.seconds['checkpoint_close'] = time.perf_counter() - start
  run.seconds['checkpoint'] += run.seconds['checkpoint_close']
  run.seconds['train'] = (time.perf_counter() - loop_start) - run.seconds['checkpoint']
  run.checkpoint_bytes = ckpt.bytes_per_save
  run.writer = writer
  return last


def _end_epoch(run, epoch, done, last, seconds, waits, writer, progress):
  """The epoch's log line and metrics record."""
  run.seconds['checkpoint'] += sum(waits)
  recipe = run.ens.recipe
  with progress.paused():
    logging.info('epoch %d/%d  %.1fs  train loss %.4f  acc %.4f (mean over %d models)',
                 epoch + 1, recipe.num_epochs, seconds, last['loss'].mean(),
                 last['accuracy'].mean(), run.ens.num_models)
  writer.write(done, epoch=epoch + 1, epoch_seconds=seconds,
               train_loss=float(last['loss'].mean()),
               train_accuracy=float(last['accuracy'].mean()), checkpoints_saved=len(waits),
               checkpoint_wait_seconds=sum(waits),
               checkpoint_wait_max_seconds=max(waits, default=0.0))


def _train_epoch(run, epoch, steps, done, totals, ckpt, writer, progress, notice):
  """The steps of one epoch not yet done; returns (totals, checkpoint waits in seconds).

  After a preemption notice it saves at the next step and raises errors.Preempted.
  """
  ens, config = run.ens, run.config
  orders = ens.orders(epoch)
  waits = []
  for step in steps:
    if step < done:
      continue
    run.state, metrics = ens.train_step(run.state, orders, run.step_images, run.train_labels,
                                        step)
    totals = jax.tree.map(jnp.add, totals, metrics)
    progress.update(step + 1, wait_for=metrics)
    if step == steps[-1]:  # records of the epoch, before its checkpoint
      for m in run.measurements:
        run.state = m.after_epoch(run.state, epoch)
    if config.log.every_steps and (step + 1) % config.log.every_steps == 0:
      writer.write(step + 1, epoch=epoch, **{f'step_{k}_mean': float(v.mean())
                                             for k, v in run.to_host(metrics).items()})
    if notice.due(step + 1):
      if step != steps[-1]:  # the epoch's records are part of the state it saves
        logging.info('preempted mid-epoch at step %d', step + 1)
      ckpt.save(step + 1, run.state, totals, wait=True)
      ckpt.close()
      raise errors.Preempted(
          f'stopped by a preemption notice after {step + 1} steps, with a checkpoint of '
          'them; rerun the same command to resume.')
    if ckpt.should_save(step + 1, step == steps[-1], ens.recipe.total_steps):
      waits.append(ckpt.save(step + 1, run.state, totals))
  return totals, waits


def _membership(ens, diverged):
  """(N, G) group membership with the diverged models in no group."""
  groups = np.where(diverged >= 0, -1, ens.groups)
  return accumulate.group_membership(groups, int(ens.groups.max()) + 1)


def evaluate_all(run):
  """Every model on the test set and the extra test sets, through the on-device analysis.

  Returns (diverged (N,) step or -1, the test set's results, [(name, labels,
  results)] of the extra sets).
  """
  ens, config, dataset = run.ens, run.config, run.dataset
  start = time.perf_counter()
  diverged = run.to_host(run.state['diverged_at'])
  for k in np.flatnonzero(diverged >= 0):
    logging.warning('model %d diverged at step %d: frozen there, excluded from its group',
                    ens.model_ids[k], diverged[k])
  groups = np.where(diverged >= 0, -1, ens.groups)
  inputs = {}
  for m in run.measurements:
    inputs.update(m.evaluation_inputs(run.state))
  replicated = mesh_lib.replicated(ens.mesh)

  def on_set(images, labels):
    evaluator = evaluate.make_evaluator(ens, len(labels), dataset.num_classes,
                                        config.eval.batch_size, config.analysis, groups,
                                        **inputs)
    return evaluator(run.state, jax.device_put(images, replicated),
                     jax.device_put(labels, replicated))

  results = on_set(dataset.test_images, dataset.test_labels)
  extra = []
  for spec in config.data.extra_test_sets:
    name, images, labels = data_lib.load_extra_test_set(spec, config.data)
    extra.append((name, labels, on_set(images, labels)))
    logging.info('%s (%d images): mean accuracy %.4f', name, len(labels),
                 extra[-1][2]['accuracy'].mean())
  run.seconds['eval'] = time.perf_counter() - start
  return diverged, results, extra


def write(run, train_metrics, diverged, results, extra, measured):
  """The final metrics record and, on process 0, summary.json and per_example.npz."""
  config, ens, dataset = run.config, run.ens, run.dataset
  lens_seconds = sum(s.get('seconds', 0.0) for m in measured
                     for s in m.summary.get('lenses', {}).values())
  run.writer.write(ens.recipe.total_steps, test_accuracy_mean=float(results['accuracy'].mean()),
                   test_accuracy_std=summary_lib.json_value(results['std_accuracy'][0]),
                   eval_seconds=run.seconds['eval'],
                   checkpoint_close_seconds=run.seconds['checkpoint_close'])
  run.writer.close()
  run_info = {'name': config.name, 'variant': config.variant, 'seed': config.seed,
              'num_params_per_model': run.num_params, 'num_train': len(dataset.train_labels),
              'test_set': dataset.test_name, 'num_test': len(dataset.test_labels),
              'total_steps': ens.recipe.total_steps, **platform_info(ens),
              'models_per_chunk': ens.models_per_chunk,
              # Where the time went: compiles apart from training and evaluation.
              'train_seconds': run.seconds['train'], 'eval_seconds': run.seconds['eval'],
              'checkpoint_seconds': run.seconds['checkpoint'],
              'checkpoint_bytes': run.checkpoint_bytes, 'lenses_seconds': lens_seconds,
              **run.compile_stats.as_dict()}
  summary = None
  if run.is_writer:
    summary = summary_lib.write_summary(run.workdir, ens, run_info, train_metrics, results,
                                        dataset.test_labels, diverged, extra, measured)
  for line in analysis.report_lines(results, grid.point_names(config),
                                    tuple(config.analysis.seeds_needed_deltas)):
    logging.info('%s', line)
  return summary
