"""The variance study's laws read honestly (issue 29), against planted truth and closed forms:
Theorem 3's premise beside its formula, the F-test's power, and the std interval under
skewed and heavy-tailed accuracies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from varjax.analysis import power
from varjax.analysis import variance

BETA = stats.beta(0.3, 0.3)  # u: where an example sits between the classes (mass near both)


def sharpen(u, power):
  return u ** power / (u ** power + (1 - u) ** power)


def binary_population(power):
  """Label probability q = 0.05 + 0.9 u, the runs' vote probability for class 1
  qm = 0.05 + 0.9 sharpen(u, power) (power 1: calibrated; > 1: overconfident).
  Returns the population premise ratio E[p (1 - p)] / (err / 2) and err, by quadrature:
  a run is right with probability p = qm (y = 1) or 1 - qm (y = 0), so E[p (1 - p) | u]
  = qm (1 - qm) and E[1 - p | u] = q (1 - qm) + (1 - q) qm."""
  q = lambda u: 0.05 + 0.9 * u
  qm = lambda u: 0.05 + 0.9 * sharpen(u, power)
  mean = lambda f: integrate.quad(lambda u: BETA.pdf(u) * f(u), 0, 1, limit=200)[0]
  err = mean(lambda u: q(u) * (1 - qm(u)) + (1 - q(u)) * qm(u))
  return mean(lambda u: qm(u) * (1 - qm(u))) / (err / 2), err


def binary_ensembles(rng, reps, m, n, tau, power):
  """(reps, m, n) correctness: a fresh test set per rep from ``binary_population``; run r is
  right on x with probability p(x) + d_r, d_r ~ N(0, tau^2) (p stays in [0.05, 0.95], so
  5-sigma shifts stay in [0, 1]): every pair of examples has covariance tau^2, the planted
  distribution-wise variance."""
  u = rng.beta(0.3, 0.3, (reps, n))
  q, qm = 0.05 + 0.9 * u, 0.05 + 0.9 * sharpen(u, power)
  p = np.where(rng.random((reps, n)) < q, qm, 1 - qm)
  shift = rng.normal(0, tau, (reps, m, 1))
  return rng.random((reps, m, n)) < p[:, None] + shift


def binary_stats(correct):
  """The inputs of the Theorem-3 functions, each rep a group, by NumPy."""
  reps, m, n = correct.shape
  acc = correct.mean(2)
  group_correct = correct.sum(1).astype(np.float64)
  p = group_correct / m
  var = acc.var(1, ddof=1)
  independent = np.sum(m / (m - 1) * p * (1 - p), 1) / n ** 2
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return {'num_models': jnp.full(reps, m, jnp.int32), 'mean_error': f32(1 - acc.mean(1)),
          'std_accuracy': f32(np.sqrt(var)), 'independent_std': f32(np.sqrt(independent)),
          'distribution_var': f32(n / (n - 1) * (var - independent))}, f32(group_correct)


def covers(interval, value):
  interval = np.asarray(interval)
  return np.mean((interval[:, 0] <= value) & (value <= interval[:, 1]))


@pytest.mark.parametrize('power', [1, 3])
def test_binary_premise_ratio_and_theorem3_cover_planted_values(power):
  """Calibrated (ratio 1) and overconfident (ratio ~0.72) two-class ensembles, 16 runs,
  2,000 examples, distribution-wise std 1%: the premise ratio's interval covers the
  population ratio at ~95% and, overconfident, excludes 1; Eq. 5 with the measured Var_D
  covers err/(2n) + (1 - 1/n) tau^2 at ~95%, Eq. 6 (no Var_D) almost never does."""
  rng = np.random.default_rng(21 + power)
  reps, m, n, tau = 600, 16, 2000, 0.01
  rho, err = binary_population(power)
  assert (abs(rho - 1) < 1e-6) == (power == 1)
  spread, group_correct = binary_stats(binary_ensembles(rng, reps, m, n, tau, power))
  r = jax.tree.map(np.asarray, variance.binary_law_stats(
      spread, group_correct, n, jnp.asarray(variance.chi2_table(m))))
  tolerance = 4 * np.sqrt(0.05 * 0.95 / reps)
  assert abs(np.mean(r['binary_premise_ratio']) - rho) < 0.01
  assert abs(covers(r['binary_premise_ratio_ci'], rho) - 0.95) < tolerance
  if power > 1:
    assert covers(r['binary_premise_ratio_ci'], 1.0) < 0.01
  target = np.sqrt(err / (2 * n) + (1 - 1 / n) * tau ** 2)
  assert abs(covers(r['calibrated_binary_full_std_ci'], target) - 0.95) < tolerance
  assert covers(r['calibrated_binary_std_ci'], target) < 0.01
  # Where Var_D >= 0 the squared Eq. 5 is the observed variance moved by the premise's gap.
  var, ind = np.asarray(spread['std_accuracy'], np.float64) ** 2, np.asarray(
      spread['independent_std'], np.float64) ** 2
  shown = np.asarray(spread['distribution_var']) > 0
  np.testing.assert_allclose(r['calibrated_binary_full_std'][shown] ** 2,
                             (var - ind + np.asarray(spread['mean_error']) / (2 * n))[shown],
                             rtol=1e-4)


def test_eq6_covers_its_prediction_without_distribution_wise_variance():
  """Calibrated, tau = 0, 8 runs: Eq. 6's interval (the error's, test-set sampling in it)
  covers sqrt(err / (2n)) at ~95%; the mean error's own interval covers err."""
  rng = np.random.default_rng(25)
  reps, m, n = 600, 8, 2000
  _, err = binary_population(1)
  spread, group_correct = binary_stats(binary_ensembles(rng, reps, m, n, 0.0, 1))
  size = spread['num_models'].astype(jnp.float32)
  se = np.asarray(variance.mean_error_se(group_correct, size, spread['distribution_var']))
  tolerance = 4 * np.sqrt(0.05 * 0.95 / reps)
  z = stats.norm.ppf(0.975)
  got = np.mean(np.abs(np.asarray(spread['mean_error']) - err) < z * se)
  assert abs(got - 0.95) < tolerance
  _, ci = variance.calibrated_binary_std(spread['mean_error'], jnp.asarray(se), size, n)
  assert abs(covers(ci, np.sqrt(err / (2 * n))) - 0.95) < tolerance


def test_premise_ratio_undefined_below_two_models():
  ratio, ci = variance.binary_premise_ratio(jnp.ones((2, 5)), jnp.array([1., 2.]),
                                            jnp.zeros(2))
  assert np.isnan(ratio[0]) and np.all(np.isnan(ci[0])) and np.all(np.isfinite(ci[1]))


# Skewed accuracies and the std interval. Each distribution: a draw function and its
# variance (standardised so the accuracies' std is 0.4% around 90%).
SHAPES = {
    'normal': (lambda rng, size: rng.normal(size=size), 1.0),
    # A tail of bad runs: skewness -1.75, excess kurtosis 5.90.
    'log-normal(0.5)': (lambda rng, size: -rng.lognormal(0, 0.5, size),
                        (np.exp(0.25) - 1) * np.exp(0.25)),
    # One run in ten 4 std lower: skewness -1.21, excess kurtosis 1.78.
    'mixture 10% at -4': (lambda rng, size: rng.normal(size=size)
                          - 4 * (rng.random(size) < 0.1), 1 + 16 * 0.1 * 0.9),
    # Heavy tails, symmetric: excess kurtosis 6.
    'student t(5)': (lambda rng, size: rng.standard_t(5, size), 5 / 3),
}


def bonett_reference(x, level=0.95):
  """Bonett (2006) from his paper's formulas, with scipy's trimmed mean."""
  m = len(x)
  z = stats.norm.ppf(0.5 + level / 2)
  c = m / (m - z)
  trimmed = stats.trim_mean(x, 1 / (2 * np.sqrt(m - 4)))
  gamma4 = m * np.sum((x - trimmed) ** 4) / np.sum((x - x.mean()) ** 2) ** 2
  se = c * np.sqrt((gamma4 - (m - 3) / m) / (m - 1))
  return np.sqrt(np.exp(np.log(c * x.var(ddof=1)) + np.array([-z, z]) * se))


def coverage(shape, m, reps, seed):
  """Actual coverage of the chi-squared and Bonett std intervals at nominal 95%."""
  draw, unit_var = SHAPES[shape]
  rng = np.random.default_rng(seed)
  acc = 0.9 + 0.004 * draw(rng, (reps, m))
  sigma = 0.004 * np.sqrt(unit_var)
  member = jnp.ones((m, 1), jnp.float32)
  bonett = jax.jit(jax.vmap(lambda x: variance.bonett_std_interval(x, member)[0]))(
      jnp.asarray(acc, jnp.float32))
  chi2 = variance.std_interval(jnp.asarray(acc.var(1, ddof=1), jnp.float32),
                               jnp.full(reps, m, jnp.float32),
                               jnp.asarray(variance.chi2_table(m)))
  return covers(chi2, sigma), covers(bonett, sigma)


def test_skewness_kurtosis_and_bonett_match_scipy_per_group():
  rng = np.random.default_rng(31)
  groups = np.array([0] * 9 + [1] * 5 + [2] * 4 + [3] * 3 + [-1])  # the last in no group
  x = rng.lognormal(0, 0.7, len(groups))
  member = jnp.asarray((groups[:, None] == np.arange(4)).astype(np.float32))
  skew, kurt = jax.jit(variance.group_skew_kurtosis)(jnp.asarray(x, jnp.float32), member)
  ci = jax.jit(variance.bonett_std_interval)(jnp.asarray(x, jnp.float32), member)
  for g in range(4):
    v = x[groups == g]
    np.testing.assert_allclose(skew[g], stats.skew(v, bias=False), rtol=1e-4)
    if len(v) >= 4:
      np.testing.assert_allclose(kurt[g], stats.kurtosis(v, bias=False), rtol=1e-4, atol=1e-5)
    if len(v) >= 5:
      np.testing.assert_allclose(ci[g], bonett_reference(v), rtol=1e-4)
  assert np.isnan(kurt[3]) and np.all(np.isnan(ci[2:]))
  ties = jnp.ones(6, jnp.float32)  # no spread: shape undefined
  assert np.all(np.isnan(variance.group_skew_kurtosis(ties, jnp.ones((6, 1)))))


def test_bonett_reproduces_the_papers_example():
  # Bonett (2006), Sec. 4: eight values; 90/95/99% intervals of sigma
  # (0.3592, 0.9359), (0.3263, 1.0841), (0.2607, 1.5109).
  x = jnp.array([15.83, 16.01, 16.24, 16.42, 15.33, 15.44, 16.88, 16.31])
  for level, want in ((0.90, (0.3592, 0.9359)), (0.95, (0.3263, 1.0841)),
                      (0.99, (0.2607, 1.5109))):
    got = variance.bonett_std_interval(x - 16, jnp.ones((8, 1)), level)[0]
    np.testing.assert_allclose(got, want, atol=6e-5)


def test_bonett_interval_holds_its_level_where_chi_squared_does_not():
  """16 seeds, 3,000 draws: normal accuracies, both ~95%; a tail of bad runs
  (log-normal), chi-squared ~79%, Bonett ~88% (the slow test has the full table)."""
  chi2, bonett = coverage('normal', 16, 3000, seed=32)
  tolerance = 4 * np.sqrt(0.05 * 0.95 / 3000)
  assert abs(chi2 - 0.95) < tolerance and abs(bonett - 0.95) < tolerance
  chi2, bonett = coverage('log-normal(0.5)', 16, 3000, seed=33)
  assert chi2 < 0.83 and bonett > chi2 + 0.05


@pytest.mark.slow
def test_std_interval_coverage_table():
  """Actual coverage at nominal 95%, 20,000 draws per cell (SE 0.0015), printed (-s)."""
  print(f"\n{'accuracies':20s} {'seeds':>5s} {'chi-squared':>12s} {'Bonett':>8s}")
  for i, shape in enumerate(SHAPES):
    for m in (8, 16, 64):
      chi2, bonett = coverage(shape, m, 20000, seed=100 + 10 * i + m)
      print(f'{shape:20s} {m:5d} {chi2:12.3f} {bonett:8.3f}')
      if shape == 'normal':
        assert abs(chi2 - 0.95) < 0.006 and abs(bonett - 0.95) < (0.03 if m == 8 else 0.01)
      else:
        assert bonett > chi2 + 0.03 and bonett > 0.85


# The sources-of-randomness comparison: power of the F-test, and V_ind's test.
def test_f_test_power_matches_simulation():
  """Normal accuracies, 16 vs 16 and 10 vs 30 seeds, variance ratios 0.49, 0.7, 1, 2:
  the exact power against 20,000 simulated F-tests (scipy's own F quantiles)."""
  rng = np.random.default_rng(41)
  reps = 20000
  for n1, n2 in ((16, 16), (10, 30)):
    low, high = stats.f.ppf([0.025, 0.975], n1 - 1, n2 - 1)
    for ratio in (0.49, 0.7, 1.0, 2.0):
      a = rng.normal(0, np.sqrt(ratio), (reps, n1)).var(1, ddof=1)
      b = rng.normal(0, 1, (reps, n2)).var(1, ddof=1)
      simulated = np.mean((a / b < low) | (a / b > high))
      want = power.f_test_power(n1, n2, ratio)
      assert abs(simulated - want) < 4 * np.sqrt(want * (1 - want) / reps), (n1, n2, ratio)
  np.testing.assert_allclose(power.f_test_power(16, 16, 1.0), 0.05, rtol=1e-9)


def test_f_test_seeds_per_arm_is_the_first_to_reach_the_power():
  for ratio, want in ((0.49, 64), (0.7, 249), (1 / 0.7, 249), (2.0, 68)):
    n = power.f_test_seeds_per_arm(ratio)
    assert n == want, (ratio, n)
    assert power.f_test_power(n, n, ratio) >= 0.8 > power.f_test_power(n - 1, n - 1, ratio)
  assert power.f_test_seeds_per_arm(0.49, power=0.9) > 64
  with pytest.raises(ValueError):
    power.f_test_seeds_per_arm(1.0)


def logit_arm(rng, logits, m, tau):
  """(m, n) correctness: run r right on x with probability expit(logit_x + d_r), d_r ~ N(0, tau^2)
  (a shared shift: distribution-wise variance)."""
  shift = rng.normal(0, tau, (m, 1))
  return rng.random((m, logits.size)) < special.expit(logits + shift)


def test_independent_var_test_holds_its_size_and_detects_a_planted_difference():
  """Same test set (n = 2,000, ~90% accuracy), 16 runs per arm, a distribution-wise
  logit shift: equal arms are rejected ~5% of the time; an arm whose per-example
  variance is ~30% smaller almost always. The jackknife SE matches V_ind's spread."""
  rng = np.random.default_rng(42)
  n, m, tau, reps = 2000, 16, 0.1, 300
  logits = rng.normal(3.0, 2.0, n)
  sharp = 1.4 * logits  # more decided runs: smaller p (1 - p) on every example
  expected = lambda z: np.sum(special.expit(z) * special.expit(-z)) / n ** 2  # tau -> 0
  assert 0.6 < expected(sharp) / expected(logits) < 0.8
  same, planted, values, errors = [], [], [], []
  for _ in range(reps):
    a = logit_arm(rng, logits, m, tau)
    r = power.independent_var_test(a, logit_arm(rng, logits, m, tau))
    same.append(r['p_value'] < 0.05)
    values.append(r['independent_var'][0])
    errors.append(r['stderr'][0])
    planted.append(power.independent_var_test(a, logit_arm(rng, sharp, m, tau))['p_value'] < 0.05)
  assert abs(np.mean(same) - 0.05) < 4 * np.sqrt(0.05 * 0.95 / reps)
  assert np.mean(planted) > 0.95
  assert abs(np.mean(errors) / np.std(values) - 1) < 0.15
