"""The models mesh: per-model arrays split over devices along their first axis, data whole."""

import jax
import numpy as np

from varjax.ensemble import mesh as mesh_lib


def test_mesh_has_one_models_axis_over_the_given_devices():
  assert mesh_lib.make_mesh().devices.size == len(jax.devices())
  mesh = mesh_lib.make_mesh(jax.devices()[:4])
  assert mesh.axis_names == (mesh_lib.MODELS,) and mesh.devices.shape == (4,)


def test_model_sharding_splits_the_first_axis_and_replicated_copies_whole():
  mesh = mesh_lib.make_mesh(jax.devices()[:4])
  stacked = np.arange(8 * 3).reshape(8, 3)
  split = jax.device_put(stacked, mesh_lib.model_sharding(mesh))
  # Two consecutive models per device, each with its whole trailing axes.
  assert len(split.addressable_shards) == 4
  for k, shard in enumerate(sorted(split.addressable_shards, key=lambda s: s.index[0].start)):
    np.testing.assert_array_equal(shard.data, stacked[2 * k:2 * k + 2])
  whole = jax.device_put(stacked, mesh_lib.replicated(mesh))
  assert len(whole.addressable_shards) == 4
  for shard in whole.addressable_shards:
    np.testing.assert_array_equal(shard.data, stacked)
