"""varjax.analysis against independent NumPy references and the theory of SPEC §2-3."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import optimize, stats

from varjax import analysis
from varjax.analysis import power
from varjax.analysis import trimming
from varjax.analysis import variance

GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 2])
PER_MODEL = ('accuracy', 'accuracy_even', 'accuracy_odd', 'ece', 'margin_median')
PER_GROUP = ('num_models', 'mean_accuracy', 'std_accuracy', 'std_accuracy_ci',
             'std_accuracy_ci_bonett', 'accuracy_skewness', 'accuracy_excess_kurtosis',
             'independent_std', 'independence_ratio', 'distribution_var', 'distribution_std',
             'distribution_std_ci', 'split_half_corr', 'mean_disagreement',
             'disagreement_error_ratio', 'mean_error', 'cace', 'error_consistency', 'mean_churn',
             'ensemble_accuracy_vote', 'ensemble_accuracy_softmax', 'seeds_needed',
             'seeds_needed_ci', 'ensemble_size_accuracy_vote', 'ensemble_size_accuracy_softmax')
DELTAS = (0.001, 0.002, 0.005)


def planted_logits(num_models, n, k, seed=0):
  """Logits whose label boost varies per example (difficulty) and per model (skill)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  difficulty = rng.normal(0, 1.5, n)
  skill = rng.normal(0, 0.3, num_models)
  logits = rng.normal(0, 1, (num_models, n, k))
  logits[:, np.arange(n), labels] += 1.0 + difficulty + skill[:, None]
  return logits.astype(np.float32), labels.astype(np.int32)


def bernoulli_logits(correct, labels, k, seed=0):
  """Logits whose argmax is the label exactly where ``correct`` (N, n) is True."""
  rng = np.random.default_rng(seed)
  num_models, n = correct.shape
  wrong = (labels + rng.integers(1, k, (num_models, n))) % k
  pred = np.where(correct, labels, wrong)
  logits = rng.normal(0, 0.1, (num_models, n, k)).astype(np.float32)
  np.put_along_axis(logits, pred[..., None], 5.0, axis=-1)
  return logits


def numpy_vote(votes, prob_sum):
  """Plurality class; ties to the tied class with the larger summed softmax, then the lowest."""
  out = np.empty(votes.shape[0], int)
  for i, (v, p) in enumerate(zip(votes, prob_sum)):
    tied = np.flatnonzero(v == v.max())
    out[i] = tied[np.argmax(p[tied])]
  return out


def numpy_cace(votes, labels, m):
  """Jiang et al. 2022, Eq. 6: sum_q |sum_k P(Y=k, h_k=q) - q P(h_k=q)|, h_k = votes_k / M."""
  n, k = votes.shape
  total = 0.0
  for level in range(m + 1):
    q = level / m
    inner = sum(np.mean((labels == cls) & (votes[:, cls] == level))
                - q * np.mean(votes[:, cls] == level) for cls in range(k))
    total += abs(inner)
  return total


def chi2_var_interval(var, m):
  """The textbook chi-squared interval of a normal variance, via scipy."""
  return np.array([(m - 1) * var / stats.chi2.ppf(0.975, m - 1),
                   (m - 1) * var / stats.chi2.ppf(0.025, m - 1)])


def seeds_closed_form(std, delta, alpha=0.05, power_=0.8):
  z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power_)
  return np.ceil(2 * z ** 2 * std ** 2 / delta ** 2)


def numpy_reference(logits, labels, groups):
  logits = logits.astype(np.float64)
  num_models, n, k = logits.shape
  pred = logits.argmax(-1)
  c = (pred == labels).astype(np.float64)
  even = np.arange(n) % 2 == 0
  z = np.exp(logits - logits.max(-1, keepdims=True))
  probs = z / z.sum(-1, keepdims=True)
  conf = probs.max(-1)
  bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
  ece = np.array([sum(abs(conf[m][bins[m] == b].sum() - c[m][bins[m] == b].sum())
                      for b in range(15)) / n for m in range(num_models)])
  true = logits[:, np.arange(n), labels]
  other = np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits).max(-1)
  acc = c.mean(1)
  r = {'accuracy': acc, 'accuracy_even': c[:, even].mean(1), 'accuracy_odd': c[:, ~even].mean(1),
       'ece': ece, 'margin_median': np.median(true - other, axis=1)}
  churn = np.array([[np.mean(pred[a] != pred[b]) for b in range(num_models)]
                    for a in range(num_models)])
  kappa = np.zeros((num_models, num_models))
  for a in range(num_models):
    for b in range(num_models):
      observed = np.mean(c[a] == c[b])
      expected = acc[a] * acc[b] + (1 - acc[a]) * (1 - acc[b])
      kappa[a, b] = (observed - expected) / (1 - expected)
  r.update(churn=churn, error_kappa=kappa)
  group_rows = {name: [] for name in PER_GROUP}
  r['example_accuracy'], r['vote_counts'] = [], []
  ladder = lambda m: [s for s in (1, 2, 4, 8) if s < m] + [m]
  width = max(len(ladder(np.sum(groups == g))) for g in range(groups.max() + 1))
  r['ensemble_sizes'] = np.array([ladder(np.sum(groups == g)) + [0] * (
      width - len(ladder(np.sum(groups == g)))) for g in range(groups.max() + 1)])
  for g in range(groups.max() + 1):
    idx = np.flatnonzero(groups == g)
    m = len(idx)
    p = c[idx].mean(0)
    one_hot = lambda models: np.stack([(pred[models] == j).sum(0) for j in range(k)], -1)
    votes = one_hot(idx)
    mean_probs = probs[idx].mean(0)
    row = {'num_models': m, 'mean_accuracy': acc[idx].mean(), 'mean_error': 1 - acc[idx].mean(),
           'ensemble_accuracy_vote': np.mean(numpy_vote(votes, mean_probs) == labels),
           'ensemble_accuracy_softmax': np.mean(mean_probs.argmax(-1) == labels),
           'cace': numpy_cace(votes, labels, m),
           'std_accuracy_ci': [np.nan, np.nan], 'distribution_std_ci': [np.nan, np.nan],
           # Bonett's interval needs 5 models: every group here is smaller (its values:
           # tests/laws_test.py).
           'std_accuracy_ci_bonett': [np.nan, np.nan],
           'accuracy_skewness': stats.skew(acc[idx], bias=False) if m >= 3 else np.nan,
           'accuracy_excess_kurtosis': stats.kurtosis(acc[idx], bias=False) if m >= 4 else np.nan,
           'seeds_needed': [np.nan] * 3, 'seeds_needed_ci': [[np.nan] * 2] * 3}
    # Accuracy against size, averaged over every subset (the groups here are small
    # enough that the analysis enumerates them all too).
    curves = {'vote': [np.nan] * width, 'softmax': [np.nan] * width}
    for level, size in enumerate(ladder(m)):
      vote_acc, soft_acc = [], []
      for subset in itertools.combinations(idx, size):
        subset = list(subset)
        sub_probs = probs[subset].sum(0)
        vote_acc.append(np.mean(numpy_vote(one_hot(subset), sub_probs) == labels))
        soft_acc.append(np.mean(sub_probs.argmax(-1) == labels))
      curves['vote'][level], curves['softmax'][level] = np.mean(vote_acc), np.mean(soft_acc)
    row['ensemble_size_accuracy_vote'] = curves['vote']
    row['ensemble_size_accuracy_softmax'] = curves['softmax']
    if m >= 2:
      var = acc[idx].var(ddof=1)
      ind = np.sum(m / (m - 1) * p * (1 - p)) / n ** 2
      pairs = [(a, b) for a in idx for b in idx if a < b]
      var_ci = chi2_var_interval(var, m)
      std_ci = np.sqrt(var_ci)
      row.update(
          std_accuracy=np.sqrt(var), independent_std=np.sqrt(ind), independence_ratio=var / ind,
          distribution_var=n / (n - 1) * (var - ind),
          distribution_std=np.sqrt(max(0, n / (n - 1) * (var - ind))),
          std_accuracy_ci=std_ci,
          distribution_std_ci=np.sqrt(np.maximum(n / (n - 1) * (var_ci - ind), 0)),
          seeds_needed=[seeds_closed_form(np.sqrt(var), d) for d in DELTAS],
          seeds_needed_ci=[[seeds_closed_form(s, d) for s in std_ci] for d in DELTAS],
          split_half_corr=np.corrcoef(r['accuracy_even'][idx], r['accuracy_odd'][idx])[0, 1],
          mean_disagreement=np.mean(1 - (votes * (votes - 1)).sum(-1) / (m * (m - 1))),
          disagreement_error_ratio=np.mean(
              1 - (votes * (votes - 1)).sum(-1) / (m * (m - 1))) / (1 - acc[idx].mean()),
          error_consistency=np.mean([kappa[a, b] for a, b in pairs]),
          mean_churn=np.mean([churn[a, b] for a, b in pairs]))
    for name in PER_GROUP:
      group_rows[name].append(row.get(name, np.nan))
    r['example_accuracy'].append(p)
    r['vote_counts'].append(votes)
  r.update({name: np.array(v) for name, v in group_rows.items()})
  r['example_accuracy'] = np.stack(r['example_accuracy'])
  r['vote_counts'] = np.stack(r['vote_counts'])
  return r


def to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope='module')
def planted():
  logits, labels = planted_logits(len(GROUPS), 301, 5)
  results = to_numpy(analysis.analyze(jnp.asarray(logits), jnp.asarray(labels), GROUPS,
                                      batch_size=128, alpha_trim_resamples=16))
  return logits, labels, results


def test_every_metric_matches_numpy(planted):
  logits, labels, results = planted
  ref = numpy_reference(logits, labels, GROUPS)
  assert 0.3 < ref['accuracy'].mean() < 0.9 and np.ptp(ref['example_accuracy'][0]) == 1
  for name, want in ref.items():
    np.testing.assert_allclose(results[name], want, rtol=2e-4, atol=2e-5, err_msg=name)
  # The vote-count formula for disagreement is the mean churn over pairs.
  np.testing.assert_allclose(ref['mean_disagreement'][:2], ref['mean_churn'][:2])


def test_shapes_and_small_groups(planted):
  _, _, r = planted
  assert r['std_accuracy_ci'].shape == (3, 2) and r['vote_counts'].shape == (3, 301, 5)
  assert r['churn'].shape == (8, 8) and r['alpha_trim'].shape == (8,)
  for name in ('std_accuracy', 'independence_ratio', 'split_half_corr', 'mean_disagreement',
               'error_consistency', 'mean_churn'):
    assert np.isnan(r[name][2]) and np.all(np.isfinite(r[name][:2])), name
  assert np.all(np.isnan(r['std_accuracy_ci'][2])) and np.isnan(r['alpha_trim'][7])
  assert np.all(np.isfinite(r['alpha_trim'][:7]))


def test_groups_equal_separate_analyses(planted):
  logits, labels, together = planted
  for g in range(2):
    idx = np.flatnonzero(GROUPS == g)
    alone = to_numpy(analysis.analyze(jnp.asarray(logits[idx]), jnp.asarray(labels),
                                      batch_size=128, alpha_trim_resamples=16))
    for name in PER_GROUP + ('example_accuracy', 'vote_counts'):
      np.testing.assert_allclose(alone[name][0], together[name][g], rtol=1e-5, atol=1e-6,
                                 err_msg=name)
    for name in PER_MODEL + ('alpha_trim',):
      np.testing.assert_allclose(alone[name], together[name][idx], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(alone['error_kappa'], together['error_kappa'][np.ix_(idx, idx)],
                               rtol=1e-5)


def test_streaming_any_order_equals_one_shot(planted):
  logits, labels, one_shot = planted
  n = len(labels)
  state = analysis.init(len(GROUPS), n, 5, GROUPS, alpha_trim_resamples=16)
  order = np.random.default_rng(1).permutation(n)
  start = 0
  for size in (1, 7, 100, 64, 129):
    ids = order[start:start + size]
    start += size
    state = analysis.update(state, jnp.asarray(logits[:, ids]), jnp.asarray(labels[ids]),
                            jnp.asarray(ids))
  assert start == n
  streamed = to_numpy(jax.jit(analysis.finalize)(state))
  for name, want in one_shot.items():
    np.testing.assert_allclose(streamed[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_update_under_jit_without_host_transfers(planted):
  logits, labels, _ = planted
  state = analysis.init(len(GROUPS), 301, 5, GROUPS, alpha_trim_resamples=16)
  x, y = jax.device_put(logits[:, :50]), jax.device_put(labels[:50])
  ids = jax.device_put(np.arange(50, dtype=np.int32))
  step = jax.jit(analysis.update, donate_argnums=0)
  with jax.transfer_guard('disallow'):
    state = step(state, x, y, ids)
    state = jax.jit(lambda s, a, b, i: analysis.update(s, a * 1, b, i + 50))(state, x, y, ids)
  # The same 50 examples went in twice, under ids 0..49 and 50..99.
  assert int(state['correct'].sum()) == 2 * int(np.sum(logits[:, :50].argmax(-1) == labels[:50]))


def test_sharded_over_models_equals_unsharded():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip('needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)')
  logits, labels = planted_logits(8, 120, 4, seed=3)
  mesh = Mesh(np.array(devices[:8]), ('models',))
  sharded = jax.device_put(logits, NamedSharding(mesh, P('models')))
  step = jax.jit(analysis.update)
  results = []
  for x in (jnp.asarray(logits), sharded):
    state = analysis.init(8, 120, 4, GROUPS, alpha_trim_resamples=4)
    for start in (0, 60):
      state = step(state, x[:, start:start + 60], jnp.asarray(labels[start:start + 60]),
                   jnp.arange(start, start + 60))
    results.append(to_numpy(jax.jit(analysis.finalize)(state)))
  for name, want in results[0].items():
    np.testing.assert_allclose(results[1][name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_independent_errors_give_ratio_one_and_no_distribution_variance():
  rng = np.random.default_rng(4)
  num_models, n = 200, 1000
  q = rng.beta(4, 1.5, n)                                   # p_i varies, errors independent
  labels = rng.integers(0, 10, n)
  correct = rng.random((num_models, n)) < q
  r = to_numpy(analysis.analyze(jnp.asarray(bernoulli_logits(correct, labels, 10)),
                                jnp.asarray(labels), alpha_trim_resamples=2))
  rel = np.sqrt(2 / (num_models - 1))                       # sampling std of a variance ratio
  assert abs(r['independence_ratio'][0] - 1) < 4 * rel
  assert abs(r['distribution_var'][0]) < 4 * rel * r['independent_std'][0] ** 2
  assert abs(r['split_half_corr'][0]) < 4 / np.sqrt(num_models)
  # Kappa measures agreement beyond what accuracies predict; shared per-example
  # difficulty alone gives kappa = Var(q) / (a (1 - a)) for independent draws.
  a = q.mean()
  assert abs(r['error_consistency'][0] - q.var() / (a * (1 - a))) < 0.02


def test_planted_distribution_wise_std_is_recovered():
  rng = np.random.default_rng(5)
  num_models, n, sigma = 200, 1000, 0.03
  model_acc = np.clip(rng.normal(0.7, sigma, num_models), 0, 1)
  labels = rng.integers(0, 10, n)
  correct = rng.random((num_models, n)) < model_acc[:, None]
  r = to_numpy(analysis.analyze(jnp.asarray(bernoulli_logits(correct, labels, 10, seed=1)),
                                jnp.asarray(labels), alpha_trim_resamples=2))
  assert abs(r['distribution_std'][0] - sigma) < 0.25 * sigma
  assert r['independence_ratio'][0] > 3 and r['std_accuracy'][0] > r['distribution_std'][0]
  assert r['split_half_corr'][0] > 0.5


def test_calibrated_ensemble_disagreement_equals_error():
  # Each example has class probabilities; its label and every model's prediction are
  # independent draws from them, so vote fractions are class-wise calibrated (GDE).
  rng = np.random.default_rng(6)
  num_models, n, k = 50, 2000, 5
  pi = rng.dirichlet(np.full(k, 0.5), n)
  draw = lambda size: (rng.random(size + (1,)) > np.cumsum(pi, -1)).sum(-1)
  labels = draw((n,))
  pred = draw((num_models, n))
  logits = np.eye(k, dtype=np.float32)[pred] * 4
  r = to_numpy(analysis.analyze(jnp.asarray(logits), jnp.asarray(labels),
                                alpha_trim_resamples=2))
  assert abs(r['mean_disagreement'][0] - r['mean_error'][0]) < 0.02
  # Overconfident models (all predict each example's likeliest class) are miscalibrated.
  sure = np.eye(k, dtype=np.float32)[np.repeat(pi.argmax(-1)[None], num_models, 0)] * 4
  overconfident = to_numpy(analysis.analyze(jnp.asarray(sure), jnp.asarray(labels),
                                            alpha_trim_resamples=2))
  assert overconfident['cace'][0] > 2 * r['cace'][0]
  assert overconfident['mean_disagreement'][0] < 1e-6 < overconfident['mean_error'][0] - 0.2
  # Jiang et al.'s Theorem 4.3: |E disagreement - E error| <= CACE.
  for res in (r, overconfident):
    assert abs(res['mean_disagreement'][0] - res['mean_error'][0]) <= res['cace'][0] + 1e-6


def test_calibrated_binary_std_predicts_the_test_set_std():
  # Theorem 3 of the variance study: labels drawn from each example's vote
  # fraction q (calibration) and predictions drawn independently from q give a
  # test-set variance of err / (2n).
  rng = np.random.default_rng(11)
  num_models, n = 400, 2000
  q = rng.beta(0.6, 0.6, n)                                  # P(class 1 | x)
  labels = (rng.random(n) < q).astype(np.int32)
  pred = (rng.random((num_models, n)) < q).astype(np.int32)
  logits = np.eye(2, dtype=np.float32)[pred] * 4
  r = to_numpy(analysis.analyze(jnp.asarray(logits), jnp.asarray(labels),
                                alpha_trim_resamples=2))
  err = r['mean_error'][0]
  np.testing.assert_allclose(r['calibrated_binary_std'][0], np.sqrt(err / (2 * n)), rtol=1e-6)
  np.testing.assert_allclose(err, np.mean(2 * q * (1 - q)), atol=0.01)
  low, high = r['std_accuracy_ci'][0]
  assert low < r['calibrated_binary_std'][0] < high           # the observed std's 95% CI
  lo, hi = r['calibrated_binary_std_ci'][0]
  assert lo < r['calibrated_binary_std'][0] < hi and hi - lo < 0.05 * r['calibrated_binary_std'][0]
  # Ten classes: no such prediction.
  ten = to_numpy(analysis.analyze(jnp.asarray(bernoulli_logits(pred == labels, labels, 10)),
                                  jnp.asarray(labels), alpha_trim_resamples=2))
  binary = ('calibrated_binary_std', 'calibrated_binary_full_std', 'binary_premise_ratio')
  assert not any(key in ten or key + '_ci' in ten for key in binary)
  # Calibrated, no distribution-wise variance planted: the premise holds and Eq. 5 is
  # the observed std (their gap is the premise's).
  lo, hi = r['binary_premise_ratio_ci'][0]
  assert lo < 1 < hi and hi - lo < 0.1
  np.testing.assert_allclose(r['disagreement_error_ratio'][0], 1, atol=0.03)
  assert abs(r['calibrated_binary_full_std'][0] / r['std_accuracy'][0] - 1) < 0.05


def test_trimmed_distance_at_zero_is_two_sample_ks():
  rng = np.random.default_rng(7)
  x, y = rng.normal(0, 1, 40), rng.normal(0.3, 1.2, 55)
  t = np.sort(np.concatenate([x, y]))
  cdf = lambda s, side: np.searchsorted(np.sort(s), t, side) / len(s)
  d = trimmed_ks_distance_np = trimming.trimmed_ks_distance(
      cdf(x, 'left'), cdf(x, 'right'), cdf(y, 'left'), cdf(y, 'right'), jnp.array([0.0]))
  np.testing.assert_allclose(d[0], stats.ks_2samp(x, y).statistic, rtol=1e-5)
  del trimmed_ks_distance_np


def lp_trimmed_distance(x, wx, y, wy, alpha):
  """min over alpha-trimmings H of Y's weighted law of sup |F_X - H|, as a linear program."""
  t = np.unique(np.concatenate([x, y]))
  f_right = np.array([wx[x <= s].sum() for s in t]) / wx.sum()
  f_left = np.array([wx[x < s].sum() for s in t]) / wx.sum()
  mass = np.array([wy[y == s].sum() for s in t]) / wy.sum()
  size = len(t)
  rows, bounds = [], []
  for f, cum in ((f_right, np.tril(np.ones((size, size)))),
                 (f_left, np.tril(np.ones((size, size)), -1))):
    for i in range(size):
      rows += [np.r_[cum[i], -1], np.r_[-cum[i], -1]]
      bounds += [f[i], -f[i]]
  res = optimize.linprog(np.r_[np.zeros(size), 1], A_ub=np.array(rows), b_ub=bounds,
                         A_eq=np.r_[np.ones(size), 0][None], b_eq=[1],
                         bounds=[(0, m / (1 - alpha)) for m in mass] + [(0, None)])
  return res.fun


def test_alpha_trim_levels_match_linear_program():
  rng = np.random.default_rng(8)
  num_models, n = 3, 60
  margin = np.round(rng.normal(0, 1, (num_models, n)), 1).astype(np.float32)  # with ties
  margin[2] += 1.5
  member = np.eye(1, dtype=np.float32)[np.zeros(num_models, int)]
  grid = np.array([0.0, 0.1, 0.2, 0.3, 0.4], np.float32)
  weights = np.stack([np.ones(n, int), np.bincount(rng.integers(0, n, n), minlength=n)])
  got = np.asarray(trimming.alpha_trim_levels(jnp.asarray(margin), jnp.asarray(member),
                                              jnp.asarray(grid), jnp.asarray(weights)))
  delta = np.sqrt(np.log(2 / 0.01) / n) + 1 / n
  for b, w in enumerate(weights):
    for m in range(num_models):
      rest = [j for j in range(num_models) if j != m]
      ref_x = margin[rest].reshape(-1)
      ref_w = np.tile(w, len(rest)).astype(float)
      dist = [lp_trimmed_distance(margin[m], w.astype(float), ref_x, ref_w, a) for a in grid]
      passed = [a for a, d in zip(grid, dist) if d <= delta + 1e-6]
      want = passed[0] if passed else trimming.BEYOND_GRID
      np.testing.assert_allclose(got[b, m], want, err_msg=(b, m))
  assert got[:, 2].mean() > got[:, :2].mean()


def test_alpha_trim_is_zero_for_identical_models():
  logits, labels = planted_logits(1, 200, 5, seed=9)
  r = to_numpy(analysis.analyze(jnp.asarray(np.repeat(logits, 4, 0)), jnp.asarray(labels),
                                alpha_trim_resamples=8))
  np.testing.assert_array_equal(r['alpha_trim'], 0)
  np.testing.assert_allclose(r['mean_churn'], 0, atol=1e-6)


def test_alpha_trim_reports_beyond_grid_resamples_apart():
  # Three identical models and one whose margins lie far above theirs: the
  # outlier passes no grid level (its reference holds none of its mass), the
  # others pass once the outlier's third of their reference is trimmed.
  rng = np.random.default_rng(11)
  base = rng.normal(0, 1, 400)
  margin = np.stack([base, base, base, base + 50]).astype(np.float32)
  labels = np.zeros(400, np.int32)
  logits = np.zeros((4, 400, 2), np.float32)
  logits[..., 0] = margin / 2
  logits[..., 1] = -margin / 2
  r = to_numpy(analysis.analyze(jnp.asarray(logits), jnp.asarray(labels),
                                alpha_trim_resamples=6))
  np.testing.assert_allclose(r['margin'], margin, rtol=1e-5, atol=1e-5)
  assert np.isnan(r['alpha_trim'][3]) and r['alpha_trim_beyond_grid'][3] == 1
  np.testing.assert_array_equal(r['alpha_trim_beyond_grid'][:3], 0)
  assert np.all((0.25 <= r['alpha_trim'][:3]) & (r['alpha_trim'][:3] <= 1 / 3 + 1e-6))


def test_std_interval_covers_at_its_level_on_normal_draws():
  """chi-squared interval: 95% nominal -> 93-97% actual at 8 and 64 seeds (8,000 draws each)."""
  rng = np.random.default_rng(12)
  sigma, reps = 0.004, 4000
  for m in (8, 64):
    var = rng.normal(0.9, sigma, (reps, m)).var(axis=1, ddof=1)
    ci = np.asarray(variance.std_interval(jnp.asarray(var, jnp.float32),
                                          jnp.full(reps, m, jnp.float32),
                                          jnp.asarray(variance.chi2_table(m))))
    np.testing.assert_allclose(ci[:5], np.sqrt([chi2_var_interval(v, m) for v in var[:5]]),
                               rtol=1e-5)
    coverage = np.mean((ci[:, 0] <= sigma) & (sigma <= ci[:, 1]))
    assert 0.93 <= coverage <= 0.97, (m, coverage)


def test_distribution_std_interval_covers_a_planted_distribution_wise_std():
  """Per-example base rates q_i, per-model shifts d_m ~ N(0, tau^2), correct ~ Bernoulli(q_i + d_m):
  every pair of examples has covariance tau^2, so the distribution-wise std is tau exactly.
  95% nominal -> 93-97% actual at 8 and 64 seeds."""
  rng = np.random.default_rng(13)
  n, tau, reps = 400, 0.02, 2000
  q = rng.uniform(0.2, 0.8, n)
  for m in (8, 64):
    var, independent = [], []
    for chunk in range(0, reps, 200):
      shift = rng.normal(0, tau, (200, m, 1))
      correct = rng.random((200, m, n)) < q + shift
      p = correct.mean(1)
      var.append(correct.mean(2).var(axis=1, ddof=1))
      independent.append(np.sum(m / (m - 1) * p * (1 - p), axis=1) / n ** 2)
    var, independent = np.concatenate(var), np.concatenate(independent)
    ci = np.asarray(variance.distribution_std_interval(
        jnp.asarray(var, jnp.float32), jnp.asarray(independent, jnp.float32),
        jnp.full(reps, m, jnp.float32), n, jnp.asarray(variance.chi2_table(m))))
    coverage = np.mean((ci[:, 0] <= tau) & (tau <= ci[:, 1]))
    assert 0.93 <= coverage <= 0.97, (m, coverage)
    point = np.sqrt(np.maximum(n / (n - 1) * (var - independent), 0))
    assert np.all(ci[:, 0] <= point + 1e-6) and np.all(point <= ci[:, 1] + 1e-6)


def test_seeds_needed_matches_the_closed_form_and_reaches_the_power():
  sigma = np.array([0.0015, 0.004, 0.01, 0.03])
  deltas = np.array(DELTAS)
  z = power.z_sum(0.05, 0.8)
  np.testing.assert_allclose(z, stats.norm.ppf(0.975) + stats.norm.ppf(0.8), rtol=1e-12)
  got = np.asarray(power.seeds_per_arm(jnp.asarray(sigma, jnp.float32),
                                       jnp.asarray(deltas, jnp.float32), z))
  np.testing.assert_array_equal(got, [[seeds_closed_form(s, d) for d in deltas] for s in sigma])
  assert float(power.seeds_per_arm(jnp.zeros(1), jnp.asarray([0.001]), z)[0, 0]) == 1
  # Simulated two-arm comparisons with that many seeds per arm (z-test, known sigma).
  rng = np.random.default_rng(14)
  n = int(got[2, 2])                                    # sigma 1%, difference 0.5pp: 63
  a = rng.normal(0.900, 0.01, (20000, n)).mean(1)
  b = rng.normal(0.905, 0.01, (20000, n)).mean(1)
  detected = np.abs(b - a) / (0.01 * np.sqrt(2 / n)) > stats.norm.ppf(0.975)
  assert 0.785 <= detected.mean() <= 0.82, detected.mean()


def test_ensemble_size_curve_over_random_subsets():
  """A group too large to enumerate: the state's subsets are valid and scored as NumPy scores them."""
  groups = np.array([0] * 9 + [-1] + [1] * 3)           # model 9 diverged: in no subset
  logits, labels = planted_logits(len(groups), 211, 4, seed=15)
  state = analysis.init(len(groups), 211, 4, groups, alpha_trim_resamples=2, ensemble_subsets=5)
  for start, stop in ((0, 100), (100, 211)):
    state = analysis.update(state, jnp.asarray(logits[:, start:stop]),
                            jnp.asarray(labels[start:stop]), jnp.arange(start, stop))
  r = to_numpy(jax.jit(analysis.finalize)(state))
  np.testing.assert_array_equal(r['ensemble_sizes'], [[1, 2, 4, 8, 9], [1, 2, 3, 0, 0]])
  subsets, slots = np.asarray(state['subset_member']), np.asarray(state['subset_slot'])
  # Group 0: 5 random subsets at sizes 1, 2, 4 (9, 36, 126 possible) and 8 (9),
  # the whole group once; group 1 is enumerated: 3 + 3 + 1.
  assert np.bincount(slots, minlength=10).tolist() == [5, 5, 5, 5, 1, 3, 3, 1, 0, 0]
  pred = logits.argmax(-1)
  z = np.exp(logits - logits.max(-1, keepdims=True))
  probs = z / z.sum(-1, keepdims=True)
  for g in range(2):
    for level, size in enumerate(r['ensemble_sizes'][g][r['ensemble_sizes'][g] > 0]):
      rows = subsets[slots == g * 5 + level]
      assert np.all(rows.sum(1) == size) and np.all(rows[:, groups != g] == 0)
      vote, soft = [], []
      for row in rows:
        models = np.flatnonzero(row)
        votes = np.stack([(pred[models] == j).sum(0) for j in range(4)], -1)
        vote.append(np.mean(numpy_vote(votes, probs[models].sum(0)) == labels))
        soft.append(np.mean(probs[models].sum(0).argmax(-1) == labels))
      np.testing.assert_allclose(r['ensemble_size_accuracy_vote'][g, level], np.mean(vote),
                                 rtol=1e-6)
      np.testing.assert_allclose(r['ensemble_size_accuracy_softmax'][g, level], np.mean(soft),
                                 rtol=1e-6)
  # The largest size is the whole group's ensemble.
  np.testing.assert_allclose(r['ensemble_size_accuracy_vote'][:, -1][0],
                             r['ensemble_accuracy_vote'][0], rtol=1e-6)
  np.testing.assert_allclose(r['ensemble_size_accuracy_softmax'][1, 2],
                             r['ensemble_accuracy_softmax'][1], rtol=1e-6)


def test_group_means_run_at_highest_precision():
  """At default precision GPUs feed matmuls TF32 (10-bit mantissa): accuracies would move
  in their third digit. Every contraction of the group statistics must ask for HIGHEST."""
  acc = jnp.linspace(0.9, 0.95, 8)
  member = jnp.asarray(np.eye(3, dtype=np.float32)[GROUPS])
  for fn in (variance.group_mean_var, lambda x, m: variance.group_corr(x, x * x, m)):
    dots = [e for e in jax.make_jaxpr(fn)(acc, member).eqns if e.primitive.name == 'dot_general']
    assert dots and all(e.params['precision'] == (jax.lax.Precision.HIGHEST,) * 2 for e in dots)


def test_report_lines(planted):
  _, _, results = planted
  lines = analysis.report_lines(results, group_names=['lr=0.5', 'lr=1.0', 'solo'])
  text = '\n'.join(lines)
  assert lines[0].startswith('lr=0.5 (4 models): accuracy') and 'solo (1 models)' in text
  assert all(isinstance(line, str) for line in lines) and 'ensemble accuracy' in text


def test_results_hold_every_field_on_its_axis(planted):
  _, _, r = planted
  assert isinstance(r, analysis.Results)
  # Without the difficulty switches of init and with 10 classes, these stay empty.
  optional = {'normalized_margin_quantiles', 'mean_depth', 'calibrated_binary_std',
              'calibrated_binary_std_ci', 'calibrated_binary_full_std',
              'calibrated_binary_full_std_ci', 'binary_premise_ratio',
              'binary_premise_ratio_ci', 'normalized_margin_quantile_accuracy_corr',
              'mean_prediction_depth', 'depth_accuracy_corr', 'depth_mean', 'depth_std',
              'normalized_margin', 'prediction_depth'}
  for part, leading in (('model', (8,)), ('group', (3,)), ('example', (3,)),
                        ('model_example', (8, 301)), ('pair', (8, 8))):
    record = getattr(r, part)
    assert set(r.present(part)) == set(record._fields) - optional, part
    for name, value in r.present(part).items():
      assert value.shape[:len(leading)] == leading, name
      assert r[name] is value and name in r
  assert 'prediction_depth' not in r


def test_results_from_flat_places_fields_and_refuses_unknown_names():
  r = analysis.Results.from_flat({'accuracy': np.ones(2), 'churn': np.zeros((2, 2))})
  assert r.model.accuracy is r['accuracy'] and r.pair.churn is r['churn']
  assert 'accuracy' in r and 'std_accuracy' not in r and r.group.std_accuracy is None
  assert r.keys() == ['accuracy', 'churn'] and r[0] is r.model
  with pytest.raises(KeyError):
    r['std_accuracy']  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match='accuracyy'):
    analysis.Results.from_flat({'accuracyy': np.ones(2)})
