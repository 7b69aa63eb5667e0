"""Maennel et al.'s misalignment against a NumPy reference and closed forms; the layer's inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

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


def direct_null(m, k, draws, rng, basis=None, scales=None):
  """M of np.cov of m Gaussian filters aligned with ``basis`` (default: the identity),
  with per-direction variances ``scales``: the premise of the null, sampled directly."""
  d = k if basis is None else basis.shape[0]
  basis = np.eye(d) if basis is None else basis
  scales = np.ones(d) if scales is None else scales
  out = []
  for _ in range(draws):
    filters = (rng.normal(size=(m, d)) * np.sqrt(scales)) @ basis.T
    out.append(measure.misalignment(np.cov(filters, rowvar=False), basis[:, :k]))
  return np.array(out)


def test_null_mean_has_the_known_limits():
  # k = 2: the closed form of the isotropic test above (m filters, m - 1 dof).
  m = 12
  chance = 2 * (special.beta(0.5, (m - 3) / 2) / special.beta(0.5, (m - 2) / 2) - 1)
  np.testing.assert_allclose(measure.null_mean(m - 1, 2), chance, rtol=1e-12)
  # Many samples: A = I + E, E ~ N(0, 1/dof) off the diagonal, M ~ (1/2) sum_{i != j} E_ij^2.
  for k in (3, 10):
    np.testing.assert_allclose(measure.null_mean(10 ** 6, k), k * (k - 1) / 2e6, rtol=1e-3)
  assert measure.null_mean(8, 1) == 0 and measure.null_mean(8, 8) == np.inf
  assert np.isnan(measure.null_mean(7, 8)) and np.all(np.isnan(measure.misalignment_null(7, 8)))


@pytest.mark.parametrize('m, k', [(16, 8), (10, 4)])
def test_null_matches_aligned_gaussian_filters_in_any_aligned_basis(m, k):
  """Filters whose covariance shares the data basis's eigenvectors (any eigenvalues, a random
  basis in 12 dims): M's mean and 95% quantile are the null's for m filters."""
  rng = np.random.default_rng(7)
  basis = measure.random_basis(12, seed=8)
  scores = direct_null(m, k, 4000, rng, basis, scales=rng.uniform(0.1, 10, 12))
  mean, q95 = measure.misalignment_null(m - 1, k)
  assert abs(scores.mean() - mean) < 4 * scores.std() / np.sqrt(len(scores))
  # The quantile: both are simulations (4,000 here, 20,000 there); ~4 of its SEs.
  assert abs(np.quantile(scores, 0.95) - q95) < 0.06 * q95
  assert measure.misalignment_null(m - 1, k) == (mean, q95)  # fixed seed, cached
  # Bartlett's draws have np.cov's distribution (two-sample KS).
  assert stats.ks_2samp(scores, measure.null_draws(m - 1, k, 4000, seed=1)).pvalue > 1e-3


def test_centring_removes_a_planted_per_index_offset():
  """R models share per-index filters (as from a common dirac start: m fixed vectors, here
  not aligned with the data) plus aligned Gaussian spread: centred pooling sees only the
  spread, exactly, and scores like its null with m (R - 1) dof; uncentred pooling is far
  above its own null."""
  rng = np.random.default_rng(9)
  num_models, m, d, k = 6, 8, 10, 4
  offsets = 5 * rng.normal(size=(m, d))
  spread = rng.normal(size=(num_models, m, d)) * np.sqrt(np.arange(d, 0, -1))
  np.testing.assert_allclose(measure.centred_pool(offsets + spread), measure.centred_pool(spread),
                             atol=1e-12)
  np.testing.assert_allclose(measure.centred_pool(spread).reshape(num_models, m, d).sum(0), 0,
                             atol=1e-12)
  cov_x = np.stack([np.diag(np.arange(d, 0, -1.0))] * num_models)  # basis: e_1 .. e_d
  member = np.ones((num_models, 1))
  basis = measure.random_basis(d, seed=0)
  centred, plain = [], []
  for _ in range(300):
    filters = offsets + rng.normal(size=(num_models, m, d)) * np.sqrt(np.arange(d, 0, -1))
    centred.append(measure.group_misalignment(cov_x, filters, member, k, basis,
                                              centre=True)['misalignment'][0])
    plain.append(measure.group_misalignment(cov_x, filters, member, k, basis)['misalignment'][0])
  got = measure.group_misalignment(cov_x, filters, member, k, basis, centre=True)
  np.testing.assert_allclose(got['misalignment_null'][0],
                             measure.misalignment_null(m * (num_models - 1), k))
  mean = measure.null_mean(m * (num_models - 1), k)
  assert abs(np.mean(centred) - mean) < 4 * np.std(centred) / np.sqrt(len(centred))
  # The offsets' between-index spread is not aligned: uncentred, nearly every draw is
  # above its null's 95% quantile.
  assert np.mean(np.array(plain) > measure.misalignment_null(m * num_models - 1, k)[1]) > 0.95


def test_alignment_stats_put_a_null_beside_every_misalignment():
  rng = np.random.default_rng(10)
  num_models, c, m = 5, 2, 6                                   # d = 18 patch dims
  cov_x = np.stack([np.cov(rng.normal(size=(200, 18)), rowvar=False)] * num_models)
  kernels = rng.normal(size=(num_models, 3, 3, c, m))
  member = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]], np.float32)  # sizes 3, 1
  per_model, per_group, settings = measure.alignment_stats(
      cov_x, kernels, 0.5 * kernels, member, None, seed=0)
  assert settings['components'] == 3 and settings['group_components'] == 3
  assert settings['group_centred_components'] == 6             # 6 (3 - 1) + 1 = 13 samples
  assert set(per_model) == {'misalignment', 'misalignment_random_basis', 'update_misalignment',
                            'update_misalignment_random_basis'}
  for prefix in ('', 'update_'):
    assert settings[prefix + 'misalignment_null'] == list(measure.misalignment_null(m - 1, 3))
    for kind, dof, k in (('', 3 * m - 1, 3), ('centred_', 2 * m, 6)):
      name = prefix + kind + 'misalignment'
      assert per_group[name].shape == (2,) and per_group[name + '_null'].shape == (2, 2)
      np.testing.assert_array_equal(per_group[name + '_null'][0], measure.misalignment_null(dof, k))
      assert np.isfinite(per_group[name][0]) and np.isfinite(per_group[name + '_random_basis'][0])
  # A one-model group: pooled is its own filters; centred is undefined.
  assert np.all(np.isnan(per_group['centred_misalignment_null'][1]))
  assert np.isnan(per_group['centred_misalignment'][1])
  np.testing.assert_allclose(per_group['misalignment_null'][1], measure.misalignment_null(m - 1, 3))
  # Updates are half the filters here: the same M (scale-free).
  np.testing.assert_allclose(per_group['update_centred_misalignment'],
                             per_group['centred_misalignment'], rtol=1e-9)
