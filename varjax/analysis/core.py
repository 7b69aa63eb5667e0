"""finalize (accumulators -> metrics) and analyze (a whole logits array at once).

Example:
  >>> results = analyze(logits, labels, groups=[0, 0, 1, 1])  # doctest: +SKIP
  >>> results.group.std_accuracy, results['distribution_std']  # doctest: +SKIP
"""

import functools

import jax
import jax.numpy as jnp

from varjax.analysis import accumulate
from varjax.analysis import agreement
from varjax.analysis import calibration
from varjax.analysis import difficulty
from varjax.analysis import power
from varjax.analysis import results as result_records
from varjax.analysis import trimming
from varjax.analysis import variance

def finalize(state):
  """All metrics from the accumulators, as ``results.Results``; jit-compatible, on the device.

  Statistics that need two models are NaN for smaller groups; intervals are
  95% (``std_accuracy_ci`` chi-squared, ``distribution_std_ci`` its shift by
  V_ind: analysis/variance.py). Example difficulty (analysis/difficulty.py)
  and the optional accumulators (prediction depth, normalized margins) fill
  their fields when the state holds them.

  Example:
    >>> results = jax.jit(finalize)(state)   # doctest: +SKIP
  """
  member = state['member']
  n = state['margin'].shape[1]
  acc = state['correct'] / n
  acc_even = state['correct_even'] / ((n + 1) // 2)
  acc_odd = state['correct_odd'] / max(n // 2, 1)
  spread = variance.variance_stats(acc, acc_even, acc_odd, member, state['group_correct'],
                                   state['chi2_table'])
  results = {'accuracy': acc, 'accuracy_even': acc_even, 'accuracy_odd': acc_odd,
             'ece': calibration.ece(state['ece_conf'], state['ece_correct'], n),
             'margin_median': jnp.median(state['margin'], axis=1), 'margin': state['margin'],
             **_alpha_trim(state), **spread, **_agreement(state, spread)}
  deltas, z = state['seeds_needed_deltas'], state['seeds_needed_z']
  results['seeds_needed'] = power.seeds_per_arm(spread['std_accuracy'], deltas, z)
  results['seeds_needed_ci'] = jnp.moveaxis(
      power.seeds_per_arm(spread['std_accuracy_ci'], deltas, z), -2, -1)
  if state['votes'].shape[-1] == 2:  # two classes: the study's Theorem 3
    results.update(variance.binary_law_stats(spread, state['group_correct'], n,
                                             state['chi2_table']))
  results.update(_difficulty(state, acc, results['example_accuracy']))
  return result_records.Results.from_flat(results)


def _alpha_trim(state):
  """Per model: the mean alpha-trimming level over the test-set resamples in which a
  level of the grid passed, and the share of resamples in which none did."""
  n = state['margin'].shape[1]
  example_keys = jax.random.wrap_key_data(state['trim_keys'])
  weights = jax.vmap(functools.partial(trimming.bootstrap_weights, n=n))(example_keys)
  levels = trimming.alpha_trim_levels(state['margin'], state['member'], state['alpha_grid'],
                                      weights)
  beyond = levels == trimming.BEYOND_GRID
  passed = jnp.sum(~beyond, axis=0)
  return {'alpha_trim': jnp.where(passed > 0, jnp.sum(jnp.where(beyond, 0, levels), 0)
                                  / jnp.maximum(passed, 1), jnp.nan),
          'alpha_trim_beyond_grid': jnp.mean(beyond.astype(jnp.float32), 0) + jnp.where(
              jnp.isnan(levels[0]), jnp.nan, 0)}


def _agreement(state, spread):
  """Pairs of models (churn, error kappa), the groups' agreement, ensembles and calibration."""
  member = state['member']
  num_models, n = state['margin'].shape
  size = member.sum(0)
  pair = agreement.pairwise(state['both_correct'], state['same_pred'], state['correct'], n)
  vote_acc, softmax_acc = agreement.ensemble_accuracy(
      state['votes'], state['prob_sum'], state['labels'], size)
  disagreement = agreement.mean_disagreement(state['votes'], size)
  curve = lambda correct: agreement.size_curve(correct, state['subset_slot'],
                                               state['ensemble_sizes'], n)
  return {
      **pair,
      'ensemble_sizes': state['ensemble_sizes'],
      'ensemble_size_accuracy_vote': curve(state['subset_correct_vote']),
      'ensemble_size_accuracy_softmax': curve(state['subset_correct_softmax']),
      'mean_disagreement': disagreement,
      'disagreement_error_ratio': disagreement / spread['mean_error'],
      'cace': calibration.cace(state['votes'], state['labels'], size, num_models),
      'error_consistency': agreement.group_pair_mean(pair['error_kappa'], member),
      'mean_churn': agreement.group_pair_mean(pair['churn'], member),
      'ensemble_accuracy_vote': vote_acc,
      'ensemble_accuracy_softmax': softmax_acc,
      'vote_counts': state['votes'],
  }


def _difficulty(state, accuracy, example_accuracy):
  """Margins' quantiles and correlations, and the optional probes' statistics."""
  n = state['margin'].shape[1]
  out, normalized = {}, None
  if 'feature_margin' in state:
    normalized = difficulty.normalized_margin(state['feature_margin'], state['feature_sum'],
                                              state['feature_sq'], n)
    out['normalized_margin'] = normalized
  out.update(difficulty.margin_stats(state['margin'], accuracy, state['member'],
                                     state['margin_quantile_levels'], normalized))
  if 'depth' in state:
    out['prediction_depth'] = state['depth']
    out.update(difficulty.depth_stats(state['depth'], state['member'], example_accuracy))
  return out


def analyze(logits, labels, groups=None, batch_size=1000, **init_kwargs):
  """Streams a full (N, n, K) logits array through init / update / finalize.

  Example:
    >>> results = analyze(logits, labels, alpha_trim_resamples=20)   # doctest: +SKIP
  """
  num_models, n, k = logits.shape
  state = accumulate.init(num_models, n, k, groups, **init_kwargs)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    state = accumulate.update(state, logits[:, start:stop], labels[start:stop],
                              jnp.arange(start, stop, dtype=jnp.int32))
  return jax.jit(finalize)(state)
