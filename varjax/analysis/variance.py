"""Test-set variance of accuracy and its split into independent-error and
distribution-wise parts (Jordan 2024, "On the variance of neural network training with
respect to test sets and distributions", Sec. 3), per group of models, with
chi-squared intervals for both stds, a kurtosis-adjusted one for the std
beside the accuracies' skewness and kurtosis, and, for two classes,
Theorem 3's formulas beside a check of their calibration premise.

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


def group_skew_kurtosis(x, member):
  """Sample skewness and excess kurtosis of per-model values x (N,) within each group.

  The estimators that are unbiased for normal samples (scipy.stats.skew and
  kurtosis with bias=False): G1 = sqrt(m (m-1)) / (m-2) * m3 / m2^1.5 and
  G2 = (m-1) / ((m-2)(m-3)) * ((m+1) (m4 / m2^2 - 3) + 6), m_k the central
  moments with divisor m. NaN below 3 (skewness) and 4 (kurtosis) models and
  for a group whose values are all equal. Returns ((G,), (G,)).

  Example:
    >>> skew, kurt = group_skew_kurtosis(acc, member)   # doctest: +SKIP
  """
  size = member.sum(0)
  deviation = x[:, None] - _group_sum(x, member) / size
  moment = lambda k: jnp.sum(member * deviation ** k, axis=0) / size
  m2, m3, m4 = moment(2), moment(3), moment(4)
  skew = jnp.sqrt(size * (size - 1)) / (size - 2) * m3 / m2 ** 1.5
  kurt = (size - 1) / ((size - 2) * (size - 3)) * ((size + 1) * (m4 / m2 ** 2 - 3) + 6)
  return jnp.where(size >= 3, skew, jnp.nan), jnp.where(size >= 4, kurt, jnp.nan)


def bonett_std_interval(x, member, level=CI_LEVEL):
  """Bonett's (2006) kurtosis-adjusted interval of each group's std, shape (G, 2).

  Why this one: the chi-squared interval (``std_interval``) is exact for
  normal accuracies but its width ignores the kurtosis, on which the
  variance of s^2 depends, Var(s^2) ~ sigma^4 (gamma_4 - (m-3)/(m-1)) / m;
  short or high-learning-rate training gives skewed, heavy-tailed
  accuracies and the chi-squared interval then undercovers at any m.
  Bonett's interval estimates the kurtosis and works on log s^2 (whose
  sampling distribution is nearer normal), in closed form, so it runs on the
  device as the rest of finalize; a bootstrap-t would need resampling on the
  device, and at 8-16 models its studentisation rests on the same sample
  kurtosis. At nominal 95% (tests/laws_test.py, 20,000 draws a cell) it
  covers 94-97% for normal accuracies and 87-95% for a log-normal tail of
  bad runs, a 10% mixture of failed runs and t(5) accuracies at 8, 16 and 64
  seeds, where chi-squared covers 73-88%: better, not exact (the sample
  kurtosis of a few skewed draws runs low).

  With z the normal quantile, c = m / (m - z) (Bonett's small-sample
  adjustment), gamma_4 = m sum (x - t)^4 / (sum (x - mean)^2)^2 where t is
  the mean trimmed by floor(m / (2 sqrt(m - 4))) values at each end:
  se = c sqrt((gamma_4 - (m-3)/m) / (m-1)) and sigma^2 lies in
  c s^2 exp(-+ z se). NaN below 5 models (the trim is undefined).

  Example:
    >>> bonett_std_interval(acc, member)   # (G, 2)   # doctest: +SKIP
  """
  z = _z(level)
  size = member.sum(0)
  mean, var = group_mean_var(x, member)
  # Each group's values first in its column, ascending; the other models after.
  ordered = jnp.sort(jnp.where(member > 0, x[:, None], jnp.inf), axis=0)
  cut = jnp.floor(size / (2 * jnp.sqrt(jnp.maximum(size - 4, 1))))
  rank = jnp.arange(x.shape[0])[:, None]
  kept = (rank >= cut) & (rank < size - cut)
  trimmed = jnp.sum(jnp.where(kept, ordered, 0), axis=0) / (size - 2 * cut)
  fourth = jnp.sum(member * (x[:, None] - trimmed) ** 4, axis=0)
  square = jnp.sum(member * (x[:, None] - mean) ** 2, axis=0)
  gamma4 = size * fourth / square ** 2
  c = size / (size - z)
  se = c * jnp.sqrt((gamma4 - (size - 3) / size) / (size - 1))
  interval = jnp.sqrt(c * var)[:, None] * jnp.exp(jnp.stack([-z * se, z * se], -1) / 2)
  return jnp.where((size >= 5)[:, None], interval, jnp.nan)


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
  models undercovers; this interval keeps its nominal level at any size for
  normal accuracies, but not for skewed or heavy-tailed ones (73-88% at
  nominal 95% for a log-normal tail of bad runs or t(5) accuracies,
  tests/laws_test.py): ``bonett_std_interval`` is the kurtosis-adjusted one.

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
    Dict of (G,) arrays, the (G, 2) intervals ``std_accuracy_ci`` (chi-squared),
    ``std_accuracy_ci_bonett`` (kurtosis-adjusted) and ``distribution_std_ci``,
    and ``example_accuracy`` (G, n). ``accuracy_skewness`` and
    ``accuracy_excess_kurtosis`` say how far the accuracies are from normal,
    the chi-squared interval's premise.

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
  skew, kurt = group_skew_kurtosis(acc, member)
  return {
      'num_models': size.astype(jnp.int32),
      'mean_accuracy': mean,
      'std_accuracy': jnp.sqrt(var),
      'std_accuracy_ci': std_interval(var, size, table),
      'std_accuracy_ci_bonett': bonett_std_interval(acc, member),
      'accuracy_skewness': skew,
      'accuracy_excess_kurtosis': kurt,
      'independent_std': jnp.sqrt(independent_var),
      'independence_ratio': var / independent_var,
      'distribution_var': distribution_var,
      'distribution_std': jnp.sqrt(jnp.maximum(distribution_var, 0)),
      'distribution_std_ci': distribution_std_interval(var, independent_var, size, n, table),
      'split_half_corr': group_corr(acc_even, acc_odd, member),
      'mean_error': 1 - mean,
      'example_accuracy': p,
  }


def _z(level):
  """The two-sided standard normal quantile of ``level`` (host, at trace time)."""
  return float(scipy_stats.norm.ppf(0.5 + level / 2))


def mean_error_se(group_correct, group_size, distribution_var):
  """Standard error of each group's mean error as an estimate of the
  distribution's error (test set and models both resampled), shape (G,).

  err = mean_i (1 - p_i) over the n test examples: for iid examples whose
  per-example model noise is independent across examples its variance is
  Var_i(p_i) / n (test-set sampling plus that noise); a model-level shift of
  every example's correctness (the distribution-wise variance) adds
  Var_D / m (Var_D clamped at 0). At CIFAR sizes the test-set part dominates:
  Var_i(p_i) / n ~ err (1 - err) / n against s^2 / m.

  Example:
    >>> mean_error_se(group_correct, size, stats['distribution_var'])  # doctest: +SKIP
  """
  n = group_correct.shape[1]
  p = group_correct / group_size[:, None]
  var = jnp.var(p, axis=1, ddof=1) / n + jnp.maximum(distribution_var, 0) / group_size
  return _nan_below_two(jnp.sqrt(var), group_size)


def _error_interval(mean_error, error_se, level):
  half = _z(level) * error_se
  return mean_error - half, mean_error + half


def calibrated_binary_std(mean_error, error_se, group_size, n, level=CI_LEVEL):
  """Eq. 6 of the variance study (its Theorem 3 without the distribution-wise
  term) for two classes: the test-set std sqrt(err / (2n)) predicted from the
  mean error alone, with an interval.

  The premise is class-wise calibration of the ensemble, not independent
  errors: a random run errs on x with probability 2 q (1 - q) when
  P(y = 1 | vote fraction q) = q, so each example's correctness variance
  p_i (1 - p_i) = q (1 - q) averages err / 2 over examples and the
  independent-error variance is err / (2n) (``binary_premise_ratio`` checks
  this step). Eq. 6 also drops the distribution-wise variance, which
  Theorem 3 adds (``calibrated_binary_full_std``). The interval is the
  normal interval of the distribution's error (``mean_error_se``: the
  theorem is about the expectation over test sets, so the test set's own
  sampling is in it) carried through the root.

  Returns ((G,) std, (G, 2) interval).

  Example:
    >>> calibrated_binary_std(jnp.array([0.2]), jnp.array([0.004]), jnp.array([16.]), 2000)  # doctest: +SKIP
  """
  low, high = _error_interval(mean_error, error_se, level)
  predict = lambda err: jnp.sqrt(jnp.clip(err, 0, 1) / (2 * n))
  interval = jnp.stack([predict(low), predict(high)], -1)
  return predict(mean_error), _nan_below_two(interval, group_size[:, None])


def calibrated_binary_full_std(mean_error, error_se, var, independent_var, group_size, n, table,
                               level=CI_LEVEL):
  """Theorem 3 (Eq. 5) of the variance study for two classes, with the measured
  distribution-wise variance: sqrt(err / (2n) + (1 - 1/n) Var_D), and an interval.

  Var_D is Eq. 3's unbiased estimate, n/(n-1) (s^2 - V_ind); it is clamped at
  0 before the root (a negative estimate means "none measurable"). Note what
  this prediction can and cannot say: (1 - 1/n) Var_D = s^2 - V_ind, so its
  square is s^2 - (V_ind - err/(2n)). Wherever Var_D >= 0 it differs from the
  observed variance exactly by the calibration premise's gap, which
  ``binary_premise_ratio`` measures with its uncertainty; beside the observed
  std it is a check of that premise, not an independent forecast.

  Interval: the ends of the chi-squared interval of s^2 (``variance_interval``,
  normal accuracies) carried through Var_D as ``distribution_std_interval``
  does (V_ind taken as known), together with the matching ends of the error's
  normal interval (``mean_error_se``); each end clamped at 0 before the root.
  Coverage of a planted Theorem-3 variance: tests/laws_test.py.

  Args:
    mean_error, error_se, var, independent_var, group_size: (G,) the group's
      mean error and its ``mean_error_se``, ddof=1 variance of accuracy, V_ind
      and number of models.
    n: test examples. table: ``chi2_table``.

  Returns ((G,) std, (G, 2) interval).

  Example:
    >>> calibrated_binary_full_std(err, err_se, std ** 2, ind_std ** 2, size, n, table)  # doctest: +SKIP
  """
  # (1 - 1/n) Var_D = (1 - 1/n) n/(n-1) (v - V_ind) = v - V_ind.
  predict = lambda err, v: jnp.sqrt(jnp.clip(err, 0, 1) / (2 * n)
                                    + jnp.maximum(v - independent_var, 0))
  low, high = _error_interval(mean_error, error_se, level)
  var_ci = variance_interval(var, group_size, table)
  interval = jnp.stack([predict(low, var_ci[..., 0]), predict(high, var_ci[..., 1])], -1)
  return (_nan_below_two(predict(mean_error, var), group_size),
          _nan_below_two(interval, group_size[:, None]))


def binary_premise_ratio(group_correct, group_size, distribution_var, level=CI_LEVEL):
  """The premise of Theorem 3 for two classes: V_ind / (err / (2n)), 1 under
  class-wise calibration, with a delta-method interval.

  With a_i = 2 m/(m-1) p_i (1 - p_i) (twice the unbiased per-example variance
  over the group's m models) and b_i = 1 - p_i, the ratio is
  R = mean_i a_i / mean_i b_i (its numerator and denominator are V_ind and
  err/(2n), both times 2n^2/n). Calibration (P(y = 1 | q) = q) makes
  E_x[p (1 - p)] = err / 2, so R's population value is 1; overconfident
  ensembles (runs agree more than the labels warrant) give R < 1, and
  underconfident ones R > 1.

  Standard error, two parts (linearising R - R_0 ~ mean_i g_i / mean_i b_i,
  g_i = a_i - R b_i):
  - examples: for iid test examples and per-example model noise that is
    independent across examples, the ratio-of-means variance
    Var_i(g_i) / n;
  - models: a model-level shift d_m of every example's correctness (the
    distribution-wise variance) moves all p_i together by mean_m d_m, of
    variance Var_D / m; g moves by mean_i g'_i times that, with
    g'_i = 2 m/(m-1) (1 - 2 p_i) + R. Var_D is Eq. 3's estimate clamped at 0;
    this part takes the examples' pairwise covariances as equal (their mean
    is Var_D), an approximation.
  se = sqrt(Var_i(g) / n + (mean g')^2 Var_D / m) / mean_i b_i; the interval
  is R +- z se, clamped at 0. It targets the population ratio (test set and
  models both resampled). Coverage by simulation, calibrated and not, with a
  planted distribution-wise variance: tests/laws_test.py.

  Args:
    group_correct: (G, n) models of each group correct on each example.
    group_size: (G,) models per group. distribution_var: (G,) Eq. 3's estimate.

  Returns ((G,) ratio, (G, 2) interval); NaN for groups of fewer than two.

  Example:
    >>> ratio, ci = binary_premise_ratio(group_correct, size, stats['distribution_var'])  # doctest: +SKIP
  """
  n = group_correct.shape[1]
  m = group_size[:, None]
  p = group_correct / m
  unbias = m / (m - 1)
  a = 2 * unbias * p * (1 - p)
  b = 1 - p
  b_mean = jnp.mean(b, 1)
  ratio = jnp.mean(a, 1) / b_mean
  g = a - ratio[:, None] * b
  slope = jnp.mean(2 * unbias * (1 - 2 * p) + ratio[:, None], 1)
  var_mean_g = (jnp.var(g, axis=1, ddof=1) / n
                + slope ** 2 * jnp.maximum(distribution_var, 0) / group_size)
  half = _z(level) * jnp.sqrt(var_mean_g) / b_mean
  interval = jnp.stack([jnp.maximum(ratio - half, 0), ratio + half], -1)
  return _nan_below_two(ratio, group_size), _nan_below_two(interval, group_size[:, None])


def binary_law_stats(spread, group_correct, n, table, level=CI_LEVEL):
  """Theorem 3's formulas and its premise for a two-class group, from
  ``variance_stats``' results: ``calibrated_binary_std`` (Eq. 6) and
  ``calibrated_binary_full_std`` (Eq. 5 with the measured Var_D), each with a
  (G, 2) ``_ci``, and ``binary_premise_ratio`` with its ``_ci``.

  Example:
    >>> binary_law_stats(variance_stats(...), group_correct, n, table)['binary_premise_ratio']  # doctest: +SKIP
  """
  size = spread['num_models'].astype(jnp.float32)
  var, independent_var = spread['std_accuracy'] ** 2, spread['independent_std'] ** 2
  error_se = mean_error_se(group_correct, size, spread['distribution_var'])
  out = {}
  out['calibrated_binary_std'], out['calibrated_binary_std_ci'] = calibrated_binary_std(
      spread['mean_error'], error_se, size, n, level)
  out['calibrated_binary_full_std'], out['calibrated_binary_full_std_ci'] = (
      calibrated_binary_full_std(spread['mean_error'], error_se, var, independent_var, size, n,
                                 table, level))
  out['binary_premise_ratio'], out['binary_premise_ratio_ci'] = binary_premise_ratio(
      group_correct, size, spread['distribution_var'], level)
  return out
