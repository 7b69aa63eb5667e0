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

The top-k form is a weaker condition than the paper's full-rank M: M_k = 0
exactly when the v_i (i <= k) are orthogonal under Sigma_w (A diagonal), which
constrains only Sigma_w's compression to the span of the top k components; a
Sigma_w that couples a top-k direction with one outside the span (so that v_i
is no eigenvector of it) can still score 0.

One model's filters are few samples (16 at the CPU widths), so M of one model
is mostly sampling noise. An ensemble has many: ``group_misalignment`` pools
the filters of a group's models as samples of one filter distribution (and
averages their data covariances), which is what Maennel et al.'s random-vector
view of the weights asks for.

The null (``misalignment_null``): even perfectly aligned filters score above
0, from sampling noise alone. M along a basis does not change when each basis
direction is rescaled (A_ii (A^-1)_ii is invariant under A -> D A D for
diagonal D), so for Gaussian filters whose covariance is aligned with the
basis, M's distribution is that of isotropic ones: it depends only on k and
the sample covariance's degrees of freedom (filters - 1 for np.cov of one
model's filters). Its mean is exact (a Wishart identity, see the function);
its 95% quantile is simulated with a fixed seed. Values: 16 filters, k = 8:
mean 3.52, 95% 6.2; 256 filters, k = 128: mean 53.2. A measured M near the
null's mean says "as aligned as sampling allows", not "misaligned by M".

Pooling at narrow widths: every model's first trained conv starts from the
same "dirac" init (its first filters are identity maps; at the CPU widths all
of them), so the group's filters cluster by filter index rather than being
draws from one distribution, and the pooled covariance mixes the between-index
spread (shared by all models) with the within-index one. ``centre=True``
subtracts each filter index's mean over the group's models before pooling:
what is left is the models' spread around their common per-index filter, with
m (models - 1) degrees of freedom (one per index goes to its mean) in place of
m models - 1. Both variants are reported, each beside its own null.

Everything here is float64 NumPy on host arrays.

Example:
  >>> float(misalignment(np.diag([1., 4.]), np.eye(2)))   # aligned
  0.0
"""

import functools

import numpy as np
from scipy import special
from scipy.linalg import lapack

NULL_LEVEL = 0.95


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


def null_mean(dof, k):
  """Exact mean of M_k for a Wishart(I_k, dof) sample covariance (aligned Gaussian filters).

  Each term: A_ii (A^-1)_ii = 1 / (1 - R_i^2), R_i^2 the squared multiple
  correlation of coordinate i on the other k - 1; for W ~ Wishart(I, dof),
  1 - R_i^2 = chi2(dof - k + 1) / (chi2(dof - k + 1) + chi2(k - 1)) (independent
  chi-squares) ~ Beta(a, b), a = (dof - k + 1)/2, b = (k - 1)/2, and
  E[X^(-1/2)] = B(a - 1/2, b) / B(a, b). So E[M] = k (B(a - 1/2, b) / B(a, b) - 1):
  infinite at dof = k, undefined (NaN) below, 0 for k = 1.

  Example:
    >>> round(null_mean(15, 8), 2)      # 16 filters (np.cov: 15 dof), k = 8
    3.52
  """
  if dof < k:
    return float('nan')
  if k == 1:
    return 0.0
  a, b = (dof - k + 1) / 2, (k - 1) / 2
  if a <= 0.5:
    return float('inf')
  log_ratio = (special.gammaln(a - 0.5) - special.gammaln(a)
               + special.gammaln(a + b) - special.gammaln(a + b - 0.5))
  return float(k * (np.exp(log_ratio) - 1))


def null_draws(dof, k, draws, seed):
  """``draws`` values of M_k for Wishart(I_k, dof) sample covariances (Bartlett's
  decomposition: A = L L', L lower triangular, L_ii^2 ~ chi2(dof - i),
  L_ij ~ N(0, 1) below the diagonal; the cost does not grow with dof)."""
  rng = np.random.default_rng([seed, dof, k])
  rows, cols = np.tril_indices(k, -1)
  out = []
  chunk = max(1, 2 ** 21 // (k * k))  # ~16 MB of matrices at a time
  for start in range(0, draws, chunk):
    size = min(chunk, draws - start)
    lower = np.zeros((size, k, k))
    lower[:, np.arange(k), np.arange(k)] = np.sqrt(rng.chisquare(dof - np.arange(k), (size, k)))
    lower[:, rows, cols] = rng.normal(size=(size, rows.size))
    # LAPACK's triangular inverse, one matrix at a time: NumPy's batched inv
    # (an LU per matrix) was ~50x slower at k = 128 on the 2-core machine.
    inverse = np.stack([lapack.dtrtri(a, lower=1)[0] for a in lower])
    # diag(A) = row norms of L; diag(A^-1) = diag(L^-T L^-1) = column norms of L^-1.
    out.append(np.sum(np.sqrt(np.sum(lower ** 2, 2) * np.sum(inverse ** 2, 1)) - 1, 1))
  return np.concatenate(out)


def null_draw_count(k):
  """Draws for the null's quantile: 20,000 where they are cheap, down to 1,000 at
  k >= 74 (each costs ~k^3; the quantile's MC error at 1,000 is ~0.1 of M's std)."""
  return int(np.clip(4e8 / k ** 3, 1000, 20000))


@functools.lru_cache(maxsize=64)
def misalignment_null(dof, k, draws=None, seed=0, level=NULL_LEVEL):
  """(mean, upper quantile) of M_k for perfectly aligned Gaussian filters whose
  sample covariance has ``dof`` degrees of freedom (m filters, mean removed as
  np.cov does: m - 1; ``centre``d pooling of R models: m (R - 1)).

  The mean is exact (``null_mean``); the ``level`` quantile is simulated with
  a fixed seed (``null_draws``, ``null_draw_count`` draws unless given), so
  equal arguments give equal values. NaN for dof < k (A singular); the mean
  is infinite at dof = k (k = filters - 1, allowed for one model).

  Example:
    >>> mean, q95 = misalignment_null(15, 8)   # one model's 16 filters, k = 8
  """
  dof, k = int(dof), int(k)
  if dof < k or k < 1:
    return float('nan'), float('nan')
  if k == 1:
    return 0.0, 0.0
  draws = null_draw_count(k) if draws is None else draws
  return null_mean(dof, k), float(np.quantile(null_draws(dof, k, draws, seed), level))


def centred_pool(filters):
  """Filters (R, m, d) of R models pooled as (R m, d) after subtracting each
  filter index's mean over the models."""
  filters = np.asarray(filters, np.float64)
  return (filters - filters.mean(0)).reshape(-1, filters.shape[-1])


def group_misalignment(cov_x, filters, member, k, baseline, centre=False):
  """Per group: M of the pooled filters of its models against their mean data covariance.

  Args:
    cov_x: (N, d, d) each model's patch covariance.
    filters: (N, m, d) each model's filters (or filter updates).
    member: (N, G) group membership (zero rows: in no group).
    k: principal components (``num_components`` for the pooled filter count).
    baseline: a random orthonormal basis (d, d).
    centre: subtract each filter index's mean over the group's models first
      (``centred_pool``; groups of one model get NaN).

  Returns:
    (G,) ``misalignment`` and ``misalignment_random_basis`` (NaN for a group
    with too few filters for k) and (G, 2) ``misalignment_null`` (mean and
    95% quantile of either for aligned Gaussian filters of the same count).
  """
  member = np.asarray(member) > 0
  m = filters.shape[1]
  out = {'misalignment': [], 'misalignment_random_basis': [], 'misalignment_null': []}
  for g in range(member.shape[1]):
    rows = np.flatnonzero(member[:, g])
    dof = m * (len(rows) - 1) if centre else m * len(rows) - 1
    if dof < k or len(rows) == 0:
      values = {'misalignment': np.nan, 'misalignment_random_basis': np.nan}
    else:
      pooled = centred_pool(filters[rows]) if centre else np.concatenate(filters[rows])
      values = misalignments(np.mean(cov_x[rows], 0), pooled, k, baseline)
    values['misalignment_null'] = misalignment_null(dof, k) if len(rows) else (np.nan, np.nan)
    for key in out:
      out[key].append(values[key])
  return {key: np.array(v, np.float64) for key, v in out.items()}


def alignment_stats(cov_x, kernels, initial_kernels, member, requested_k, seed):
  """Per-model and per-group misalignment of trained filters and of their updates.

  Args:
    cov_x: (N, d, d) each model's patch covariance.
    kernels, initial_kernels: (N, 3, 3, C, m) each model's trained and initial kernel.
    member: (N, G) group membership.
    requested_k: ``lenses.alignment_components`` (None: the default rule, applied
      to one model's m filters, to the smallest group's pooled filters, and to
      the smallest group of two or more's centred ones).
    seed: of the random-basis baseline.

  Returns:
    (per_model, per_group, settings): per model (N,) ``misalignment``,
    ``misalignment_random_basis``, ``update_misalignment``,
    ``update_misalignment_random_basis``; per group (G,) the same, pooled,
    and (prefix ``centred_``) pooled after centring each filter index over
    the group's models, each family with its (G, 2) ``..._null`` (mean and
    95% quantile for aligned Gaussian filters of that count and k; the
    filters' and the updates' are equal, as are the data and random bases').
    The per-model nulls are one pair for all models (m filters at k): in
    settings, ``misalignment_null`` and ``update_misalignment_null``, beside
    the k used for each (``components``, ``group_components``,
    ``group_centred_components``).
  """
  filters = np.stack([filter_matrix(w) for w in kernels])
  updates = filters - np.stack([filter_matrix(w) for w in initial_kernels])
  num_models, m, dim = filters.shape
  baseline = random_basis(dim, seed)
  k = num_components(requested_k, dim, m)
  sizes = np.asarray(member).sum(0)
  pooled = int(m * max(1, sizes[sizes > 0].min() if np.any(sizes > 0) else 1))
  k_group = k if requested_k is not None else num_components(None, dim, pooled)
  # Centring leaves m (R - 1) degrees of freedom: the default k follows that count.
  several = sizes[sizes >= 2]
  k_centred = (k if requested_k is not None or not several.size
               else num_components(None, dim, int(m * (several.min() - 1)) + 1))
  null = [float(v) for v in misalignment_null(m - 1, k)]
  per_model, per_group = {}, {}
  settings = {'components': k, 'group_components': k_group,
              'group_centred_components': k_centred, 'patch_dim': dim, 'filters': m}
  for prefix, w in (('', filters), ('update_', updates)):
    rows = [misalignments(cov_x[n], w[n], k, baseline) for n in range(num_models)]
    for key in rows[0]:
      per_model[prefix + key] = np.array([r[key] for r in rows])
    settings[prefix + 'misalignment_null'] = null
    for centre, k_used in ((False, k_group), (True, k_centred)):
      groups = group_misalignment(cov_x, w, member, k_used, baseline, centre=centre)
      for key, v in groups.items():
        per_group[prefix + ('centred_' if centre else '') + key] = v
  return per_model, per_group, settings
