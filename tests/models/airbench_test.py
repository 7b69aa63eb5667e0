"""The airbench94 network: size, init and layers against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.models import airbench
from varjax.models import conv
from varjax.models import layers
from varjax.training import step as step_lib

from conftest import CIFAR10_BINARY, needs_shared_data


def test_default_widths_have_airbench94_parameter_count():
  model = airbench.Airbench(widths=(64, 256, 256))
  variables = airbench.init_variables(model, jax.random.key(0), np.zeros((2, 2, 3, 24)))
  assert airbench.num_params(variables['params']) == 1_971_640


def smooth_images(n, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 32, 32, 3))
  return (x + np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2)) / 3  # correlated pixels


@pytest.mark.parametrize('kernel_size', [2, 3])
def test_whitening_filters_whiten_patches(kernel_size):
  images = smooth_images(64)
  kernel = airbench.whitening_kernel(images, kernel_size, eps=1e-12)
  k = kernel_size
  windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))
  # windows: (n, h', w', c, k, k) -> patches in (kh, kw, c) order.
  patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * 3)
  responses = patches @ kernel.reshape(k * k * 3, -1)[:, :k * k * 3]
  second_moment = responses.T @ responses / len(responses)
  np.testing.assert_allclose(second_moment, np.eye(k * k * 3), atol=1e-3)
  np.testing.assert_allclose(kernel[..., k * k * 3:], -kernel[..., :k * k * 3])


def test_whitening_eps_damps_small_directions():
  images = smooth_images(16)
  kernel = airbench.whitening_kernel(images, 2, eps=5e-4)
  norms = np.linalg.norm(kernel.reshape(12, 24)[:, :12], axis=0)
  assert np.all(np.diff(norms) >= -1e-6)  # largest eigenvalue (smallest gain) first


@needs_shared_data
def test_whitening_from_real_images_has_unit_scale():
  from varjax.data import cifar10
  images, _ = cifar10.read_binary_file(str(CIFAR10_BINARY / 'data_batch_1.bin'))
  kernel = step_lib.whitening_kernel_for(images, airbench_config())
  assert kernel.shape == (2, 2, 3, 24) and np.all(np.isfinite(kernel))


def airbench_config():
  import ml_collections
  return ml_collections.ConfigDict(dict(whiten_num_images=500, whiten_kernel_size=2,
                                        whiten_eps=5e-4))


def test_dirac_init_starts_as_identity():
  kernel = airbench.dirac_init(jax.random.key(0), (3, 3, 4, 6))
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype(np.float32)
  y = conv.lax_conv(jnp.asarray(x), kernel, 'SAME')
  np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
  assert not np.allclose(kernel[..., 4:], 0)


@pytest.mark.parametrize('form', layers.MAX_POOLS)
def test_max_pool_matches_numpy(form):
  x = np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype(np.float32)
  want = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
  np.testing.assert_array_equal(layers.max_pool(jnp.asarray(x), 2, form), want)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_forms_have_the_same_derivatives_ties_included(dtype):
  # Coarse values make ties in most windows: the gradient is split equally among
  # a window's maxima by both forms.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(-2, 3, size=(3, 7, 9, 4)), dtype)
  dy = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), dtype)
  out = {}
  for form in layers.MAX_POOLS:
    y, vjp = jax.vjp(lambda v, form=form: layers.max_pool(v, 2, form), x)
    out[form] = (y, vjp(dy)[0])
  np.testing.assert_array_equal(out['windows'][0], out['reshape'][0])
  np.testing.assert_array_equal(out['windows'][1], out['reshape'][1])
  # One maximum per window would leave 1/4 of the cropped 6x8 pixels nonzero (19%).
  assert np.mean(np.asarray(out['windows'][0]) != 0) > 0.25  # many ties were split


def test_batchnorm_train_and_running_stats_match_numpy():
  bn = airbench.BatchNorm(momentum=0.6, epsilon=1e-12)
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 3, 5)).astype(np.float32)
  variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-12), atol=1e-4)
  count = 4 * 3 * 3
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.4 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'],
                             0.6 + 0.4 * var * count / (count - 1), rtol=1e-5)


def test_whitening_bias_starts_at_zero_as_in_airbench94():
  # airbench94's Conv zeroes every bias; a random start would add init randomness.
  model = airbench.Airbench(widths=(4, 8, 8))
  for seed in (0, 1):
    variables = airbench.init_variables(model, jax.random.key(seed), np.zeros((2, 2, 3, 24)))
    np.testing.assert_array_equal(variables['params']['whiten_bias'], np.zeros(24))


def test_forward_shapes_and_intermediates():
  model = airbench.Airbench(widths=(4, 8, 8))
  variables = airbench.init_variables(model, jax.random.key(0), np.zeros((2, 2, 3, 24)))
  x = jnp.zeros((3, 32, 32, 3))
  logits, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  assert logits.shape == (3, 10)
  assert list(state['intermediates']) == ['features']  # no probes asked for


def test_probe_places_sow_pooled_activations():
  """Every place against activations captured by flax (not the sow), pooled in NumPy."""
  model = airbench.Airbench(widths=(4, 8, 8), probes=airbench.PROBE_PLACES)
  rng = np.random.default_rng(0)
  kernel = airbench.whitening_kernel(rng.normal(size=(16, 32, 32, 3)), 2)
  variables = airbench.init_variables(model, jax.random.key(0), kernel)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  logits, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  sown = {k: np.asarray(v[0]) for k, v in state['intermediates'].items()}
  assert list(sown) == list(airbench.PROBE_PLACES) + ['features']
  _, captured = model.apply(variables, x, train=False, capture_intermediates=True)
  captured = captured['intermediates']

  def grid(a, reduce):  # 4 x 4 cells with edges at round(i * size / 4)
    edges = [int(np.round(i * a.shape[1] / 4)) for i in range(5)]
    return np.stack([reduce(a[:, edges[i]:edges[i + 1], edges[j]:edges[j + 1]], axis=(1, 2))
                     for i in range(4) for j in range(4)], 1).reshape(len(a), -1)

  np.testing.assert_allclose(sown['input'], grid(np.asarray(x), np.mean), rtol=1e-6, atol=1e-6)
  # The whitening output: GELU of the 2x2 conv (zero bias), from NumPy patches.
  patches = np.lib.stride_tricks.sliding_window_view(np.asarray(x), (2, 2), axis=(1, 2))
  pre = np.einsum('nhwcij,ijco->nhwo', patches, kernel)
  whiten = np.asarray(jax.nn.gelu(pre, approximate=False))
  np.testing.assert_allclose(sown['whiten'], grid(whiten, np.max), rtol=1e-4, atol=1e-5)
  assert sown['input'].shape == (2, 48) and sown['whiten'].shape == (2, 384)
  for g in (1, 2, 3):
    mid, out = (np.asarray(a) for a in captured[f'group{g}']['__call__'][0])
    np.testing.assert_allclose(sown[f'group{g}_conv1'], mid.max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(sown[f'group{g}_conv2'], out.max(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(sown['features'], sown['group3_conv2'], rtol=1e-6)
  np.testing.assert_allclose(logits, model.head_scale * sown['features']
                             @ np.asarray(variables['params']['head']), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='nowhere'):
    airbench.Airbench(widths=(4, 8, 8), probes=('nowhere',)).apply(variables, x, train=False)
