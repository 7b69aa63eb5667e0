"""``python -m varjax.main`` with a preemption or a full disk at a chosen step (tests only).

  VARJAX_TEST_KILL_AT_STEP=K python tests/preempt.py --config=... --workdir=...
      SIGKILLs itself as it is about to dispatch train step K (mid-epoch if K is),
      as a preempted VM or an OOM killer would: no handler runs.
  VARJAX_TEST_TERM_AT_STEP=K python tests/preempt.py ...
      Sends itself SIGTERM as it is about to dispatch train step K, as a
      scheduler's preemption notice: the run saves after that step and stops.
  VARJAX_TEST_DISK_FULL_AT_STEP=K python tests/preempt.py ...
      From step K on, every write that grows a file fails (RLIMIT_FSIZE 0: the
      kernel returns EFBIG, for tensorstore's threads too; Python ignores SIGXFSZ).

Steps count from 0, so K steps are done then. With a checkpoint every step, the
one of K steps may be half-written and the one of K - 1 steps is finished: orbax's
save waits for the previous save before it starts.
"""

import os
import resource
import signal
import sys

from absl import app

from varjax.config import command_line
from varjax import ensemble
from varjax import main

_KILL_AT = os.environ.get('VARJAX_TEST_KILL_AT_STEP')
_DISK_FULL_AT = os.environ.get('VARJAX_TEST_DISK_FULL_AT_STEP')
_TERM_AT = os.environ.get('VARJAX_TEST_TERM_AT_STEP')


def _step_of(args, kwargs):
  return int(kwargs['step'] if 'step' in kwargs else args[-1])


def _patched(train_step):
  def wrapper(self, *args, **kwargs):
    step = _step_of(args, kwargs)
    if _KILL_AT is not None and step == int(_KILL_AT):
      os.kill(os.getpid(), signal.SIGKILL)
    if _TERM_AT is not None and step == int(_TERM_AT):
      os.kill(os.getpid(), signal.SIGTERM)
    if _DISK_FULL_AT is not None and step == int(_DISK_FULL_AT):
      resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return train_step(self, *args, **kwargs)
  return wrapper


if __name__ == '__main__':
  ensemble.Ensemble.train_step = _patched(ensemble.Ensemble.train_step)
  sys.argv[0] = 'varjax.main'
  app.run(main.main, flags_parser=command_line.flags_parser)
