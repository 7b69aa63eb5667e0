"""alpha-trimming level of each model against the rest of its group.

Banerjee et al. 2024: the smallest contamination level alpha such that a model's
distribution of true-class margins lies within Kolmogorov distance delta of some
alpha-trimming of the reference distribution (the average of the other group
members' empirical CDFs), averaged over bootstrap resamples of the test set.

An alpha-trimming H of a reference CDF G keeps at most 1/(1-alpha) times G's mass
at every point, so g = H - G/(1-alpha) is non-increasing from 0 to
-alpha/(1-alpha). The distance to the trimming set is then an L-infinity
isotonic fit of a = F - G/(1-alpha) with box constraints, which has a closed
form from a running minimum (no search over H).

Example:
  >>> levels = alpha_trim_levels(margin, member, jnp.arange(10) * 0.05, weights)  # doctest: +SKIP
"""

import jax
import jax.numpy as jnp

EPSILON = 0.01
# A resample in which no grid level passes: alpha beyond the grid. Infinite so
# that it can never be averaged in as a level; finalize counts these apart.
BEYOND_GRID = float('inf')


def kolmogorov_tolerance(num_examples):
  """delta = sqrt(ln(2/eps)/n) + 1/n with eps = 0.01, as Banerjee et al. (2024) define it.

  This is sqrt(2) looser than the one-sample DKW bound sqrt(ln(2/eps)/(2n))
  (P(sup |F_n - F| > t) <= 2 exp(-2 n t^2)); kept as the paper defines it, so
  levels compare with its figures. The 1/n allows for one atom.
  """
  return jnp.sqrt(jnp.log(2 / EPSILON) / num_examples) + 1 / num_examples


def trimmed_ks_distance(f_left, f_right, g_left, g_right, alphas):
  """Kolmogorov distance from CDF F to the alpha-trimmings of CDF G.

  Args:
    f_left, f_right: F's left limits and values at increasing points t_1..t_L
      that include every jump of F and G, shape (..., L).
    g_left, g_right: the same for G.
    alphas: trimming levels (A,).

  Returns:
    (A, ...) distances; alpha = 0 is the plain Kolmogorov distance.

  Example:
    >>> trimmed_ks_distance(f_l, f_r, g_l, g_r, jnp.array([0., 0.1]))  # doctest: +SKIP
  """
  scale = 1 / (1 - alphas.reshape((-1,) + (1,) * f_left.ndim))
  lo = 1 - scale                                   # g's value at +infinity
  left = f_left - g_left * scale
  right = f_right - g_right * scale
  a = jnp.stack([left, right], axis=-1).reshape(left.shape[:-1] + (-1,))
  a = jnp.concatenate([a, jnp.broadcast_to(lo, a.shape[:-1] + (1,))], axis=-1)
  # Non-increasing g needs a_j - d <= g_j <= g_i <= a_i + d for i <= j.
  violation = jnp.max(a - jax.lax.cummin(a, axis=a.ndim - 1), axis=-1) / 2
  above = jnp.max(a, axis=-1)                      # g <= 0
  below = jnp.max(lo - a, axis=-1)                 # g >= -alpha/(1-alpha)
  return jnp.maximum(jnp.maximum(violation, 0), jnp.maximum(above, below))


def _cumsum0(x, axis=-1):
  """Counts of the first j elements for j = 0..L (leading zero)."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 0)
  return jnp.pad(jnp.cumsum(x, axis=axis), pad)


def alpha_trim_levels(margin, member, alpha_grid, weights):
  """Per-resample alpha-trimming level of every model, shape (B, N).

  Args:
    margin: (N, n) true-class margins.
    member: (N, G) one-hot group membership.
    alpha_grid: (A,) increasing levels in [0, 0.5).
    weights: (B, n) int multiplicities of each example in each resample (sum n).

  Returns:
    The smallest grid level whose trimmed distance is <= delta, BEYOND_GRID
    (inf) if none is, NaN for models whose group has fewer than 2 members.

  Example:
    >>> w = jnp.ones((1, margin.shape[1]), jnp.int32)                   # doctest: +SKIP
    >>> alpha_trim_levels(margin, member, jnp.array([0., .1, .2]), w)   # doctest: +SKIP
  """
  num_models, n = margin.shape
  group = jnp.argmax(member, axis=1)
  group_size = member.sum(0)[group]                                      # (N,)
  order = jnp.argsort(margin, axis=1)
  own_sorted = jnp.take_along_axis(margin, order, axis=1)
  count_le = jax.vmap(lambda s: jnp.searchsorted(s, s, side='right'))(own_sorted)
  count_lt = jax.vmap(lambda s: jnp.searchsorted(s, s, side='left'))(own_sorted)

  # One pooled sort per group; other groups' values go to +inf, after every query.
  pooled = jnp.where(member.T[:, :, None] > 0, margin[None], jnp.inf).reshape(
      member.shape[1], -1)
  pooled_order = jnp.argsort(pooled, axis=1)
  pooled_sorted = jnp.take_along_axis(pooled, pooled_order, axis=1)
  pooled_example = pooled_order % n
  pooled_member = jnp.take_along_axis(member.T, pooled_order // n, axis=1).astype(jnp.int32)
  models = jnp.arange(num_models)
  search = lambda side: jax.vmap(lambda s: jnp.searchsorted(s, own_sorted, side=side))(
      pooled_sorted)[group, models]                                      # (N, n)
  pool_le, pool_lt = search('right'), search('left')

  delta = kolmogorov_tolerance(n)
  ref_size = jnp.maximum(group_size - 1, 1)[:, None] * n

  def one_resample(w):
    own_cum = _cumsum0(w[order])                                         # (N, n+1)
    pool_cum = _cumsum0(w[pooled_example] * pooled_member)               # (G, N*n+1)
    take = lambda c, i: jnp.take_along_axis(c, i, axis=1)
    f_r, f_l = take(own_cum, count_le), take(own_cum, count_lt)
    g_r = (pool_cum[group[:, None], pool_le] - f_r) / ref_size
    g_l = (pool_cum[group[:, None], pool_lt] - f_l) / ref_size
    dist = trimmed_ks_distance(f_l / n, f_r / n, g_l, g_r, alpha_grid)   # (A, N)
    passed = dist <= delta
    level = jnp.where(passed.any(0), alpha_grid[jnp.argmax(passed, axis=0)], BEYOND_GRID)
    return jnp.where((group_size >= 2) & (member.sum(1) > 0), level, jnp.nan)

  return jax.lax.map(one_resample, weights)


def bootstrap_weights(key, n):
  """Multiplicities of n examples drawn with replacement."""
  draws = jax.random.randint(key, (n,), 0, n)
  return jnp.zeros((n,), jnp.int32).at[draws].add(1)
