"""The 'models' mesh and its two shardings, declared once.

Every per-model array has a leading models axis split over all devices
(``model_sharding``); data and analysis state are replicated (``replicated``).

Example (two models per device):
  >>> mesh = make_mesh(jax.devices()[:2])                             # doctest: +SKIP
  >>> ids = jax.device_put(np.arange(4), model_sharding(mesh))        # doctest: +SKIP
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MODELS = 'models'


def make_mesh(devices=None):
  """A 1-D mesh over ``devices`` (default: all) whose one axis is ``MODELS``."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (MODELS,))


def model_sharding(mesh):
  """Arrays stacked over models, split over the mesh along their first axis."""
  return NamedSharding(mesh, P(MODELS))


def replicated(mesh):
  """Arrays every device holds whole."""
  return NamedSharding(mesh, P())
