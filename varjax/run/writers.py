"""Metric writers: JSON lines (for scripts) and TensorBoard event files (for eyes).

The event files come from tensorboardX, a maintained writer that needs neither
TensorFlow nor PyTorch at run time (numpy and protobuf only).

Example:
  >>> w = MetricWriter('/tmp/run')                      # doctest: +SKIP
  >>> w.write(step=100, epoch=1, train_loss=1.2)        # doctest: +SKIP
  >>> w.close()                                         # doctest: +SKIP
"""

import json
import math
import os

import numpy as np
import tensorboardX

from varjax.run import files

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _jsonable(value):
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


def _scalars(record):
  """The finite numbers of a record: what TensorBoard plots."""
  return {k: float(v) for k, v in record.items()
          if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v)}


def keep_records(workdir, keep):
  """Rewrites ``metrics.jsonl`` with only the records ``keep(record)`` accepts.

  A resumed run drops the records it will write again, so each is written once;
  a line cut short by a kill is dropped too. Atomic: a kill leaves the old file.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    text = f.read()
  lines = text.splitlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and keep(record):
      kept.append(line)
  if len(kept) == len(lines) and text.endswith('\n'):
    return
  files.write_text(path, ''.join(line + '\n' for line in kept))


class MetricWriter:
  """Writes each record as one JSON line to ``metrics.jsonl`` and its scalars to TensorBoard."""

  def __init__(self, workdir, tensorboard=True):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a')
    self._tb = None
    if tensorboard:
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step, **values):
    record = {'step': int(step), **{k: _jsonable(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for tag, value in _scalars(record).items():
        self._tb.add_scalar(tag, value, int(step))
      self._tb.flush()

  def close(self):
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """Stands in for MetricWriter on processes that do not write (all but process 0)."""

  def write(self, step, **values):
    del step, values

  def close(self):
    pass
