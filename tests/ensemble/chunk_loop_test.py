"""The chunk loop against NumPy: every model gets its own arguments, whatever the chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.ensemble import chunk_loop
from varjax.ensemble import mesh as mesh_lib

N = 8


def affine(per_model, scale):
  """One model's function: its own (w, b) and a shared scale."""
  w, b = per_model
  return {'y': w * scale + b.sum(), 'norm': jnp.sum(w * w)}


def stacked():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(N, 3)).astype(np.float32),
          rng.normal(size=(N, 2)).astype(np.float32))


def expected(w, b, scale):
  return {'y': w * scale + b.sum(1, keepdims=True), 'norm': (w * w).sum(1)}


def assert_tree_close(got, want):
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.parametrize('formulation', ['unrolled', 'vmap', 'grad_of_sum'])
@pytest.mark.parametrize('models_per_chunk', [1, 2, 8])
def test_map_models_equals_each_model_alone(formulation, models_per_chunk):
  w, b = stacked()
  mapped = chunk_loop.map_models(affine, models_per_chunk, 2, formulation)
  assert_tree_close(jax.jit(mapped)(w, b, 1.5), expected(w, b, 1.5))


def test_chunk_fn_gets_the_whole_chunk():
  w, b = stacked()
  sizes = []

  def chunk_fn(chunk, scale):
    sizes.append(chunk[0].shape[0])
    return jax.vmap(lambda m: affine(m, scale))(chunk)

  mapped = chunk_loop.map_models(affine, 4, 2, 'grad_of_sum', chunk_fn)
  assert_tree_close(mapped(w, b, 2.0), expected(w, b, 2.0))
  assert sizes == [4]  # traced once by the scan, on chunks of 4 models


def test_chunk_size_must_divide_the_models():
  w, b = stacked()
  with pytest.raises(ValueError, match='8 models per device is not a multiple of '
                                       'ensemble.models_per_chunk=3'):
    chunk_loop.map_models(affine, 3, 2)(w, b, 1.0)


def test_update_chunk_writes_only_its_slice_and_sees_the_outputs_there():
  w, _ = stacked()
  # fn adds the model's w to what the outputs hold for it: a state updated in place.
  body = chunk_loop.update_chunk(lambda per_model, s: per_model[0] + s * per_model[1], 2, 1)
  outputs = np.ones((N, 3), np.float32)
  got = np.asarray(body(outputs, 1, w, 10.0))
  want = outputs.copy()
  want[2:4] += 10.0 * w[2:4]
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize('num_devices', [1, 4])
def test_scan_and_host_loop_over_a_mesh_equal_each_model_alone(num_devices):
  mesh = mesh_lib.make_mesh(jax.devices()[:num_devices])
  shard = mesh_lib.model_sharding(mesh)
  w, b = (jax.device_put(x, shard) for x in stacked())
  want = expected(*stacked(), 0.5)
  chunk = 2
  scanned = jax.jit(chunk_loop.shard_map_models(affine, mesh, chunk, 2, 1))(w, b, 0.5)
  assert_tree_close(scanned, want)
  assert scanned['y'].sharding.is_equivalent_to(shard, 2)

  update = chunk_loop.jit_chunk_update(lambda per_model, s: affine(per_model[1:], s), mesh,
                                       chunk, 2, 1)
  zeros = lambda shape, dtype: jax.device_put(np.zeros((N,) + shape, dtype), shard)
  run = chunk_loop.host_loop(affine, update, 2, N // num_devices // chunk, zeros)
  # The host loop takes arrays only (it keys its traced shapes on them).
  assert_tree_close(run(w, b, jnp.float32(0.5)), want)
  assert_tree_close(run(w, b, jnp.float32(3.0)), expected(*stacked(), 3.0))
