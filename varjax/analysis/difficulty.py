"""Example difficulty across the ensemble: margins, prediction depth, forgetting.

Aggregates the per-model probes of varjax/measures/difficulty.py over models, on the
device. ``member`` is the (N, G) one-hot group membership of the analysis
state (a diverged model's row is zero, so it joins no group statistic).

Example:
  >>> r = margin_stats(margin, accuracy, member, jnp.array([0.1, 0.5, 0.9]))  # doctest: +SKIP
  >>> r['margin_quantile_accuracy_corr']   # (G, 3): Pearson r across models  # doctest: +SKIP
"""

import jax
import jax.numpy as jnp

from varjax.analysis import variance
from varjax.analysis.variance import HIGHEST



def row_correlation(x, y, mask=None):
  """Pearson r of each row pair of x and y (G, n) across examples, shape (G,).

  ``mask`` (G, n) bool: only the examples where it holds count (x may be NaN
  elsewhere). NaN for rows without spread.
  """
  mask = jnp.ones(x.shape, bool) if mask is None else mask
  w = mask.astype(jnp.float32)
  count = jnp.maximum(w.sum(-1, keepdims=True), 1)
  x, y = jnp.where(mask, x, 0), jnp.where(mask, y, 0)
  dx = (x - (w * x).sum(-1, keepdims=True) / count) * w
  dy = (y - (w * y).sum(-1, keepdims=True) / count) * w
  vx, vy = (dx * dx).sum(-1), (dy * dy).sum(-1)
  ok = (vx > 0) & (vy > 0)
  return jnp.where(ok, (dx * dy).sum(-1) / jnp.sqrt(jnp.where(ok, vx * vy, 1)), jnp.nan)


def group_mean_std(values, member):
  """Mean and std (ddof 1) over each group's models of per-model rows (N, n) -> (G, n) each.

  The std is NaN for groups of fewer than 2 models.
  """
  size = member.sum(0)[:, None]
  values = values.astype(jnp.float32)
  total = jnp.matmul(member.T, values, precision=HIGHEST)
  squares = jnp.matmul(member.T, values * values, precision=HIGHEST)
  mean = total / jnp.maximum(size, 1)
  var = (squares - size * mean * mean) / jnp.maximum(size - 1, 1)
  return (jnp.where(size >= 1, mean, jnp.nan),
          jnp.where(size >= 2, jnp.sqrt(jnp.maximum(var, 0)), jnp.nan))


def margin_stats(margin, accuracy, member, levels, normalized=None):
  """Per-model margin quantiles and their correlation with test accuracy across models.

  Args:
    margin: (N, n) true-class logit margins.
    accuracy: (N,) test accuracy.
    member: (N, G) group membership.
    levels: (Q,) quantile levels in [0, 1] (linear interpolation, as np.quantile).
    normalized: optional (N, n) normalized margins, treated the same way.

  Returns:
    ``margin_quantiles`` (N, Q), ``margin_quantile_accuracy_corr`` (G, Q), and
    with ``normalized`` the same under ``normalized_margin_quantiles`` and
    ``normalized_margin_quantile_accuracy_corr``.
  """
  out = {}
  for name, values in (('margin', margin), ('normalized_margin', normalized)):
    if values is None:
      continue
    quantiles = jnp.quantile(values, levels, axis=1).T                  # (N, Q)
    out[f'{name}_quantiles'] = quantiles
    out[f'{name}_quantile_accuracy_corr'] = jax.vmap(
        lambda q: variance.group_corr(q, accuracy, member), out_axes=1)(quantiles.T)
  return out


def normalized_margin(feature_margin, feature_sum, feature_sq, num_examples):
  """Feature-space margins (N, n) over the root total variance of each model's features.

  ``feature_sum`` (N, D) and ``feature_sq`` (N,) are the sums over the test set
  of the features and of their squared norms.
  """
  mean = feature_sum / num_examples
  total_variance = feature_sq / num_examples - jnp.sum(mean * mean, -1)
  return feature_margin / jnp.sqrt(jnp.maximum(total_variance, 1e-30))[:, None]


def depth_stats(depth, member, example_accuracy):
  """Prediction-depth summaries from per-model depths (N, n).

  Returns ``mean_depth`` (N,) per model; ``depth_mean`` and ``depth_std`` (G, n)
  per example over each group's models; per group ``mean_prediction_depth`` and
  ``depth_accuracy_corr`` (Pearson r across examples of the mean depth with
  the example accuracy p_i; negative when deep examples are the hard ones).
  """
  depth_mean, depth_std = group_mean_std(depth, member)
  return {'mean_depth': depth.astype(jnp.float32).mean(1),
          'depth_mean': depth_mean, 'depth_std': depth_std,
          'mean_prediction_depth': depth_mean.mean(1),
          'depth_accuracy_corr': row_correlation(depth_mean, example_accuracy)}


def forgetting_stats(records, member):
  """Forgetting and learning-speed summaries from the stacked records (N, P) of training.

  Toneva et al. (2019) count an example that is never classified correctly as
  forgotten infinitely often; here such (model, example) pairs are counted
  apart (``never_learned``) and left out of every forgetting-event mean, so
  "0 events" always means learned and kept. ``learned_epoch`` (per record)
  is the epoch after which the example stayed correct up to the last epoch.

  Returns per model (N,) ``mean_forgetting_events`` (over the probes it ever
  got right; NaN if none), ``never_learned_fraction``,
  ``unforgettable_fraction`` (got right and never forgotten); per group and
  probe example (G, P) ``forgetting_mean`` (over the models that ever got it
  right; NaN if none did), ``never_learned`` (fraction of models never
  right), ``learned_epoch_mean`` (over the models that end correct; NaN if
  none), ``cumulative_accuracy`` (fraction of epochs correct: a
  learning-speed proxy of the C-score) and ``probe_accuracy`` (p_i after the
  last epoch); per group (G,) ``group_forgetting_events`` (mean over the
  group's ever-right (model, probe) pairs), ``group_never_learned`` and
  ``forgetting_accuracy_corr``, the Pearson r across the probes that some model
  got right of ``forgetting_mean`` with ``probe_accuracy``.

  Example:
    >>> stats = jax.jit(forgetting_stats)(state['forgetting'], member)   # doctest: +SKIP
  """
  events = records['forgetting_events'].astype(jnp.float32)
  ever = (records['cumulative_correct'] > 0).astype(jnp.float32)
  learned = (records['learned_epoch'] >= 0).astype(jnp.float32)
  epochs = jnp.maximum(records['epochs'], 1).astype(jnp.float32)[:, None]
  size = member.sum(0)[:, None]
  total = lambda v: jnp.matmul(member.T, v, precision=HIGHEST)
  mean = lambda v: total(v) / jnp.maximum(size, 1)
  ratio = lambda a, b: jnp.where(b > 0, a / jnp.maximum(b, 1), jnp.nan)
  ever_count, ever_events = total(ever), total(events * ever)
  forgetting_mean = ratio(ever_events, ever_count)
  probe_accuracy = mean(records['correct'].astype(jnp.float32))
  learned_total = total(jnp.where(learned > 0, records['learned_epoch'], 0).astype(jnp.float32))
  return {
      'mean_forgetting_events': ratio((events * ever).sum(1), ever.sum(1)),
      'never_learned_fraction': (1 - ever).mean(1),
      'unforgettable_fraction': (ever * (events == 0)).mean(1),
      'forgetting_mean': forgetting_mean,
      'never_learned': mean(1 - ever),
      'learned_epoch_mean': ratio(learned_total, total(learned)),
      'cumulative_accuracy': mean(records['cumulative_correct'] / epochs),
      'probe_accuracy': probe_accuracy,
      'group_forgetting_events': ratio(ever_events.sum(1), ever_count.sum(1)),
      'group_never_learned': jnp.where(size[:, 0] >= 1, mean(1 - ever).mean(1), jnp.nan),
      'forgetting_accuracy_corr': row_correlation(forgetting_mean, probe_accuracy,
                                                  ever_count > 0),
  }
