"""The Ensemble a run uses: its ``models_per_chunk`` fitted to the compiled programs.

Where the chunk size is not set and the device reports its memory (an
accelerator), ``build`` compiles the training step and an evaluation batch for a
few chunk sizes (chunk_fit.fit_models_per_chunk) and returns the Ensemble of the
largest size that fits, with those compiled executables kept: the run executes
them, so no program is compiled twice. Every process of a multi-process run
ends with the same chunk size (the smallest any process found).

Example:
  >>> ens = build(config, num_train=40_000)                 # doctest: +SKIP
  >>> ens.models_per_chunk, ens.chunk_trials                # doctest: +SKIP
  (16, {8: (8589934592, 20401094656), 16: (...)})
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from varjax.ensemble import abstract
from varjax.ensemble import chunk_fit
from varjax.ensemble import mesh as mesh_lib
from varjax.ensemble.ensemble import Ensemble

# The programs whose memory bounds the chunk: the training step, and an evaluation
# batch (its TTA views put more images per model on the device than a step).
FITTED_PROGRAMS = ('train_step', 'eval_outputs')


def build(config, num_train, mesh=None, memory_bytes=None, num_examples=None):
  """The Ensemble of ``config`` over ``mesh``, its chunk fitted where memory is the limit.

  ``memory_bytes``: per-device memory (default: what this process's device
  reports). ``num_examples``: evaluation examples (sizes the evaluation batch).
  The result has ``chunk_trials``: {chunk: (fixed, temporary) bytes or None}
  of every size compiled ({} when nothing was fitted).
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  memory_bytes = chunk_fit.local_memory_bytes(mesh) if memory_bytes is None else memory_bytes
  first = Ensemble(config, num_train, mesh, memory_bytes=memory_bytes)
  first.chunk_trials = {}
  if (config.ensemble.models_per_chunk is not None or first.platform == 'cpu'
      or memory_bytes is None or first.chunk_loop != 'scan'):
    return first
  built = {first.models_per_chunk: first}

  def measure(chunk):
    if chunk not in built:
      built[chunk] = Ensemble(config, num_train, mesh, chunk, memory_bytes)
    ens = built[chunk]
    try:
      return max((chunk_fit.compiled_bytes(abstract.compile(ens, name, num_examples))
                  for name in FITTED_PROGRAMS), key=sum)
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' in str(e):  # the compiler's own out-of-memory
        return None
      raise

  per_device = first.num_models // mesh.devices.size
  chunk, trials = chunk_fit.fit_models_per_chunk(per_device, first.models_per_chunk,
                                                 memory_bytes, measure)
  if jax.process_count() > 1:  # one chunk size for every process's program
    chunk = int(np.min(multihost_utils.process_allgather(np.int32(chunk))))
  ens = built.get(chunk) or Ensemble(config, num_train, mesh, chunk, memory_bytes)
  ens.chunk_trials = trials
  return ens
