"""varjax.analysis against independent NumPy references and the theory of SPEC §2-3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import optimize, stats

from varjax import analysis
from varjax.analysis import trimming

GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 2])
PER_MODEL = ('accuracy', 'accuracy_even', 'accuracy_odd', 'ece', 'margin_median')
PER_GROUP = ('num_models', 'mean_accuracy', 'std_accuracy', 'independent_std',
             'independence_ratio', 'distribution_var', 'distribution_std', 'split_half_corr',
             'mean_disagreement', 'mean_error', 'cace', 'error_consistency', 'mean_churn',
             'ensemble_accuracy_vote', 'ensemble_accuracy_softmax')


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
  for g in range(groups.max() + 1):
    idx = np.flatnonzero(groups == g)
    m = len(idx)
    p = c[idx].mean(0)
    votes = np.stack([(pred[idx] == j).sum(0) for j in range(k)], -1)
    mean_probs = probs[idx].mean(0)
    row = {'num_models': m, 'mean_accuracy': acc[idx].mean(), 'mean_error': 1 - acc[idx].mean(),
           'ensemble_accuracy_vote': np.mean(votes.argmax(-1) == labels),
           'ensemble_accuracy_softmax': np.mean(mean_probs.argmax(-1) == labels)}
    cace = 0.0
    for cls in range(k):
      for level in range(m + 1):
        at = votes[:, cls] == level
        cace += abs(level / m * at.sum() - np.sum(at & (labels == cls)))
    row['cace'] = cace / n
    if m >= 2:
      var = acc[idx].var(ddof=1)
      ind = np.sum(m / (m - 1) * p * (1 - p)) / n ** 2
      pairs = [(a, b) for a in idx for b in idx if a < b]
      row.update(
          std_accuracy=np.sqrt(var), independent_std=np.sqrt(ind), independence_ratio=var / ind,
          distribution_var=n / (n - 1) * (var - ind),
          distribution_std=np.sqrt(max(0, n / (n - 1) * (var - ind))),
          split_half_corr=np.corrcoef(r['accuracy_even'][idx], r['accuracy_odd'][idx])[0, 1],
          mean_disagreement=np.mean(1 - (votes * (votes - 1)).sum(-1) / (m * (m - 1))),
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
                                      batch_size=128, num_bootstrap=16, alpha_trim_resamples=16))
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
                                      batch_size=128, num_bootstrap=16, alpha_trim_resamples=16))
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
  state = analysis.init(len(GROUPS), n, 5, GROUPS, num_bootstrap=16, alpha_trim_resamples=16)
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
  state = analysis.init(len(GROUPS), 301, 5, GROUPS, num_bootstrap=16, alpha_trim_resamples=16)
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
    state = analysis.init(8, 120, 4, GROUPS, num_bootstrap=4, alpha_trim_resamples=4)
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
                                jnp.asarray(labels), num_bootstrap=2, alpha_trim_resamples=2))
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
                                jnp.asarray(labels), num_bootstrap=2, alpha_trim_resamples=2))
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
  r = to_numpy(analysis.analyze(jnp.asarray(logits), jnp.asarray(labels), num_bootstrap=2,
                                alpha_trim_resamples=2))
  assert abs(r['mean_disagreement'][0] - r['mean_error'][0]) < 0.02
  # Overconfident models (all predict each example's likeliest class) are miscalibrated.
  sure = np.eye(k, dtype=np.float32)[np.repeat(pi.argmax(-1)[None], num_models, 0)] * 4
  overconfident = to_numpy(analysis.analyze(jnp.asarray(sure), jnp.asarray(labels),
                                            num_bootstrap=2, alpha_trim_resamples=2))
  assert overconfident['cace'][0] > 2 * r['cace'][0]
  assert overconfident['mean_disagreement'][0] < 1e-6 < overconfident['mean_error'][0] - 0.2


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
      np.testing.assert_allclose(got[b, m], passed[0] if passed else 0.5, err_msg=(b, m))
  assert got[:, 2].mean() > got[:, :2].mean()


def test_alpha_trim_is_zero_for_identical_models():
  logits, labels = planted_logits(1, 200, 5, seed=9)
  r = to_numpy(analysis.analyze(jnp.asarray(np.repeat(logits, 4, 0)), jnp.asarray(labels),
                                num_bootstrap=8, alpha_trim_resamples=8))
  np.testing.assert_array_equal(r['alpha_trim'], 0)
  np.testing.assert_allclose(r['mean_churn'], 0, atol=1e-6)


def test_std_accuracy_ci_brackets_std_and_matches_numpy_bootstrap():
  rng = np.random.default_rng(10)
  acc = rng.normal(0.9, 0.01, 40).astype(np.float32)
  member = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
  keys = jax.random.split(jax.random.key(0), 2000)
  ci = np.asarray(analysis.variance.std_accuracy_ci(jnp.asarray(acc), jnp.asarray(member),
                                                    keys))
  for g in range(2):
    a = acc[g::2]
    boot = [rng.choice(a, len(a)).std(ddof=1) for _ in range(2000)]
    want = np.percentile(boot, [2.5, 97.5])
    assert ci[g, 0] < a.std(ddof=1) < ci[g, 1]
    np.testing.assert_allclose(ci[g], want, rtol=0.15)
  again = analysis.variance.std_accuracy_ci(jnp.asarray(acc), jnp.asarray(member), keys)
  np.testing.assert_array_equal(np.asarray(again), ci)


def test_report_lines(planted):
  _, _, results = planted
  lines = analysis.report_lines(results, group_names=['lr=0.5', 'lr=1.0', 'solo'])
  text = '\n'.join(lines)
  assert lines[0].startswith('lr=0.5 (4 models): accuracy') and 'solo (1 models)' in text
  assert all(isinstance(line, str) for line in lines) and 'ensemble accuracy' in text


def test_key_lists_name_every_result_by_its_shape(planted):
  _, _, r = planted
  names = (analysis.PER_MODEL_KEYS + analysis.PER_GROUP_KEYS + analysis.PER_EXAMPLE_KEYS
           + analysis.PAIRWISE_KEYS + analysis.PER_MODEL_EXAMPLE_KEYS)
  assert len(set(names)) == len(names) and set(analysis.OPTIONAL_KEYS) <= set(names)
  # Without the difficulty switches of init, exactly the non-optional keys.
  assert sorted(k for k in names if k not in analysis.OPTIONAL_KEYS) == sorted(r)
  present = lambda keys: [k for k in keys if k in r]
  assert all(r[k].shape[0] == 8 for k in present(analysis.PER_MODEL_KEYS))
  assert all(r[k].shape[0] == 3 for k in present(analysis.PER_GROUP_KEYS
                                                  + analysis.PER_EXAMPLE_KEYS))
  assert all(r[k].shape == (8, 8) for k in analysis.PAIRWISE_KEYS)
  assert all(r[k].shape == (8, 301) for k in present(analysis.PER_MODEL_EXAMPLE_KEYS))
