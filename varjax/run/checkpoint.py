"""Preemption-safe checkpoints of an ensemble run with orbax's CheckpointManager.

A checkpoint holds the stacked ensemble state (params, optimiser, BatchNorm,
lookahead EMA, divergence flags), the running train-metric totals of the epoch
in progress and the number of steps taken. Data order and augmentation derive
from (seed, model id, epoch / step), so the step count is their whole RNG
position: a resumed run repeats exactly the computation it lost.

Resume on another topology: arrays are restored into the shardings of the
current run's state template (orbax reshards), so a run saved on 8 devices
resumes on 4 or 16, or as several processes, wherever num_models is a multiple
of the new device count.

When: every ``checkpoint.every_minutes`` of wall time (the default), every
``every_steps`` steps or at every epoch's end as configured, always at the end,
and at the next step after a preemption notice (run/preemption.py). Where:
``checkpoint.directory`` (local or gs://, written by orbax itself), else
WORKDIR/checkpoints, with the config beside them.

orbax writes a step into a temporary directory and finalises it when every
process has written its part, so a step killed half-way is never loaded (its
temporary directory is removed when the next run opens the checkpoints). On top
of that each process checksums the files it wrote (run/manifests.py), so a file
damaged after the fact is detected on restore instead of silently loaded.
Hashing runs on a background thread: the training loop waits only for orbax to
copy the arrays to the host.

A write that fails (disk full, read-only workdir) raises CheckpointError naming
the last good checkpoint, which orbax leaves intact; rerunning the command once
the disk has room resumes from it.

Example:
  >>> ckpt = Checkpointer(workdir, config)                        # doctest: +SKIP
  >>> step, state, totals = ckpt.restore_latest(state, totals)    # doctest: +SKIP
  >>> waited_seconds = ckpt.save(step, state, totals)              # doctest: +SKIP
  >>> ckpt.close()                                                 # doctest: +SKIP
"""

import concurrent.futures
import contextlib
import errno
import json
import logging as std_logging
import os
import re
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from varjax import errors
from varjax.config import schema
from varjax.errors import CheckpointError
from varjax.run import files
from varjax.run import manifests
CHECKPOINT_DIR = 'checkpoints'
MANIFEST_DIR = 'manifests'
CONFIG_FILE = 'config.json'  # beside the checkpoints: what a resume must match
# Processes of a multi-process run agree on wall-time saves this often (one
# small collective), so all of them save at the same step.
_TIME_CHECK_STEPS = 20
# Keys that may change between a run and its resume without changing its results
# (models_per_chunk: a new device count may need another chunking; 'unrolled'
# models are bit-identical in any chunk).
RESUMABLE_CHANGES = ('overwrite', 'checkpoint.', 'log.', 'ensemble.models_per_chunk')
# errno of a write the disk or the permissions refused: the user's to fix.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                            errno.EPERM, errno.EFBIG})


def _quiet_orbax(record):
  """orbax logs every save step at INFO; keep its warnings and errors, one line each.

  A failed save reaches the caller as CheckpointError; orbax's traceback of it
  (logged from its finalize thread) would bury that line.
  """
  if f'{os.sep}orbax{os.sep}' not in record.pathname:
    return True
  record.exc_info, record.exc_text = None, None
  return record.levelno >= std_logging.WARNING


def config_differences(saved, current):
  """'key: saved -> current' for every result-relevant key that differs."""
  a, b = schema.flatten(saved), schema.flatten(current)
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


def checkpoint_dir(workdir, config=None):
  """Where a run's checkpoints go: ``checkpoint.directory`` (a local path or gs://), else
  ``WORKDIR/checkpoints``."""
  directory = config.checkpoint.directory if config is not None else None
  if directory:
    return directory if files.is_remote(directory) else os.path.abspath(directory)
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def finished_steps(directory):
  """Steps orbax has finalised in ``directory`` (its temporary directories excluded)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def last_good_checkpoint(workdir, config=None):
  """A sentence naming the latest finished checkpoint of a run (for error messages)."""
  directory = checkpoint_dir(workdir, config)
  steps = finished_steps(directory)
  if not steps:
    return 'No checkpoint was finished yet, so a rerun starts from step 0'
  return (f'The last good checkpoint, {os.path.join(directory, str(steps[-1]))}, is intact '
          'and a rerun resumes from it')


def storage_error_message(error, workdir):
  """One line for an OSError of a refused write (disk full, read-only), else None."""
  if not isinstance(error, OSError) or error.errno not in STORAGE_ERRNOS:
    return None
  where = f' {error.filename}' if error.filename else ''
  return (f'Cannot write{where}: {error.strerror or error} (disk full, over quota or '
          f'read-only?). {last_good_checkpoint(workdir)}: free space or make {workdir} '
          'writable, then rerun the same command.')


@contextlib.contextmanager
def storage_errors(workdir):
  """Turns a write the disk or the permissions refused (an OSError) into WorkdirError,
  one line naming the cause and the checkpoint a rerun resumes from."""
  try:
    yield
  except OSError as e:
    message = storage_error_message(e, workdir)
    if message is None:
      raise
    raise errors.WorkdirError(message) from e


def _write_cause(error):
  """Short cause of a failed write: tensorstore reports the OS error inside a long text."""
  if isinstance(error, OSError) and error.errno:
    return f'[Errno {error.errno}] {error.strerror}'
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if code:
    return f'[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}'
  return errors.describe(error, limit=300)


class Checkpointer:
  """Saves on the config's schedule (``checkpoint.every_minutes``, ``every_steps``,
  ``at_epoch_end``), at the end of the run, and when told to (a preemption)."""

  def __init__(self, workdir, config):
    self.workdir, self.config = workdir, config
    self.directory = checkpoint_dir(workdir, config)
    self.manifests = str(epath.Path(self.directory) / MANIFEST_DIR)
    c = config.checkpoint
    self.every_seconds, self.every_steps, self.at_epoch_end = (
        60 * c.every_minutes, c.every_steps, c.at_epoch_end)
    self._last_save = time.monotonic()
    self.bytes_per_save = None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.keep, create=True, enable_async_checkpointing=c.async_save,
        # Steps a killed run left half-written (process 0 removes them).
        cleanup_tmp_directories=True)
    # On absl's Python handler (ABSLHandler.handle skips its own filters): orbax
    # logs through child loggers as well as absl's.
    handler = logging.get_absl_handler().python_handler
    if _quiet_orbax not in handler.filters:
      handler.addFilter(_quiet_orbax)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
      epath.Path(self.manifests).mkdir(parents=True, exist_ok=True)
      if jax.process_index() == 0:  # a resume from elsewhere checks it (run/workdir.py)
        files.write_text(str(epath.Path(self.directory) / CONFIG_FILE),
                         config.to_json_best_effort(indent=2, sort_keys=True))
    except OSError as e:
      raise CheckpointError(storage_error_message(e, workdir) or errors.describe(e)) from e
    # Each process checksums the files it wrote, on one background thread, in order.
    self._hasher = concurrent.futures.ThreadPoolExecutor(1, 'varjax_manifests')
    self._hashing = []

  def should_save(self, steps_done, end_of_epoch, total_steps):
    """Whether to save after ``steps_done`` steps (the same answer on every process)."""
    if steps_done == total_steps:
      return True
    if self.every_steps and steps_done % self.every_steps == 0:
      return True
    if self.at_epoch_end and end_of_epoch:
      return True
    if not self.every_seconds:
      return False
    if jax.process_count() == 1:
      return time.monotonic() - self._last_save >= self.every_seconds
    if steps_done % _TIME_CHECK_STEPS and not end_of_epoch:
      return False
    late = np.int32(time.monotonic() - self._last_save >= self.every_seconds)
    return bool(multihost_utils.broadcast_one_to_all(late))

  def save(self, steps_done, state, totals, wait=False):
    """Starts saving (async where enabled); returns the seconds the caller waited.

    The wait counts orbax's copy of the arrays to the host and any wait for the
    previous save to finish, not the wait for ``state`` itself to be computed
    (steps are dispatched ahead). ``wait``: also wait for this save to finish
    (a preemption's last save).
    """
    jax.block_until_ready((state, totals))
    start = time.perf_counter()
    self._raise_hashing_errors()
    try:
      self.manager.save(steps_done, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), totals=ocp.args.StandardSave(totals)))
      if wait:
        self.manager.wait_until_finished()
    except Exception as e:  # orbax and tensorstore raise many types for a failed write
      raise self._write_error(e) from e
    self._last_save = time.monotonic()
    # orbax waited for the previous save: every other step is finished.
    self._hash_in_background(exclude=None if wait else steps_done)
    return time.perf_counter() - start

  def _write_error(self, error, what='a checkpoint'):
    """CheckpointError for a failed write, once orbax's other writes have stopped."""
    if jax.process_count() == 1:  # (with more, closing would wait at barriers)
      try:  # a failed save leaves orbax's other writes of it running
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  (it re-raises the failure)
        pass
    self._hasher.shutdown(cancel_futures=True)
    return CheckpointError(
        f'Writing {what} to {self.directory} failed ({_write_cause(error)}). '
        f'{last_good_checkpoint(self.workdir, self.config)}: free space or make the workdir '
        'writable, then rerun the same command.')

  def _hash_in_background(self, exclude=None):
    steps = [s for s in self.manager.all_steps() if s != exclude]
    self._hashing = [f for f in self._hashing if not f.done() or f.exception()]
    self._hashing.append(self._hasher.submit(self._write_manifests, steps))

  def _raise_hashing_errors(self, wait=False):
    if wait:
      concurrent.futures.wait(self._hashing)
    for future in self._hashing:
      if future.done() and future.exception() is not None:
        e = future.exception()
        self._hashing = []
        raise self._write_error(e, 'the checksums of a checkpoint') from e

  def _write_manifests(self, steps):
    """This process's checksums of the finished ``steps`` that lack them (background thread).

    A step orbax deletes meanwhile (it keeps the latest ``checkpoint.keep``) is skipped.
    """
    finished = set(finished_steps(self.directory))
    if jax.process_index() == 0:
      manifests.prune(self.manifests, finished)
    for step in steps:
      if step in finished:
        manifests.write(self.manifests, epath.Path(self.directory) / str(step), step,
                        jax.process_index())

  def verify(self, step):
    """Raises CheckpointError if a file of ``step`` that this process checks differs
    from its checksum."""
    step_dir = epath.Path(self.directory) / str(step)
    bad = manifests.verify(self.manifests, step_dir, step, jax.process_index(),
                           jax.process_count())
    if bad is None:
      logging.warning('checkpoint %s has no manifest (killed right after saving); '
                      'trusting orbax finalisation', step_dir)
    elif bad:
      raise CheckpointError(
          f'checkpoint {step_dir} is corrupt: {len(bad)} file(s) differ from their checksums '
          f'({", ".join(bad[:3])}). Delete {step_dir} to resume from an earlier checkpoint, '
          'or pass --config.overwrite=True to start again.')

  def latest_step(self):
    return self.manager.latest_step()

  def restore_latest(self, state, totals):
    """(steps_done, state, totals) from the latest checkpoint, or (0, state, totals).

    ``state`` and ``totals`` are templates: shapes, dtypes and shardings to
    restore into. The shardings are this run's, whatever the saving run's device
    count or processes were.
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
          f'checkpoint {epath.Path(self.directory) / str(step)} cannot be restored '
          f'({type(e).__name__}: {str(e)[:300]}). Delete it to resume from an earlier one, '
          'or pass --config.overwrite=True to start again.') from e
    logging.info('resumed from checkpoint at step %d', step)
    self._last_save = time.monotonic()
    return step, restored['state'], restored['totals']

  def close(self):
    """Waits for the last save and its checksums; raises CheckpointError if one failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # orbax and tensorstore raise many types for a failed write
      raise self._write_error(e) from e
    self._hash_in_background()
    self._raise_hashing_errors(wait=True)
    self._hasher.shutdown()
    latest = self.manager.latest_step()
    if latest is not None and jax.process_index() == 0:
      self.bytes_per_save = manifests.size_bytes(epath.Path(self.directory) / str(latest))
    self.manager.close()
