"""A preemption notice becomes a checkpoint at the next step boundary, then a clean exit.

Cloud TPU VMs and Slurm send SIGTERM some time before they kill a job. In one
process a SIGTERM handler marks the notice and the training loop saves at its
next step boundary; across processes every process must save at the same step,
so the loop asks JAX's preemption sync point instead (its service listens for
the signal on every host and agrees on the step).

Example:
  >>> with Notice() as notice:                      # doctest: +SKIP
  ...   for step in steps:
  ...     state = train_step(state)
  ...     if notice.due(step + 1):
  ...       save(step + 1, state); raise errors.Preempted(step + 1)
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Notice:
  """Whether a preemption notice has arrived (``due(steps_done)``), while the context is open."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    return False

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint at the next step, then stopping')
    self.requested = True

  def due(self, steps_done):
    """True at the step where this process (and every other) should save and stop."""
    if jax.process_count() == 1:
      return self.requested
    try:
      return multihost_utils.reached_preemption_sync_point(steps_done)
    except RuntimeError:  # a runtime without the preemption service
      return False
