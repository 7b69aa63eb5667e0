"""Maennel et al.'s misalignment against a NumPy reference and closed forms; the layer's inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from varjax.measures import alignment
from varjax.data import augment
from varjax.analysis import alignment as measure
from varjax.models import airbench
from varjax.models import layers


def reference_misalignment(patch_rows, filter_rows, k, basis=None):
  """From raw samples, with np.cov / np.linalg.eig / np.linalg.inv: the paper's formula."""
  cov_x = np.cov(patch_rows, rowvar=False)
  values, vectors = np.linalg.eig(cov_x)
  vectors = np.real(vectors[:, np.argsort(np.real(values))[::-1]])
  v = vectors[:, :k] if basis is None else basis[:, :k]
  a = v.T @ np.cov(filter_rows, rowvar=False) @ v
  a_inv = np.linalg.inv(a)
  return sum(np.sqrt(a[i, i] * a_inv[i, i]) - 1 for i in range(k))


def loop_patches(maps, size=3):
  n, h, w, c = maps.shape
  return np.array([maps[b, i:i + size, j:j + size].ravel() for b in range(n)
                   for i in range(h - size + 1) for j in range(w - size + 1)])


def test_patch_moments_and_misalignment_match_the_numpy_reference():
  rng = np.random.default_rng(0)
  mixing = rng.normal(size=(4, 4))
  maps = rng.normal(size=(3, 9, 9, 4)) @ mixing + 0.3  # correlated channels, non-zero mean
  kernel = rng.normal(size=(3, 3, 4, 30))
  rows = loop_patches(maps)
  moments = jax.tree.map(np.asarray, alignment.patch_moments(jnp.asarray(maps, jnp.float32)))
  assert moments['count'] == len(rows) == 3 * 49
  cov_x = measure.covariance_from_moments(moments['sum'], moments['outer'], moments['count'])
  np.testing.assert_allclose(cov_x, np.cov(rows, rowvar=False), rtol=1e-4, atol=1e-4)
  filters = measure.filter_matrix(kernel)  # HWIO filters flattened like the patches
  np.testing.assert_array_equal(filters[5], kernel[..., 5].ravel())
  basis = measure.random_basis(36, seed=3)
  np.testing.assert_allclose(basis.T @ basis, np.eye(36), atol=1e-12)
  for k in (1, 5, 14):
    got = measure.misalignments(cov_x, filters, k, basis)
    np.testing.assert_allclose(got['misalignment'],
                               reference_misalignment(rows, filters, k), rtol=1e-3)
    np.testing.assert_allclose(got['misalignment_random_basis'],
                               reference_misalignment(rows, filters, k, basis), rtol=1e-6)


def test_aligned_covariances_score_zero_and_scale_does_not_matter():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  cov_x = q @ np.diag([6., 5, 4, 3, 2, 1]) @ q.T
  basis = measure.principal_components(cov_x)
  # Any covariance with the data's eigenvectors (any eigenvalues) is aligned.
  aligned = q @ np.diag([0.1, 3, 0.5, 2, 7, 1]) @ q.T
  assert abs(measure.misalignment(aligned, basis)) < 1e-10
  assert abs(measure.misalignment(aligned, basis[:, :3])) < 1e-10
  other = rng.normal(size=(6, 6))
  other = other @ other.T + np.eye(6)
  m = measure.misalignment(other, basis)
  assert m > 0
  np.testing.assert_allclose(measure.misalignment(37 * other, basis), m, rtol=1e-9)


@pytest.mark.parametrize('theta', [0.0, 0.3, np.pi / 4, 1.2])
def test_rotated_two_dimensional_case_has_its_closed_form(theta):
  # Sigma_w = R diag(a, b) R', data eigenvectors e_1, e_2:
  # M = 2 (sqrt((a c^2 + b s^2)(c^2 / a + s^2 / b)) - 1).
  a, b = 4.0, 0.5
  c, s = np.cos(theta), np.sin(theta)
  r = np.array([[c, -s], [s, c]])
  got = measure.misalignment(r @ np.diag([a, b]) @ r.T, np.eye(2))
  want = 2 * (np.sqrt((a * c * c + b * s * s) * (c * c / a + s * s / b)) - 1)
  np.testing.assert_allclose(got, want, atol=1e-12)


def test_isotropic_random_filters_score_the_chance_value_in_any_basis():
  # m isotropic Gaussian filters, k = 2: M = 2 (1 / sqrt(1 - r^2) - 1) with r their
  # sample correlation, whose null density ~ (1 - r^2)^((m - 4) / 2), so
  # E[M] = 2 (B(1/2, (m - 3) / 2) / B(1/2, (m - 2) / 2) - 1), whatever the basis.
  rng = np.random.default_rng(2)
  m, d, draws = 12, 5, 3000
  chance = 2 * (special.beta(0.5, (m - 3) / 2) / special.beta(0.5, (m - 2) / 2) - 1)
  data_basis = measure.principal_components(np.diag([5., 4, 3, 2, 1]))
  for basis in (data_basis, measure.random_basis(d, seed=4)):
    scores = [measure.misalignment(np.cov(rng.normal(size=(m, d)), rowvar=False), basis[:, :2])
              for _ in range(draws)]
    assert abs(np.mean(scores) - chance) < 4 * np.std(scores) / np.sqrt(draws)


def test_group_pooling_and_component_rules():
  rng = np.random.default_rng(5)
  cov_x = np.stack([np.diag([4., 3, 2, 1])] * 3)
  filters = rng.normal(size=(3, 4, 4))
  member = np.array([[1, 0], [1, 0], [0, 0]], np.float32)  # model 2: in no group
  basis = measure.random_basis(4, seed=0)
  got = measure.group_misalignment(cov_x, filters, member, 3, basis)
  want = measure.misalignments(cov_x[0], np.concatenate(filters[:2]), 3, basis)
  assert got['misalignment'][0] == want['misalignment']
  assert np.isnan(got['misalignment'][1])  # an empty group
  assert measure.num_components(None, 216, 16) == 8
  assert measure.num_components(None, 216, 1024) == 216
  with pytest.raises(ValueError, match='alignment_components=16 must be in'):
    measure.num_components(16, 216, 16)
  assert np.isnan(measure.misalignment(np.cov(filters[0], rowvar=False), np.eye(4)))  # rank 3


def test_first_conv_input_is_the_whitening_output_after_its_gelu():
  model = airbench.Airbench(widths=(4, 8, 8))
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  kernel = airbench.whitening_kernel(rng.normal(size=(8, 32, 32, 3)), 2)
  variables = airbench.init_variables(model, jax.random.key(0), kernel)
  variables['params']['whiten_bias'] = jnp.asarray(rng.normal(size=24), jnp.float32)
  got = alignment.first_conv_input(model, variables, jnp.asarray(images))
  x = np.asarray(augment.normalize(jnp.asarray(images)), np.float64)
  conv = np.zeros((5, 31, 31, 24))
  for i in range(2):
    for j in range(2):
      conv += np.einsum('nhwc,cd->nhwd', x[:, i:i + 31, j:j + 31], kernel[i, j])
  want = np.asarray(layers.gelu(jnp.asarray(conv + np.asarray(variables['params']['whiten_bias']),
                                            jnp.float32)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert alignment.first_conv_kernel(variables['params']).shape == (3, 3, 24, 4)
