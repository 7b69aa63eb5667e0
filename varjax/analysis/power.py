"""Seeds per arm that a comparison of two configurations needs (the practical side
of "variance impedes hyperparameter comparison", Jordan 2024).

Two arms of n seeds each, accuracies with the same std sigma per seed; a
two-sided z-test at level alpha detects a difference of means Delta with
probability ``power`` when
  n = ceil(2 (z_{1 - alpha/2} + z_{power})^2 sigma^2 / Delta^2).
The measured std's uncertainty is carried through by evaluating n at the ends
of its interval as well.

Comparing variances (the sources-of-randomness study: does fixing the data
order shrink the run-to-run spread?) is much harder than comparing means:
``f_test_power`` and ``f_test_seeds_per_arm`` give the exact power of the
two-sided F-test of two normal variances and the seeds it needs (249 per arm
for 30% less variance, 64 for 30% less std, at 80% power and level 0.05).
``independent_var_test`` compares the independent-error variance V_ind of two
arms from their per-example correctness instead: a different, narrower
question, but answered with far fewer seeds. These run on the host (scipy).

No test of the accuracies' variance does better than the F-test for normal
accuracies: it is the uniformly most powerful unbiased one, and the
likelihood-ratio test (Bartlett's) is a function of the same F statistic
(simulated at 16 vs 16 seeds, ratio 0.49: 26.1% power for both). Robust
tests pay for robustness: Brown-Forsythe has 18% there. Nor does comparing
distribution-wise variances help: Var_D's estimate is s^2 minus a nearly
exact V_ind, so its noise is that of s^2. Where the accuracies are skewed or
heavy-tailed the F-test's level is off as well (its premise is normality).

Example:
  >>> z = z_sum(alpha=0.05, power=0.8)                  # 1.960 + 0.842
  >>> seeds_per_arm(jnp.array([0.01]), jnp.array([0.002]), z)  # doctest: +SKIP
  Array([[393.]], dtype=float32)
"""

import statistics

import jax.numpy as jnp
import numpy as np
from scipy import stats


def z_sum(alpha, power):
  """z_{1 - alpha/2} + z_{power} of the standard normal (host, exact)."""
  if not (0 < alpha < 1 and 0 < power < 1):
    raise ValueError(f'alpha and power must lie in (0, 1), got {alpha}, {power}')
  normal = statistics.NormalDist()
  return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)


def seeds_per_arm(std, deltas, z):
  """Seeds per arm to detect each difference; std (...,), deltas (D,) -> (..., D).

  At least 1 (a std of 0 detects any difference with one seed); NaN where the
  std is NaN (groups of fewer than two models).
  """
  ratio = std[..., None] / deltas
  return jnp.maximum(jnp.ceil(2 * z * z * ratio * ratio), 1)


def f_test_power(n1, n2, ratio, alpha=0.05):
  """Exact power of the two-sided level-alpha F-test of sigma_1^2 = sigma_2^2.

  With normal accuracies s_1^2 / s_2^2 = ratio * F, F ~ F(n1 - 1, n2 - 1),
  ratio = sigma_1^2 / sigma_2^2 the true variance ratio; the test rejects
  outside the equal-tailed quantiles of F. Broadcasts over its arguments.

  Example:
    >>> round(float(f_test_power(16, 16, 0.49)), 3)   # 30% less std, 16 seeds per arm
    0.261
  """
  d1, d2 = np.asarray(n1, np.float64) - 1, np.asarray(n2, np.float64) - 1
  low = stats.f.ppf(alpha / 2, d1, d2)
  high = stats.f.isf(alpha / 2, d1, d2)
  ratio = np.asarray(ratio, np.float64)
  return stats.f.cdf(low / ratio, d1, d2) + stats.f.sf(high / ratio, d1, d2)


def f_test_seeds_per_arm(ratio, power=0.8, alpha=0.05, max_seeds=10 ** 7):
  """Fewest seeds per arm (equal arms) for the F-test to reach ``power`` against
  a variance ratio ``ratio`` (!= 1); e.g. 0.7 for 30% less variance, 0.49 for
  30% less std.

  Bisection on n; with equal arms the power rises with n (the statistic's
  log concentrates around log ratio as 1/sqrt(n)), checked at the answer.

  Example:
    >>> f_test_seeds_per_arm(0.49)
    64
  """
  if ratio == 1 or not 0 < power < 1:
    raise ValueError(f'need a variance ratio other than 1 and power in (0, 1); got {ratio}, {power}')
  reaches = lambda n: f_test_power(n, n, ratio, alpha) >= power
  high = 2
  while not reaches(high):
    high *= 2
    if high > max_seeds:
      raise ValueError(f'more than {max_seeds} seeds per arm for ratio {ratio}')
  low = high // 2  # does not reach (or is 1)
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (low, middle) if reaches(middle) else (middle, high)
  return high


def _independent_var_jackknife(correct):
  """V_ind of one arm's (m, n) correctness and its jackknife standard error over models."""
  correct = np.asarray(correct, np.float64)
  m, n = correct.shape
  if m < 3:
    raise ValueError(f'the jackknife needs at least 3 models per arm, got {m}')
  p = correct.mean(0)
  value = np.sum(m / (m - 1) * p * (1 - p)) / n ** 2
  # Leave model j out: its per-example accuracies and V_ind from m - 1 models.
  p_out = (m * p - correct) / (m - 1)
  out = np.sum((m - 1) / (m - 2) * p_out * (1 - p_out), axis=1) / n ** 2
  return value, np.sqrt((m - 1) / m * np.sum((out - out.mean()) ** 2))


def independent_var_test(correct_a, correct_b):
  """Compares two arms' independent-error variance V_ind = (1/n^2) sum_i Var_m(c_mi).

  V_ind is the part of the test-set variance that per-example coin flips
  make; it is averaged over n examples, so it is measured far more precisely
  than the test-set variance itself (relative error ~ 1/sqrt(n m) against
  sqrt(2/(m-1)) for s^2). It answers "do the arms' individual predictions
  fluctuate equally?", not "is their test-set variance equal?": a difference
  in distribution-wise variance is invisible to it. At long training, where
  the variance is nearly all V_ind (SPEC §8), the two questions nearly
  coincide.

  The standard error of each arm's V_ind is the jackknife over its models
  (the per-example unbiased variances are U-statistics in the models, for
  which the jackknife is consistent; it carries the models' shared shifts,
  i.e. the distribution-wise variance, too). Both arms are taken on the same
  test set, so the comparison conditions on it. The z statistic is on
  log V_ind (nearer normal for a variance).

  Args:
    correct_a, correct_b: (m_a, n) and (m_b, n) 0/1 correctness of each arm's
      models on the same n test examples (m >= 3).

  Returns:
    Dict: ``independent_var`` (2,), ``stderr`` (2,), ``log_ratio`` (log V_a / V_b),
    ``z`` and the two-sided ``p_value``.

  Example:
    >>> independent_var_test(c_init_only, c_all_sources)['p_value']   # doctest: +SKIP
  """
  (va, sa), (vb, sb) = _independent_var_jackknife(correct_a), _independent_var_jackknife(correct_b)
  log_ratio = np.log(va / vb)
  z = log_ratio / np.hypot(sa / va, sb / vb)
  return {'independent_var': np.array([va, vb]), 'stderr': np.array([sa, sb]),
          'log_ratio': log_ratio, 'z': z, 'p_value': 2 * stats.norm.sf(abs(z))}
