"""Preemption-safe checkpoints of an ensemble run with orbax's CheckpointManager.

A checkpoint holds the stacked ensemble state (params, optimiser, BatchNorm,
lookahead EMA, divergence flags), the running train-metric totals of the epoch
in progress and the number of steps taken. Data order and augmentation derive
from (seed, model id, epoch / step), so the step count is their whole RNG
position: a resumed run repeats exactly the computation it lost.

orbax finalises a step directory atomically; on top of that each finished step
gets a SHA-256 manifest of its files (``checkpoints/manifests/STEP.json``), so a
file damaged after the fact is detected on restore instead of silently loaded.

Example:
  >>> ckpt = Checkpointer(workdir, config)                        # doctest: +SKIP
  >>> step, state, totals = ckpt.restore_latest(state, totals)    # doctest: +SKIP
  >>> ckpt.save(step, state, totals)                               # doctest: +SKIP
  >>> ckpt.close()                                                 # doctest: +SKIP
"""

import hashlib
import json
import logging as std_logging
import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from varjax import config_check

CHECKPOINT_DIR = 'checkpoints'
MANIFEST_DIR = 'manifests'
# Keys that may change between a run and its resume without changing its results.
RESUMABLE_CHANGES = ('overwrite', 'checkpoint.', 'log.')


def _quiet_orbax(record):
  """orbax logs every save step at INFO; keep its warnings and errors only."""
  return (record.levelno >= std_logging.WARNING
          or f'{os.sep}orbax{os.sep}' not in record.pathname)


class CheckpointError(RuntimeError):
  """A checkpoint that must not be resumed from: corrupt, or from another config."""


def config_differences(saved, current):
  """'key: saved -> current' for every result-relevant key that differs."""
  a, b = config_check.flatten(saved), config_check.flatten(current)
  # config.json stores tuples as lists.
  plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v
  out = []
  for key in sorted(set(a) | set(b)):
    if key.startswith(RESUMABLE_CHANGES):
      continue
    va, vb = plain(a.get(key, '<absent>')), plain(b.get(key, '<absent>'))
    if va != vb:
      out.append(f'{key}: {va!r} -> {vb!r}')
  return out


def _file_digests(directory):
  digests = {}
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests


class Checkpointer:
  """Saves every ``config.checkpoint.every_steps`` steps (0: at epoch ends) and at the end."""

  def __init__(self, workdir, config):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.manifests = os.path.join(self.directory, MANIFEST_DIR)
    self.every_steps = config.checkpoint.every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoint.keep, create=True,
        enable_async_checkpointing=config.checkpoint.async_save)
    # On absl's Python handler (ABSLHandler.handle skips its own filters): orbax
    # logs through child loggers as well as absl's.
    handler = logging.get_absl_handler().python_handler
    if _quiet_orbax not in handler.filters:
      handler.addFilter(_quiet_orbax)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    os.makedirs(self.manifests, exist_ok=True)

  def should_save(self, steps_done, end_of_epoch, total_steps):
    if steps_done == total_steps:
      return True
    if self.every_steps:
      return steps_done % self.every_steps == 0
    return end_of_epoch

  def save(self, steps_done, state, totals):
    """Starts saving (async where enabled); earlier saves get their manifests.

    Returns the seconds the caller waited for the checkpoint, not counting the
    wait for ``state`` itself to be computed (steps are dispatched ahead).
    """
    jax.block_until_ready((state, totals))
    start = time.perf_counter()
    self._write_manifests()
    self.manager.save(steps_done, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), totals=ocp.args.StandardSave(totals)))
    return time.perf_counter() - start

  def _write_manifests(self):
    """Checksums of every step orbax has finalised; drops those of deleted steps.

    Process 0 writes them (every process waits for orbax to finish).
    """
    self.manager.wait_until_finished()
    if jax.process_index() != 0:
      return
    steps = set(self.manager.all_steps())
    for name in os.listdir(self.manifests):
      if name.endswith('.json') and int(name[:-5]) not in steps:
        os.remove(os.path.join(self.manifests, name))
    for step in steps:
      path = os.path.join(self.manifests, f'{step}.json')
      if not os.path.exists(path):
        digests = _file_digests(os.path.join(self.directory, str(step)))
        with open(path + '.tmp', 'w') as f:
          json.dump(digests, f)
        os.replace(path + '.tmp', path)

  def verify(self, step):
    """Raises CheckpointError if a file of ``step`` differs from its manifest."""
    path = os.path.join(self.manifests, f'{step}.json')
    step_dir = os.path.join(self.directory, str(step))
    if not os.path.exists(path):
      logging.warning('checkpoint %s has no manifest (killed right after saving); '
                      'trusting orbax finalisation', step_dir)
      return
    with open(path) as f:
      want = json.load(f)
    got = _file_digests(step_dir)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
      raise CheckpointError(
          f'checkpoint {step_dir} is corrupt: {len(bad)} file(s) differ from their checksums '
          f'({", ".join(bad[:3])}). Delete {step_dir} to resume from an earlier checkpoint, '
          'or pass --config.overwrite=True to start again.')

  def latest_step(self):
    return self.manager.latest_step()

  def restore_latest(self, state, totals):
    """(steps_done, state, totals) from the latest checkpoint, or (0, state, totals).

    ``state`` and ``totals`` are templates: shapes, dtypes and shardings to restore into.
    """
    step = self.manager.latest_step()
    if step is None:
      return 0, state, totals
    self.verify(step)
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract(state)),
          totals=ocp.args.StandardRestore(abstract(totals))))
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(
          f'checkpoint {os.path.join(self.directory, str(step))} cannot be restored '
          f'({type(e).__name__}: {str(e)[:300]}). Delete it to resume from an earlier one, '
          'or pass --config.overwrite=True to start again.') from e
    logging.info('resumed from checkpoint at step %d', step)
    return step, restored['state'], restored['totals']

  def close(self):
    self._write_manifests()
    self.manager.close()
