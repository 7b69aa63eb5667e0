"""Difficulty aggregates of the analysis against NumPy formulas."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from varjax import analysis
from varjax.analysis import accumulate
from varjax.analysis import difficulty

GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 2])  # group 2 has one model: NaN statistics
LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)


def member_of(groups, num_groups=3):
  return np.eye(num_groups + 1, dtype=np.float32)[groups][:, :num_groups]


def numpy_group_corr(x, y, groups, g):
  rows = groups == g
  return np.corrcoef(x[rows], y[rows])[0, 1] if rows.sum() >= 2 else np.nan


def planted_run(seed=0, num_models=8, n=257, k=5, dim=6):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(0, 1, (num_models, n, k))
  logits[:, np.arange(n), labels] += rng.normal(1, 1.5, n) + rng.normal(0, 0.5, (num_models, 1))
  depth = rng.integers(0, 4, (num_models, n))
  features = rng.normal(0, rng.uniform(0.5, 3, (num_models, 1, 1)), (num_models, n, dim))
  feature_margin = rng.normal(size=(num_models, n))
  return labels, logits.astype(np.float32), depth, features.astype(np.float32), feature_margin


def run_analysis(labels, logits, depth, features, feature_margin, order, batch=50):
  num_models, n, k = logits.shape
  state = accumulate.init(num_models, n, k, GROUPS, alpha_trim_resamples=2,
                          margin_quantiles=LEVELS, prediction_depth=True,
                          feature_dim=features.shape[-1])
  for start in range(0, n, batch):
    ids = order[start:start + batch]
    f = features[:, ids].astype(np.float64)
    extras = {'depth': jnp.asarray(depth[:, ids]),
              'feature_sum': jnp.asarray(f.sum(1), jnp.float32),
              'feature_sq': jnp.asarray((f * f).sum((1, 2)), jnp.float32),
              'feature_margin': jnp.asarray(feature_margin[:, ids], jnp.float32)}
    state = accumulate.update(state, jnp.asarray(logits[:, ids]), jnp.asarray(labels[ids]),
                              jnp.asarray(ids), extras)
  return jax.tree.map(np.asarray, jax.jit(analysis.finalize)(state))


def test_margins_depth_and_normalized_margins_match_numpy():
  labels, logits, depth, features, feature_margin = planted_run()
  n = len(labels)
  r = run_analysis(labels, logits, depth, features, feature_margin,
                   np.random.default_rng(1).permutation(n))
  # Margins: true-class logit minus the largest other.
  other = logits.copy()
  other[:, np.arange(n), labels] = -np.inf
  margin = logits[:, np.arange(n), labels] - other.max(-1)
  np.testing.assert_allclose(r['margin'], margin, rtol=1e-6)
  np.testing.assert_allclose(r['margin_quantiles'], np.quantile(margin, LEVELS, axis=1).T,
                             rtol=1e-5, atol=1e-6)
  accuracy = (logits.argmax(-1) == labels).mean(1)
  for g in range(3):
    want = [numpy_group_corr(np.quantile(margin, q, axis=1), accuracy, GROUPS, g)
            for q in LEVELS]
    np.testing.assert_allclose(r['margin_quantile_accuracy_corr'][g], want, rtol=1e-4,
                               atol=1e-5)
  # Normalized margin: over the root of the features' total variance (ddof 0).
  total_variance = np.array([np.trace(np.cov(f.T, ddof=0)) for f in features.astype(np.float64)])
  normalized = feature_margin / np.sqrt(total_variance)[:, None]
  np.testing.assert_allclose(r['normalized_margin'], normalized, rtol=1e-4)
  np.testing.assert_allclose(r['normalized_margin_quantiles'],
                             np.quantile(normalized, LEVELS, axis=1).T, rtol=1e-4, atol=1e-6)
  # Depth: per example over each group's models, and its correlation with p_i.
  np.testing.assert_array_equal(r['prediction_depth'], depth)
  np.testing.assert_allclose(r['mean_depth'], depth.mean(1), rtol=1e-6)
  correct = logits.argmax(-1) == labels
  for g in range(3):
    rows = GROUPS == g
    mean = depth[rows].mean(0)
    np.testing.assert_allclose(r['depth_mean'][g], mean, rtol=1e-5)
    if rows.sum() >= 2:
      np.testing.assert_allclose(r['depth_std'][g], depth[rows].std(0, ddof=1), rtol=1e-4,
                                 atol=1e-5)
    else:
      assert np.isnan(r['depth_std'][g]).all()
    np.testing.assert_allclose(r['mean_prediction_depth'][g], mean.mean(), rtol=1e-5)
    p = correct[rows].mean(0)
    want = np.corrcoef(mean, p)[0, 1] if mean.std() > 0 and p.std() > 0 else np.nan
    np.testing.assert_allclose(r['depth_accuracy_corr'][g], want, rtol=1e-4, atol=1e-6)


def test_normalized_margin_ignores_the_scale_of_the_features():
  labels, logits, depth, features, feature_margin = planted_run(seed=2)
  order = np.arange(len(labels))
  base = run_analysis(labels, logits, depth, features, feature_margin, order)
  # Scaling a model's embedding scales its geometric margins by the same factor.
  scale = np.linspace(0.1, 10, len(GROUPS))
  scaled = run_analysis(labels, logits, depth, features * scale[:, None, None].astype(np.float32),
                        feature_margin * scale[:, None], order)
  np.testing.assert_allclose(scaled['normalized_margin'], base['normalized_margin'], rtol=1e-4)


def test_update_without_the_requested_extras_names_them():
  state = accumulate.init(2, 4, 3, prediction_depth=True, alpha_trim_resamples=1)
  try:
    accumulate.update(state, jnp.zeros((2, 4, 3)), jnp.zeros(4, jnp.int32), jnp.arange(4))
  except ValueError as e:
    assert "'depth'" in str(e)
  else:
    raise AssertionError('update without depth should fail')


def test_forgetting_stats_match_numpy():
  """Never-learned (never correct) pairs are counted apart, not as 0 forgetting events."""
  rng = np.random.default_rng(3)
  num_models, probes, epochs = len(GROUPS), 50, 6
  correct = rng.random((epochs, num_models, probes)) < rng.uniform(0.05, 0.9, probes)
  correct[:, :, :3] = False                             # three probes nobody ever gets right
  correct[:, 4:7, 3] = False                            # one that group 1 never gets right
  learned = np.full((num_models, probes), -1)
  for e in range(epochs):                               # first epoch of the final correct run
    learned = np.where(correct[e:].all(0) & (learned < 0), e + 1, learned)
  events = (correct[:-1] & ~correct[1:]).sum(0)
  ever = correct.any(0)
  dynamics = {'correct': correct[-1].astype(np.int32), 'forgetting_events': events,
              'learned_epoch': learned, 'cumulative_correct': correct.sum(0),
              'epochs': np.full(num_models, epochs)}
  member = member_of(np.where(np.arange(num_models) == 1, -1, GROUPS))  # model 1 diverged
  r = jax.tree.map(np.asarray, jax.jit(difficulty.forgetting_stats)(
      jax.tree.map(jnp.asarray, dynamics), jnp.asarray(member)))
  np.testing.assert_allclose(r['mean_forgetting_events'],
                             [events[m][ever[m]].mean() for m in range(num_models)], rtol=1e-6)
  np.testing.assert_allclose(r['never_learned_fraction'], (~ever).mean(1), rtol=1e-6)
  np.testing.assert_allclose(r['unforgettable_fraction'], (ever & (events == 0)).mean(1),
                             rtol=1e-6)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # NumPy's nanmean of all-NaN columns
    for g in range(3):
      rows = member[:, g] > 0
      e, v = events[rows].astype(float), ever[rows]
      np.testing.assert_allclose(r['forgetting_mean'][g],
                                 np.nanmean(np.where(v, e, np.nan), axis=0), rtol=1e-5)
      assert np.all(np.isnan(r['forgetting_mean'][g][:3]))
      np.testing.assert_allclose(r['never_learned'][g], (~v).mean(0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(r['group_forgetting_events'][g], e[v].mean(), rtol=1e-5)
      np.testing.assert_allclose(r['group_never_learned'][g], (~v).mean(), rtol=1e-5)
      np.testing.assert_allclose(r['probe_accuracy'][g], correct[-1][rows].mean(0), rtol=1e-5)
      np.testing.assert_allclose(r['cumulative_accuracy'][g], correct[:, rows].mean((0, 1)),
                                 rtol=1e-5)
      np.testing.assert_allclose(r['learned_epoch_mean'][g], np.nanmean(
          np.where(learned[rows] > 0, learned[rows], np.nan), axis=0), rtol=1e-5)
      f, p = np.nanmean(np.where(v, e, np.nan), axis=0), correct[-1][rows].mean(0)
      ok = np.isfinite(f)
      want = np.corrcoef(f[ok], p[ok])[0, 1] if f[ok].std() > 0 and p[ok].std() > 0 else np.nan
      np.testing.assert_allclose(r['forgetting_accuracy_corr'][g], want, rtol=1e-4, atol=1e-6)
  assert np.isnan(r['forgetting_mean'][1][3]) and not np.isnan(r['forgetting_mean'][0][3])
