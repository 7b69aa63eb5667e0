"""Joining a multi-process run (jax.distributed) before any other JAX call.

Example:
  >>> initialize('10.0.0.1:1234', num_processes=2, process_id=0)   # doctest: +SKIP
"""

import jax


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Starts jax.distributed; with no arguments it reads a TPU pod's or Slurm's environment."""
  # CPU processes (the local simulation, CPU clusters) need a collectives backend.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
