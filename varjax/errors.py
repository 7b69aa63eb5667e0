"""The errors a user can fix, and how an entry point reports them: one line, exit status 2.

Every layer raises these (never prints and exits itself); each command line wraps
its one library call in ``exit_on_error``, which turns any of them into
``prog: Name: message`` on stderr.

Example:
  >>> raise ConfigError("train.batch_size must be an int >= 2, got 1.")   # doctest: +SKIP
  >>> with exit_on_error('varjax'):                                       # doctest: +SKIP
  ...   train_and_evaluate(config, workdir)
  varjax: ConfigError: train.batch_size must be an int >= 2, got 1.
"""

import contextlib
import os
import sys


class VarjaxError(Exception):
  """A mistake in what the user asked for or gave; the message says how to fix it."""


class ConfigError(VarjaxError, ValueError):
  """A config key or value that varjax cannot run with; the message names it."""


class DataError(VarjaxError, ValueError):
  """Missing, malformed or inconsistent data."""


class WorkdirError(VarjaxError, RuntimeError):
  """The workdir holds something a new run must not overwrite, or refuses a write."""


class CheckpointError(VarjaxError, RuntimeError):
  """A checkpoint that cannot be resumed from (corrupt, another config) or written."""


class TargetError(VarjaxError, ValueError):
  """A compile-only target, topology or compiler plugin that cannot give devices."""


class Preempted(VarjaxError):
  """The run stopped for a preemption notice after saving a checkpoint; rerun to resume."""

  exit_status = 128 + 15  # as a process ended by SIGTERM


def one_line(text, limit=500):
  """``text`` with its whitespace runs collapsed, cut at ``limit`` characters.

  >>> one_line('a\\n   b')
  'a b'
  """
  text = ' '.join(str(text).split())
  return text if len(text) <= limit else text[:limit] + ' ...'


def describe(error, limit=400):
  """'TypeName: message' of any exception, on one line (for wrapping foreign errors)."""
  return one_line(f'{type(error).__name__}: {error}', limit)


def exit_with_error(error, prog='varjax'):
  """Prints ``error`` as one line on stderr and exits at once with status 2 (143 for
  ``Preempted``, as a process SIGTERM ended).

  At once (``os._exit``): a run stopped by a failed write leaves background
  writers (orbax, TensorBoard) whose exit handlers would print more tracebacks
  after this line, or wait for a lost process of a multi-host run.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top  (absl only at the edge)
  from absl import logging  # pylint: disable=g-import-not-at-top
  name = 'FlagError' if isinstance(error, flags.Error) else type(error).__name__
  logging.flush()
  print(f'{prog}: {name}: {one_line(error, limit=2000)}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(getattr(error, 'exit_status', 2))  # pylint: disable=protected-access


@contextlib.contextmanager
def exit_on_error(prog='varjax'):
  """Runs the body; a VarjaxError (or a flags mistake) becomes one line and exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (VarjaxError, flags.Error) as e:
    exit_with_error(e, prog)
