"""Test-set variance of accuracy and its split into independent-error and
distribution-wise parts (Jordan 2024, SPEC §2), per group of models.

Example:
  >>> stats = variance_stats(acc, acc_even, acc_odd, member, group_correct)  # doctest: +SKIP
  >>> stats['distribution_std']                                               # doctest: +SKIP
"""

import jax
import jax.numpy as jnp


def _nan_below_two(x, group_size):
  return jnp.where(group_size >= 2, x, jnp.nan)


def group_mean_var(x, member):
  """Mean and ddof=1 variance of per-model values x (N,) within each group."""
  size = member.sum(0)
  mean = x @ member / size
  var = jnp.sum(member * (x[:, None] - mean) ** 2, axis=0) / (size - 1)
  return mean, _nan_below_two(var, size)


def group_corr(x, y, member):
  """Pearson correlation over each group's models of x and y (N,)."""
  size = member.sum(0)
  dx = x[:, None] - x @ member / size
  dy = y[:, None] - y @ member / size
  cov = jnp.sum(member * dx * dy, axis=0)
  return _nan_below_two(cov / jnp.sqrt(jnp.sum(member * dx ** 2, 0) * jnp.sum(member * dy ** 2, 0)),
                        size)


def variance_stats(acc, acc_even, acc_odd, member, group_correct):
  """Per-group accuracy spread and its decomposition.

  Args:
    acc, acc_even, acc_odd: (N,) per-model accuracies on all / even-id / odd-id examples.
    member: (N, G) one-hot groups.
    group_correct: (G, n) number of each group's models correct on each example.

  Returns:
    Dict of (G,) arrays plus ``example_accuracy`` (G, n).

  Example:
    >>> variance_stats(acc, acc_e, acc_o, member, group_correct)['independence_ratio']  # doctest: +SKIP
  """
  n = group_correct.shape[1]
  size = member.sum(0)
  mean, var = group_mean_var(acc, member)
  p = group_correct / size[:, None]
  # Unbiased per-example variance of correctness over the group's models.
  example_var = size[:, None] / (size[:, None] - 1) * p * (1 - p)
  independent_var = _nan_below_two(example_var.sum(1) / n ** 2, size)
  distribution_var = n / (n - 1) * (var - independent_var)
  return {
      'num_models': size.astype(jnp.int32),
      'mean_accuracy': mean,
      'std_accuracy': jnp.sqrt(var),
      'independent_std': jnp.sqrt(independent_var),
      'independence_ratio': var / independent_var,
      'distribution_var': distribution_var,
      'distribution_std': jnp.sqrt(jnp.maximum(distribution_var, 0)),
      'split_half_corr': group_corr(acc_even, acc_odd, member),
      'mean_error': 1 - mean,
      'example_accuracy': p,
  }


def std_accuracy_ci(acc, member, keys, level=0.95):
  """Percentile bootstrap interval of each group's std_accuracy, shape (G, 2).

  Models are resampled with replacement within their group, one resample per key.

  Example:
    >>> keys = jax.random.split(jax.random.key(0), 1000)   # doctest: +SKIP
    >>> std_accuracy_ci(acc, member, keys)                   # doctest: +SKIP
  """
  num_models = acc.shape[0]
  size = member.sum(0).astype(jnp.int32)
  slots = jnp.arange(num_models)

  def one_group(in_group, m):
    members_first = jnp.argsort(1 - in_group, stable=True)
    used = slots < m

    def one_resample(key):
      values = acc[members_first[jax.random.randint(key, (num_models,), 0, m)]]
      mean = jnp.sum(jnp.where(used, values, 0)) / m
      return jnp.sqrt(jnp.sum(jnp.where(used, (values - mean) ** 2, 0)) / (m - 1))

    stds = jax.lax.map(one_resample, keys)
    tail = (1 - level) / 2 * 100
    return _nan_below_two(jnp.percentile(stds, jnp.array([tail, 100 - tail])), m)

  return jax.vmap(one_group, in_axes=(1, 0))(member, size)
