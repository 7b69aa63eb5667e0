"""benchmarks/conv_kernels.py: its conv shapes are the network's, and every kernel-gradient
form it times computes the kernel gradient (against a NumPy loop over the taps)."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from varjax.models import airbench


def _load_script():
  spec = importlib.util.spec_from_file_location('conv_kernels',
                                                REPO / 'benchmarks' / 'conv_kernels.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


conv_kernels = _load_script()


def numpy_kernel_grad(x, dy):
  """dW[i, j] = sum over images and pixels of x(padded)[h + i, w + j] outer dy[h, w]."""
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(np.float64)
  dy = dy.astype(np.float64)
  grad = np.zeros((3, 3, x.shape[-1], dy.shape[-1]))
  for i in range(3):
    for j in range(3):
      tap = xp[:, i:i + h, j:j + w].reshape(-1, x.shape[-1])
      grad[i, j] = tap.T @ dy.reshape(-1, dy.shape[-1])
  return grad


@pytest.mark.parametrize('form', sorted(conv_kernels.KERNEL_GRAD_FORMS))
def test_kernel_grad_forms_match_numpy(form):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 5, 4)).astype(np.float32)
  dy = rng.normal(size=(3, 5, 5, 6)).astype(np.float32)
  expected = numpy_kernel_grad(x, dy)
  got = jax.jit(conv_kernels.KERNEL_GRAD_FORMS[form])(jnp.asarray(x), jnp.asarray(dy))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_xla_kernel_grad_matches_numpy_and_forms_report_agreement():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  dy = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
  conv = lambda k: jax.lax.conv_general_dilated(
      jnp.asarray(x), k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  xla = jax.vjp(conv, jnp.zeros((3, 3, 3, 5)))[1](jnp.asarray(dy))[0]
  np.testing.assert_allclose(np.asarray(xla), numpy_kernel_grad(x, dy), rtol=1e-5, atol=1e-5)
  timed = conv_kernels.jax_kernel_grad_forms(batch=2, size=4, c_in=3, c_out=5)
  assert set(timed) == set(conv_kernels.KERNEL_GRAD_FORMS)
  for call, diff in timed.values():
    call()
    assert diff < 1e-5


def test_a_wrong_form_is_reported_as_different(monkeypatch):
  # The kernel's rows and columns swapped: the right numbers in the wrong taps.
  swapped = lambda x, dy: conv_kernels.im2col_kernel_grad(x, dy).transpose(1, 0, 2, 3)
  monkeypatch.setattr(conv_kernels, 'KERNEL_GRAD_FORMS', {'swapped': swapped})
  (_, diff), = conv_kernels.jax_kernel_grad_forms(batch=2, size=4, c_in=3, c_out=5).values()
  assert diff > 0.1


def test_conv_shapes_are_the_networks():
  widths = (16, 32, 32)
  model = airbench.Airbench(widths=widths)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  expected_channels = [params[f'group{g}'][f'conv{c}'].shape[2:]
                       for g in (1, 2, 3) for c in (1, 2)]
  shapes = conv_kernels.conv_shapes(widths)
  assert [(c_in, c_out) for _, _, c_in, c_out in shapes] == expected_channels
  # 32 -> 31 (2x2 whitening, VALID), then each group's floor max pool halves the map.
  assert [size for _, size, _, _ in shapes] == [31, 15, 15, 7, 7, 3]
