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

orbax writes a step into a temporary directory and renames it when every
process has written its part, so a step killed half-way is never loaded (its
temporary directory is removed when the next run opens the checkpoints). On top
of that each finished step gets a SHA-256 manifest of its files
(``checkpoints/manifests/STEP.json``), so a file damaged after the fact is
detected on restore instead of silently loaded. Hashing and manifest writing run
on a background thread of process 0: the training loop waits only for orbax to
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
import hashlib
import json
import logging as std_logging
import os
import re
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from varjax import errors
from varjax.config import schema
from varjax.errors import CheckpointError
from varjax.run import files
CHECKPOINT_DIR = 'checkpoints'
MANIFEST_DIR = 'manifests'
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


def _file_digests(directory):
  digests = {}
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests


def finished_steps(directory):
  """Steps orbax has finalised in ``directory`` (its temporary directories excluded)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def last_good_checkpoint(workdir):
  """A sentence naming the latest finished checkpoint of ``workdir`` (for error messages)."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
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
  """Saves every ``config.checkpoint.every_steps`` steps (0: at epoch ends) and at the end."""

  def __init__(self, workdir, config):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.manifests = os.path.join(self.directory, MANIFEST_DIR)
    self.every_steps = config.checkpoint.every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoint.keep, create=True,
        enable_async_checkpointing=config.checkpoint.async_save,
        # Steps a killed run left half-written (process 0 removes them).
        cleanup_tmp_directories=True)
    # On absl's Python handler (ABSLHandler.handle skips its own filters): orbax
    # logs through child loggers as well as absl's.
    handler = logging.get_absl_handler().python_handler
    if _quiet_orbax not in handler.filters:
      handler.addFilter(_quiet_orbax)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
      os.makedirs(self.manifests, exist_ok=True)
    except OSError as e:
      raise CheckpointError(storage_error_message(e, workdir) or errors.describe(e)) from e
    # Process 0 checksums finished steps on one background thread, in order.
    self._hasher = (concurrent.futures.ThreadPoolExecutor(1, 'varjax_manifests')
                    if jax.process_index() == 0 else None)
    self._hashing = []

  def should_save(self, steps_done, end_of_epoch, total_steps):
    if steps_done == total_steps:
      return True
    if self.every_steps:
      return steps_done % self.every_steps == 0
    return end_of_epoch

  def save(self, steps_done, state, totals):
    """Starts saving (async where enabled); returns the seconds the caller waited.

    The wait counts orbax's copy of the arrays to the host and any wait for the
    previous save to finish, not the wait for ``state`` itself to be computed
    (steps are dispatched ahead).
    """
    jax.block_until_ready((state, totals))
    start = time.perf_counter()
    self._raise_hashing_errors()
    try:
      self.manager.save(steps_done, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), totals=ocp.args.StandardSave(totals)))
    except Exception as e:  # orbax and tensorstore raise many types for a failed write
      raise self._write_error(e) from e
    # orbax waited for the previous save: every other step is finished.
    self._hash_in_background(exclude=steps_done)
    return time.perf_counter() - start

  def _write_error(self, error, what='a checkpoint'):
    """CheckpointError for a failed write, once orbax's other writes have stopped."""
    if jax.process_count() == 1:  # (with more, closing would wait at barriers)
      try:  # a failed save leaves orbax's other writes of it running
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  (it re-raises the failure)
        pass
    if self._hasher is not None:
      self._hasher.shutdown(cancel_futures=True)
    return CheckpointError(
        f'Writing {what} to {self.directory} failed ({_write_cause(error)}). '
        f'{last_good_checkpoint(self.workdir)}: free space or make the workdir writable, '
        'then rerun the same command.')

  def _hash_in_background(self, exclude=None):
    if self._hasher is None:
      return
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
    """Checksums of the finished ``steps`` that lack them; drops those of deleted steps.

    Runs on the background thread. A step orbax deletes meanwhile (it keeps the
    latest ``checkpoint.keep``) is skipped.
    """
    on_disk = set(finished_steps(self.directory))
    for name in os.listdir(self.manifests):
      if name.endswith('.json') and int(name[:-5]) not in on_disk:
        os.remove(os.path.join(self.manifests, name))
    for step in steps:
      path = os.path.join(self.manifests, f'{step}.json')
      if os.path.exists(path):
        continue
      try:
        digests = _file_digests(os.path.join(self.directory, str(step)))
      except FileNotFoundError:
        continue
      files.write_json(path, digests, indent=None)

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
          f'checkpoint {os.path.join(self.directory, str(step))} cannot be restored '
          f'({type(e).__name__}: {str(e)[:300]}). Delete it to resume from an earlier one, '
          'or pass --config.overwrite=True to start again.') from e
    logging.info('resumed from checkpoint at step %d', step)
    return step, restored['state'], restored['totals']

  def close(self):
    """Waits for the last save and its checksums; raises CheckpointError if one failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # orbax and tensorstore raise many types for a failed write
      raise self._write_error(e) from e
    self._hash_in_background()
    self._raise_hashing_errors(wait=True)
    if self._hasher is not None:
      self._hasher.shutdown()
    self.manager.close()
