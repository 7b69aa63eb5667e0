"""finalize (accumulators -> metrics) and analyze (a whole logits array at once).

Example:
  >>> results = analyze(logits, labels, groups=[0, 0, 1, 1])  # doctest: +SKIP
  >>> results['std_accuracy'], results['distribution_std']                         # doctest: +SKIP
"""

import functools

import jax
import jax.numpy as jnp

from varjax.analysis import accumulate
from varjax.analysis import agreement
from varjax.analysis import calibration
from varjax.analysis import difficulty
from varjax.analysis import power
from varjax.analysis import trimming
from varjax.analysis import variance

# The shapes of finalize's results, by name (shapes alone are ambiguous when N = G).
PER_MODEL_KEYS = ('accuracy', 'accuracy_even', 'accuracy_odd', 'ece', 'margin_median',
                  'alpha_trim', 'alpha_trim_beyond_grid', 'margin_quantiles',
                  'normalized_margin_quantiles', 'mean_depth')
PER_GROUP_KEYS = ('num_models', 'mean_accuracy', 'std_accuracy', 'std_accuracy_ci',
                  'std_accuracy_ci_bonett', 'accuracy_skewness', 'accuracy_excess_kurtosis',
                  'independent_std', 'independence_ratio', 'distribution_var',
                  'distribution_std', 'distribution_std_ci', 'split_half_corr',
                  'mean_disagreement', 'mean_error', 'cace', 'error_consistency', 'mean_churn',
                  'ensemble_accuracy_vote', 'ensemble_accuracy_softmax', 'ensemble_sizes',
                  'ensemble_size_accuracy_vote', 'ensemble_size_accuracy_softmax',
                  'seeds_needed', 'seeds_needed_ci', 'disagreement_error_ratio',
                  'calibrated_binary_std', 'calibrated_binary_std_ci',
                  'calibrated_binary_full_std', 'calibrated_binary_full_std_ci',
                  'binary_premise_ratio', 'binary_premise_ratio_ci',
                  'margin_quantile_accuracy_corr',
                  'normalized_margin_quantile_accuracy_corr', 'mean_prediction_depth',
                  'depth_accuracy_corr')
PER_EXAMPLE_KEYS = ('example_accuracy', 'vote_counts', 'depth_mean', 'depth_std')
PAIRWISE_KEYS = ('churn', 'error_kappa')
# Per model and example (N, n).
PER_MODEL_EXAMPLE_KEYS = ('margin', 'normalized_margin', 'prediction_depth')
# Present only when the analysis state accumulates them (init's switches).
OPTIONAL_KEYS = ('calibrated_binary_std', 'calibrated_binary_std_ci',
                 'calibrated_binary_full_std', 'calibrated_binary_full_std_ci',
                 'binary_premise_ratio', 'binary_premise_ratio_ci',
                 'normalized_margin_quantiles', 'mean_depth',
                 'normalized_margin_quantile_accuracy_corr', 'mean_prediction_depth',
                 'depth_accuracy_corr', 'depth_mean', 'depth_std', 'normalized_margin',
                 'prediction_depth')


def finalize(state):
  """All metrics from the accumulators; jit-compatible, runs on the device.

  Returns a dict of arrays: per model (N,) ``accuracy``, ``accuracy_even``,
  ``accuracy_odd``, ``ece``, ``margin_median``, ``alpha_trim`` (mean over the
  test-set resamples in which a grid level passed; NaN if none did) and
  ``alpha_trim_beyond_grid`` (the fraction of resamples in which none did);
  per group (G,) ``num_models``, ``mean_accuracy``, ``std_accuracy``,
  ``std_accuracy_ci`` (G, 2), ``std_accuracy_ci_bonett`` (G, 2; valid for
  non-normal accuracies, from 5 models), ``accuracy_skewness`` and
  ``accuracy_excess_kurtosis`` (from 3 and 4 models), ``independent_std``,
  ``independence_ratio``,
  ``distribution_var``, ``distribution_std``, ``distribution_std_ci`` (G, 2),
  ``split_half_corr``, ``mean_disagreement``, ``mean_error``,
  ``disagreement_error_ratio`` (1 for a class-wise calibrated ensemble, any
  number of classes: Jiang et al.'s GDE), ``cace``,
  ``error_consistency``, ``mean_churn``, ``ensemble_accuracy_vote``,
  ``ensemble_accuracy_softmax``; ensemble accuracy against ensemble size,
  ``ensemble_sizes`` (G, L; 0 pads) with ``ensemble_size_accuracy_vote`` and
  ``ensemble_size_accuracy_softmax`` (G, L; NaN pads), each the mean over the
  subsets of ``init``; ``seeds_needed`` (G, D), seeds per arm to detect each
  of ``seeds_needed_deltas`` (analysis/power.py), and ``seeds_needed_ci``
  (G, D, 2) at the ends of ``std_accuracy_ci``; per group and example
  ``example_accuracy`` (G, n) and ``vote_counts`` (G, n, K); pairwise (N, N)
  ``churn`` and ``error_kappa``. Statistics that need two models are NaN for
  smaller groups. Intervals are 95%: ``std_accuracy_ci`` chi-squared,
  ``distribution_std_ci`` its shift by V_ind (analysis/variance.py).

  Two classes only (Theorem 3 of the variance study, analysis/variance.py
  ``binary_law_stats``): ``calibrated_binary_std`` (Eq. 6, sqrt(err/(2n))),
  ``calibrated_binary_full_std`` (Eq. 5 with the measured Var_D, clamped at
  0), and the calibration premise ``binary_premise_ratio`` (V_ind / (err/(2n)),
  1 when calibrated), each (G,) with a (G, 2) ``_ci``.

  Example difficulty (analysis/difficulty.py): per model ``margin_quantiles``
  (N, Q) and per group ``margin_quantile_accuracy_corr`` (G, Q); per model and
  example ``margin`` (N, n). With the optional accumulators: the same for
  ``normalized_margin``; ``prediction_depth`` (N, n), ``mean_depth`` (N,),
  ``depth_mean`` / ``depth_std`` (G, n), ``mean_prediction_depth`` and
  ``depth_accuracy_corr`` (G,).

  Example:
    >>> results = jax.jit(finalize)(state)   # doctest: +SKIP
  """
  member = state['member']
  num_models, n = state['margin'].shape
  size = member.sum(0)
  acc = state['correct'] / n
  acc_even = state['correct_even'] / ((n + 1) // 2)
  acc_odd = state['correct_odd'] / max(n // 2, 1)

  example_keys = jax.random.wrap_key_data(state['trim_keys'])
  weights = jax.vmap(functools.partial(trimming.bootstrap_weights, n=n))(example_keys)
  alpha_levels = trimming.alpha_trim_levels(state['margin'], member, state['alpha_grid'],
                                            weights)

  pair = agreement.pairwise(state['both_correct'], state['same_pred'], state['correct'], n)
  vote_acc, softmax_acc = agreement.ensemble_accuracy(
      state['votes'], state['prob_sum'], state['labels'], size)
  beyond = alpha_levels == trimming.BEYOND_GRID
  passed = jnp.sum(~beyond, axis=0)
  spread = variance.variance_stats(acc, acc_even, acc_odd, member, state['group_correct'],
                                   state['chi2_table'])
  deltas, z = state['seeds_needed_deltas'], state['seeds_needed_z']
  disagreement = agreement.mean_disagreement(state['votes'], size)
  curve = lambda correct: agreement.size_curve(correct, state['subset_slot'],
                                               state['ensemble_sizes'], n)
  results = {
      'accuracy': acc,
      'accuracy_even': acc_even,
      'accuracy_odd': acc_odd,
      'ece': calibration.ece(state['ece_conf'], state['ece_correct'], n),
      'margin_median': jnp.median(state['margin'], axis=1),
      'alpha_trim': jnp.where(passed > 0, jnp.sum(jnp.where(beyond, 0, alpha_levels), 0)
                              / jnp.maximum(passed, 1), jnp.nan),
      'alpha_trim_beyond_grid': jnp.mean(beyond.astype(jnp.float32), 0) + jnp.where(
          jnp.isnan(alpha_levels[0]), jnp.nan, 0),
      **spread,
      'seeds_needed': power.seeds_per_arm(spread['std_accuracy'], deltas, z),
      'seeds_needed_ci': jnp.moveaxis(
          power.seeds_per_arm(spread['std_accuracy_ci'], deltas, z), -2, -1),
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
      'margin': state['margin'],
      **pair,
  }
  if state['votes'].shape[-1] == 2:  # two classes: the study's Theorem 3
    results.update(variance.binary_law_stats(spread, state['group_correct'], n,
                                             state['chi2_table']))
  normalized = None
  if 'feature_margin' in state:
    normalized = difficulty.normalized_margin(state['feature_margin'], state['feature_sum'],
                                              state['feature_sq'], n)
    results['normalized_margin'] = normalized
  results.update(difficulty.margin_stats(state['margin'], acc, member,
                                         state['margin_quantile_levels'], normalized))
  if 'depth' in state:
    results['prediction_depth'] = state['depth']
    results.update(difficulty.depth_stats(state['depth'], member,
                                          results['example_accuracy']))
  return results


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
