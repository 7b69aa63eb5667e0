"""The sliced kernel gradient equals a NumPy reference and XLA's own gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.models import conv


def numpy_kernel_grad(x, dy):
  """dL/dk of a 3x3 SAME conv by its definition: sum over pixels of x-patch outer dy."""
  x = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  b, h, w, d = dy.shape
  grad = np.zeros((3, 3, x.shape[-1], d))
  for i in range(3):
    for j in range(3):
      patch = x[:, i:i + h, j:j + w].reshape(-1, x.shape[-1])
      grad[i, j] = patch.T @ dy.reshape(-1, d).astype(np.float64)
  return grad


@pytest.mark.parametrize('shape, slice_size', [((5, 7, 5, 3, 4), 2), ((3, 31, 31, 6, 5), 16),
                                               ((1, 1, 1, 2, 2), 1)])
def test_kernel_grad_by_slices_matches_numpy(shape, slice_size):
  b, h, w, c, d = shape
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  dy = rng.normal(size=(b, h, w, d)).astype(np.float32)
  got = conv.kernel_grad_by_slices(jnp.asarray(x), jnp.asarray(dy), jnp.zeros((3, 3, c, d)),
                                   slice_size)
  np.testing.assert_allclose(got, numpy_kernel_grad(x, dy), rtol=1e-4, atol=1e-4)


def test_sliced_weight_grad_gives_the_same_value_and_gradients():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(7, 9, 9, 3)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 5)).astype(np.float32))
  target = jnp.asarray(rng.normal(size=(7, 9, 9, 5)).astype(np.float32))
  loss = lambda mode: lambda x, k: jnp.sum(conv.conv3x3(x, k, mode, slice_size=3) * target)
  value_xla, grads_xla = jax.value_and_grad(loss('xla'), argnums=(0, 1))(x, kernel)
  value, grads = jax.value_and_grad(loss('sliced'), argnums=(0, 1))(x, kernel)
  np.testing.assert_array_equal(value_xla, value)  # same forward op
  np.testing.assert_array_equal(grads_xla[0], grads[0])  # same input gradient op
  np.testing.assert_allclose(grads[1], grads_xla[1], rtol=1e-4, atol=1e-4)
  # Against NumPy: sum over positions of input patches times output gradients.
  np.testing.assert_allclose(grads[1], numpy_kernel_grad(np.asarray(x), np.asarray(target)),
                             rtol=1e-4, atol=1e-4)


def test_unknown_weight_grad_is_rejected():
  with pytest.raises(ValueError, match='weight_grad'):
    conv.conv3x3(jnp.zeros((1, 3, 3, 1)), jnp.zeros((3, 3, 1, 1)), 'fft')
