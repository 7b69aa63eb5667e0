"""Test-set variance of accuracy and its split into independent-error and
distribution-wise parts (Jordan 2024, "On the variance of neural network training with
respect to test sets and distributions", Sec. 3), per group of models, with
chi-squared intervals for both stds.

Example:
  >>> stats = variance_stats(acc, acc_even, acc_odd, member, group_correct)  # doctest: +SKIP
  >>> stats['distribution_std']                                               # doctest: +SKIP
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as scipy_stats

# Contractions that sum accuracies or counts run at full float32 precision: at
# default precision GPUs round the operands to TF32 (10-bit mantissa), which
# moves accuracies in their third digit.
HIGHEST = jax.lax.Precision.HIGHEST
CI_LEVEL = 0.95


def _nan_below_two(x, group_size):
  return jnp.where(group_size >= 2, x, jnp.nan)


def _group_sum(x, member):
  return jnp.matmul(x, member, precision=HIGHEST)


def group_mean_var(x, member):
  """Mean and ddof=1 variance of per-model values x (N,) within each group."""
  size = member.sum(0)
  mean = _group_sum(x, member) / size
  var = jnp.sum(member * (x[:, None] - mean) ** 2, axis=0) / (size - 1)
  return mean, _nan_below_two(var, size)


def group_corr(x, y, member):
  """Pearson correlation over each group's models of x and y (N,)."""
  size = member.sum(0)
  dx = x[:, None] - _group_sum(x, member) / size
  dy = y[:, None] - _group_sum(y, member) / size
  cov = jnp.sum(member * dx * dy, axis=0)
  return _nan_below_two(cov / jnp.sqrt(jnp.sum(member * dx ** 2, 0) * jnp.sum(member * dy ** 2, 0)),
                        size)


def chi2_table(max_df, level=CI_LEVEL):
  """(max_df + 1, 2) float32: the chi-squared quantiles (1-level)/2 and (1+level)/2 for
  df = 0..max_df (row 0 is NaN). Made on the host at ``init``: the device-side
  finalize then only indexes it."""
  df = np.arange(max_df + 1, dtype=np.float64)
  tail = (1 - level) / 2
  with np.errstate(invalid='ignore'):
    table = np.stack([scipy_stats.chi2.ppf(tail, df), scipy_stats.chi2.ppf(1 - tail, df)], -1)
  table[0] = np.nan
  return table.astype(np.float32)


def variance_interval(var, group_size, table):
  """Exact interval of a normal population's variance from its ddof=1 sample variance.

  (m - 1) s^2 / sigma^2 ~ chi^2(m - 1) for m normal draws, so sigma^2 lies in
  [(m-1) s^2 / q_hi, (m-1) s^2 / q_lo] with the table's level. Returns (..., 2).
  """
  df = group_size - 1
  q = table[jnp.clip(df.astype(jnp.int32), 0, table.shape[0] - 1)]        # (..., 2)
  scaled = (df * var)[..., None]
  return _nan_below_two(scaled / q[..., ::-1], group_size[..., None])


def std_interval(var, group_size, table):
  """chi-squared interval of each group's std_accuracy, shape (G, 2).

  Assumes the group's accuracies are normal draws (sums of many per-example
  outcomes; the interval is exact then). A percentile bootstrap over 8-64
  models undercovers; this interval keeps its nominal level at any size.

  Example:
    >>> std_interval(var, size, chi2_table(16))   # doctest: +SKIP
  """
  return jnp.sqrt(variance_interval(var, group_size, table))


def distribution_std_interval(var, independent_var, group_size, num_examples, table):
  """Interval of each group's distribution-wise std, shape (G, 2).

  Method: the chi-squared interval of the variance of accuracy over models
  (``variance_interval``), shifted by the variance independent errors
  predict and rescaled as the point estimate is (Eq. 3):
  sigma_D^2 in n/(n-1) * ([(m-1) s^2 / q_hi, (m-1) s^2 / q_lo] - V_ind),
  clamped at 0 before the root. It assumes normal accuracies (as
  ``std_interval``) and takes V_ind as known: V_ind averages n per-example
  variances, so its own error is far below that of s^2 (relative
  ~ 1/sqrt(n m) against sqrt(2 / (m-1))). It conditions on the test set: the
  spread of sigma_D^2 between test sets of n examples, O(1/n), is left out.
  Coverage by simulation with a planted distribution-wise std:
  tests/analysis_test.py.
  """
  n = num_examples
  interval = n / (n - 1) * (variance_interval(var, group_size, table)
                            - independent_var[..., None])
  return jnp.sqrt(jnp.maximum(interval, 0))


def variance_stats(acc, acc_even, acc_odd, member, group_correct, table):
  """Per-group accuracy spread and its decomposition.

  Args:
    acc, acc_even, acc_odd: (N,) per-model accuracies on all / even-id / odd-id examples.
    member: (N, G) one-hot groups.
    group_correct: (G, n) number of each group's models correct on each example.
    table: ``chi2_table`` for at least the largest group.

  Returns:
    Dict of (G,) arrays, the (G, 2) intervals ``std_accuracy_ci`` and
    ``distribution_std_ci``, and ``example_accuracy`` (G, n).

  Example:
    >>> variance_stats(acc, acc_e, acc_o, member, group_correct, table)['independence_ratio']  # doctest: +SKIP
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
      'std_accuracy_ci': std_interval(var, size, table),
      'independent_std': jnp.sqrt(independent_var),
      'independence_ratio': var / independent_var,
      'distribution_var': distribution_var,
      'distribution_std': jnp.sqrt(jnp.maximum(distribution_var, 0)),
      'distribution_std_ci': distribution_std_interval(var, independent_var, size, n, table),
      'split_half_corr': group_corr(acc_even, acc_odd, member),
      'mean_error': 1 - mean,
      'example_accuracy': p,
  }


def calibrated_binary_std(mean_error, std_accuracy, group_size, n, level=CI_LEVEL):
  """Theorem 3 of the variance study for two classes: the test-set std that
  class-calibrated binary classifiers with independent errors have, predicted
  from their mean error alone, sqrt(err / (2n)), with an interval.

  Calibration makes each example's correctness variance p_i (1 - p_i) average
  err / 2 over examples (a random run errs on x with probability 2 q (1 - q)
  when P(y = 1 | vote fraction q) = q), so the independent-error variance is
  err / (2n); distribution-wise variance adds on top (Theorem 3). The interval
  propagates the normal interval of the mean error over the group's models.

  Returns ((G,) std, (G, 2) interval).

  Example:
    >>> calibrated_binary_std(jnp.array([0.2]), jnp.array([0.01]), jnp.array([16.]), 2000)  # doctest: +SKIP
  """
  z = float(scipy_stats.norm.ppf(0.5 + level / 2))
  half = z * std_accuracy / jnp.sqrt(group_size)
  predict = lambda err: jnp.sqrt(jnp.clip(err, 0, 1) / (2 * n))
  interval = jnp.stack([predict(mean_error - half), predict(mean_error + half)], -1)
  return predict(mean_error), _nan_below_two(interval, group_size[:, None])
