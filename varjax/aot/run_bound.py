"""A run's fixed costs beside its training: compiles, checkpoint bytes, and the run-level bound.

The training-only bound (``PlanRecord.runs_per_hour_bound``) counts the training
steps' rooflines. A run also compiles its programs, evaluates its test set and
saves checkpoints; for small runs the compiles can cost more than the steps.
``run_record`` adds them up from the programs' records of one target:

  run_s_bound = compile_s + train_s_bound + eval_s_bound

where ``eval_s_bound`` is one pass over the test set (batches of
``eval.batch_size``: 'eval_outputs' then 'analysis_update', each at its
roofline). ``runs_sharing_compile_for_10pct`` is how many consecutive runs (or
sweep points) reusing the compiled programs (the persistent cache) bring the
compiles under 10% of the total: the smallest k with
compile_s <= 0.1 (compile_s + k (train_s + eval_s)).

Example:
  >>> run_record(records, ens, target)   # doctest: +SKIP
  {'program': 'run', 'compile_s': 41.2, 'runs_per_hour_run': 3110.5, ...}
"""

import math

import jax
import numpy as np

from varjax.ensemble import abstract

# The programs every run executes; without them there is no run-level bound.
NEEDED = ('init', 'train_step', 'eval_outputs', 'analysis_update')


def checkpoint_bytes(ens):
  """Bytes of one checkpoint: the stacked training state of every model (all hosts)."""
  leaves = jax.tree.leaves(abstract.state(ens))
  return int(sum(np.prod(s.shape, dtype=np.int64) * np.dtype(s.dtype).itemsize for s in leaves))


def runs_for_compile_share(compile_s, run_s, share=0.1):
  """Smallest k with compile_s <= share * (compile_s + k * run_s): runs sharing one compile.

  >>> runs_for_compile_share(9.0, 10.0)
  8
  """
  if run_s <= 0:
    return None
  return max(1, math.ceil(compile_s * (1 - share) / (share * run_s)))


def run_record(records, ens, target, num_test):
  """The run-level JSON record of one target from its programs' records (dicts), or None.

  None when a program the run needs was not compiled (``--programs`` chose fewer).
  """
  by_name = {r['program']: r for r in records}
  if not all(name in by_name for name in NEEDED):
    return None
  step = by_name['train_step']
  train_s = ens.num_models * 3600 / step['runs_per_hour_bound']
  batches = math.ceil(num_test / min(ens.config.eval.batch_size, num_test))
  eval_s = batches * (by_name['eval_outputs']['roofline_step_s']
                      + by_name['analysis_update']['roofline_step_s'])
  compile_s = sum(r['compile_s'] for r in records)
  run_s = compile_s + train_s + eval_s
  return {
      'target': target.name, 'program': 'run', 'num_models': ens.num_models,
      'programs_compiled': {r['program']: r['compile_s'] for r in records},
      'compile_s': round(compile_s, 1),
      'checkpoint_bytes_per_save': checkpoint_bytes(ens),
      'train_s_bound': round(train_s, 2), 'eval_s_bound': round(eval_s, 3),
      'run_s_bound': round(run_s, 2),
      'runs_per_hour_training_only': step['runs_per_hour_bound'],
      'runs_per_hour_run': round(ens.num_models * 3600 / run_s, 1),
      'compile_share': round(compile_s / run_s, 3),
      'runs_sharing_compile_for_10pct': runs_for_compile_share(compile_s, train_s + eval_s),
  }
