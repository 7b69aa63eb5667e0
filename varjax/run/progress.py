"""Training progress for a person at a terminal: step / total, model-images/s and ETA.

A tqdm bar on stderr, redrawn every ``interval`` seconds rather than every step.
It is off when stderr is not a terminal or under ``CI=true`` (logs and CI output
stay clean), and none of it reaches metrics.jsonl.

Example:
  >>> progress = Progress(total_steps=400, images_per_step=16 * 128)  # doctest: +SKIP
  >>> for step in range(400):                                         # doctest: +SKIP
  ...   state, metrics = train_step(state)
  ...   progress.update(step + 1, wait_for=metrics)
  >>> progress.close()                                                # doctest: +SKIP
  train: 100%|██████████| step 400/400 [01:12<00:00, 28,440 model-images/s]
"""

import contextlib
import os
import sys
import time

import jax
import tqdm

BAR_FORMAT = ('{desc}: {percentage:3.0f}%|{bar}| step {n_fmt}/{total_fmt} '
              '[{elapsed}<{remaining}, {images_rate} model-images/s]')


def wanted(stream=None, environ=None):
  """Whether someone watches ``stream`` (default stderr): a terminal, and not CI."""
  stream = sys.stderr if stream is None else stream
  environ = os.environ if environ is None else environ
  if environ.get('CI', '').lower() in ('true', '1', 'yes'):
    return False
  isatty = getattr(stream, 'isatty', None)
  return bool(isatty and isatty())


class _Bar(tqdm.tqdm):
  """A tqdm bar over steps whose format also has {images_rate}: steps/s x images per step."""

  def __init__(self, *args, images_per_step=1, **kwargs):
    self.images_per_step = images_per_step
    super().__init__(*args, **kwargs)

  @property
  def format_dict(self):
    d = super().format_dict
    rate = d.get('rate')
    if rate is None and d.get('elapsed'):
      rate = (d['n'] - d.get('initial', 0)) / d['elapsed']
    d['images_rate'] = f'{rate * self.images_per_step:,.0f}' if rate else '?'
    return d


class Progress:
  """A progress bar over ``total_steps`` training steps of ``images_per_step`` model-images.

  ``done``: steps finished before (a resumed run). ``enable``: None decides with
  ``wanted()``. ``clock``: seconds, for the redraw interval.
  """

  def __init__(self, total_steps, images_per_step, done=0, desc='train', interval=5.0,
               stream=None, enable=None, clock=time.monotonic):
    stream = sys.stderr if stream is None else stream
    self._bar = None
    if wanted(stream) if enable is None else enable:
      self._bar = _Bar(total=total_steps, initial=done, desc=desc, file=stream,
                       bar_format=BAR_FORMAT, mininterval=0, dynamic_ncols=True,
                       images_per_step=images_per_step)
    self._interval = interval
    self._clock = clock
    self._last = clock()

  @property
  def enabled(self):
    return self._bar is not None

  def update(self, steps_done, wait_for=None):
    """Called after every step; redraws once ``interval`` has passed, and at the end.

    ``wait_for``: arrays of the latest step. Steps are dispatched asynchronously,
    so before a redraw they are waited for: the count and rate are of finished
    steps (one short wait every ``interval``, none when the bar is off).
    """
    if self._bar is None:
      return
    if self._clock() - self._last < self._interval and steps_done < self._bar.total:
      return
    if wait_for is not None:
      jax.block_until_ready(wait_for)
    self._bar.update(steps_done - self._bar.n)
    self._last = self._clock()

  @contextlib.contextmanager
  def paused(self):
    """Lets log lines through without tearing the bar (cleared, then redrawn)."""
    if self._bar is None:
      yield
      return
    with tqdm.tqdm.external_write_mode(file=self._bar.fp):
      yield

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None
