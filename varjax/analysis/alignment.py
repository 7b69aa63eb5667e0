"""Maennel et al.'s (2020) misalignment of first-layer filters with the data, per model and group.

"What do neural networks learn when trained with random labels?" (NeurIPS
2020), Sec. 2: the filters w of a first layer are samples of a random vector
with covariance Sigma_w, its input patches x samples with covariance Sigma_x.
Sigma_w is *aligned* with Sigma_x when every eigenspace of Sigma_x lies in an
eigenspace of Sigma_w (for distinct data eigenvalues: every eigenvector v_i of
Sigma_x is one of Sigma_w). Their measure of the departure from it (App. A.6;
Fig. 2 compares it with a random orthonormal basis in place of the v_i):

    M(Sigma_x, Sigma_w) = sum_i [ sqrt( (v_i' Sigma_w v_i) (v_i' Sigma_w^-1 v_i) ) - 1 ].

Each term is >= 0 (Cauchy-Schwarz), 0 exactly when v_i is an eigenvector of
Sigma_w, and M does not change with the scale of Sigma_w.

With fewer filters than patch dimensions Sigma_w^-1 does not exist, so M is
taken on the span of the data's top k principal components V_k:
A = V_k' Sigma_w V_k (the covariance of the filters' projections),
M_k = sum_{i<=k} [ sqrt(A_ii (A^-1)_ii) - 1 ]; k = d is the paper's M. The
default k = min(d, filters // 2) keeps A, a covariance of that many samples in
k dimensions, well conditioned: for isotropic samples its smallest eigenvalue
falls like (1 - sqrt(k / filters))^2 of the mean, and sampling noise alone
would dominate M with k near the number of filters.

One model's filters are few samples (16 at the CPU widths), so M of one model
is mostly sampling noise. An ensemble has many: ``group_misalignment`` pools
the filters of a group's models as samples of one filter distribution (and
averages their data covariances), which is what Maennel et al.'s random-vector
view of the weights asks for.

Everything here is float64 NumPy on host arrays.

Example:
  >>> float(misalignment(np.diag([1., 4.]), np.eye(2)))   # aligned
  0.0
"""

import numpy as np


def covariance_from_moments(total, outer, count):
  """Unbiased covariance (d, d) from the sum (d,) and the sum of outer products of ``count`` samples."""
  total = np.asarray(total, np.float64)
  return (np.asarray(outer, np.float64) - np.outer(total, total) / count) / (count - 1)


def filter_matrix(kernel):
  """An HWIO kernel's output filters as rows (m, d), flattened in (h, w, c) order."""
  kernel = np.asarray(kernel, np.float64)
  return kernel.reshape(-1, kernel.shape[-1]).T


def principal_components(cov):
  """Eigenvectors of a covariance as columns, largest eigenvalue first."""
  values, vectors = np.linalg.eigh(cov)
  return vectors[:, np.argsort(values)[::-1]]


def misalignment(cov_w, basis):
  """M of ``cov_w`` along the orthonormal columns of ``basis`` (d, k).

  sum_i sqrt(A_ii (A^-1)_ii) - 1 with A = basis' cov_w basis; NaN when A is
  singular (too few filters for k).
  """
  a = basis.T @ np.asarray(cov_w, np.float64) @ basis
  values, vectors = np.linalg.eigh((a + a.T) / 2)
  if values.min() <= values.max() * 1e-12:
    return np.nan
  inverse_diag = (vectors * vectors / values).sum(1)
  return float(np.sum(np.sqrt(np.diag(a) * inverse_diag) - 1))


def random_basis(dim, seed):
  """A random orthonormal basis (d, d): QR of a Gaussian matrix, signs fixed, from ``seed``."""
  q, r = np.linalg.qr(np.random.default_rng([seed, 18]).normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


def num_components(requested, dim, num_filters):
  """k: ``requested``, or min(d, filters // 2); more than the filters span is a clear error."""
  most = min(dim, num_filters - 1)
  k = max(1, min(dim, num_filters // 2)) if requested is None else int(requested)
  if not 1 <= k <= most:
    raise ValueError(f'lenses.alignment_components={requested} must be in [1, {most}]: '
                     f'{num_filters} filters span at most {num_filters - 1} directions of '
                     f'the {dim}-dim patches.')
  return k


def misalignments(cov_x, filters, k, baseline):
  """``misalignment`` along the data's top k components and ``misalignment_random_basis``
  along the first k columns of ``baseline``, for filters (m, d) as samples."""
  cov_w = np.cov(np.asarray(filters, np.float64), rowvar=False)
  return {'misalignment': misalignment(cov_w, principal_components(cov_x)[:, :k]),
          'misalignment_random_basis': misalignment(cov_w, baseline[:, :k])}


def group_misalignment(cov_x, filters, member, k, baseline):
  """Per group: M of the pooled filters of its models against their mean data covariance.

  Args:
    cov_x: (N, d, d) each model's patch covariance.
    filters: (N, m, d) each model's filters (or filter updates).
    member: (N, G) group membership (zero rows: in no group).
    k: principal components (``num_components`` for the pooled filter count).
    baseline: a random orthonormal basis (d, d).

  Returns:
    (G,) ``misalignment`` and ``misalignment_random_basis`` (NaN for a group
    with too few filters for k).
  """
  member = np.asarray(member) > 0
  out = {'misalignment': [], 'misalignment_random_basis': []}
  for g in range(member.shape[1]):
    rows = np.flatnonzero(member[:, g])
    if len(rows) * filters.shape[1] <= k:
      values = {key: np.nan for key in out}
    else:
      values = misalignments(np.mean(cov_x[rows], 0), np.concatenate(filters[rows]), k, baseline)
    for key in out:
      out[key].append(values[key])
  return {key: np.array(v) for key, v in out.items()}


def alignment_stats(cov_x, kernels, initial_kernels, member, requested_k, seed):
  """Per-model and per-group misalignment of trained filters and of their updates.

  Args:
    cov_x: (N, d, d) each model's patch covariance.
    kernels, initial_kernels: (N, 3, 3, C, m) each model's trained and initial kernel.
    member: (N, G) group membership.
    requested_k: ``lenses.alignment_components`` (None: the default rule, applied
      to one model's m filters and to the smallest group's pooled filters).
    seed: of the random-basis baseline.

  Returns:
    (per_model, per_group, settings): per model (N,) and per group (G,)
    ``misalignment``, ``misalignment_random_basis``, ``update_misalignment``,
    ``update_misalignment_random_basis``; the k used for each.
  """
  filters = np.stack([filter_matrix(w) for w in kernels])
  updates = filters - np.stack([filter_matrix(w) for w in initial_kernels])
  num_models, m, dim = filters.shape
  baseline = random_basis(dim, seed)
  k = num_components(requested_k, dim, m)
  sizes = np.asarray(member).sum(0)
  pooled = int(m * max(1, sizes[sizes > 0].min() if np.any(sizes > 0) else 1))
  k_group = k if requested_k is not None else num_components(None, dim, pooled)
  per_model, per_group = {}, {}
  for prefix, w in (('', filters), ('update_', updates)):
    rows = [misalignments(cov_x[n], w[n], k, baseline) for n in range(num_models)]
    groups = group_misalignment(cov_x, w, member, k_group, baseline)
    for key in rows[0]:
      per_model[prefix + key] = np.array([r[key] for r in rows])
      per_group[prefix + key] = groups[key]
  return per_model, per_group, {'components': k, 'group_components': k_group,
                                'patch_dim': dim, 'filters': m}
