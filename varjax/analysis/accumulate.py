"""Streaming accumulators: logits of N models fold into small device arrays.

The state is a dict of arrays whose shapes carry every static size (N, n, K,
groups, ensemble subsets, resamples, alpha grid), so ``update`` jits with the
state as a plain pytree and never needs the host. All per-batch reductions are
elementwise, reductions over the batch, or contractions with the (N, G) one-hot
membership or the (S, N) ensemble subsets, so logits sharded on the models
axis give the same result.

Example:
  >>> state = init(4, 100, 10, groups=[0, 0, 1, 1])
  >>> state = update(state, logits[:, :50], labels[:50], jnp.arange(50))   # doctest: +SKIP
  >>> state = update(state, logits[:, 50:], labels[50:], jnp.arange(50, 100))  # doctest: +SKIP
"""

import jax
import jax.numpy as jnp
import numpy as np

from varjax.analysis import agreement
from varjax.analysis import power
from varjax.analysis import variance

NUM_ECE_BINS = 15
DEFAULT_ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(10))


def init(num_models, num_examples, num_classes, groups=None, *, num_groups=None,
         alpha_trim_resamples=100, alpha_grid=None, seed=0,
         margin_quantiles=(0.1, 0.25, 0.5, 0.75, 0.9), ensemble_subsets=16,
         seeds_needed_deltas=(0.001, 0.002, 0.005), seeds_needed_power=0.8,
         seeds_needed_alpha=0.05, prediction_depth=False, feature_dim=None):
  """Empty accumulators for ``num_models`` models on ``num_examples`` examples.

  Args:
    num_models: N.
    num_examples: n; example ids passed to ``update`` lie in [0, n).
    num_classes: K.
    groups: optional int array (N,) of group ids 0..G-1 (one hyperparameter point
      of a sweep each), -1 for a model in no group (e.g. diverged: it gets its
      per-model metrics but joins no group statistic); default: all in group 0.
    num_groups: G; default max(groups) + 1.
    alpha_trim_resamples: resamples of the test set averaged in ``alpha_trim``
      (each costs a pass over all N x n margins).
    alpha_grid: increasing trimming levels in [0, 0.5); default 0, 0.05, ..., 0.45.
    seed: seeds the alpha-trimming resamples and the ensemble subsets.
    margin_quantiles: levels of the per-model margin quantiles.
    ensemble_subsets: subsets of models averaged per group and ensemble size
      for the accuracy-vs-size curve (every subset when there are fewer).
    seeds_needed_deltas: accuracy differences (fractions) for ``seeds_needed``.
    seeds_needed_power, seeds_needed_alpha: the comparison's power and level.
    prediction_depth: accumulate per-model prediction depths (``update``'s
      ``extras['depth']``).
    feature_dim: D of the last embedding, to accumulate normalized margins
      (``extras['feature_margin']``, ``['feature_sum']``, ``['feature_sq']``);
      None: off.

  Returns:
    A dict of device arrays (see ``update``).

  Example:
    >>> state = init(8, 10_000, 10, groups=[0] * 4 + [1] * 4, ensemble_subsets=8)
  """
  n, k = num_examples, num_classes
  groups, num_groups, grid, deltas = _checked(num_models, groups, num_groups, alpha_grid,
                                              alpha_trim_resamples, ensemble_subsets,
                                              seeds_needed_deltas)
  subsets, slots, sizes = agreement.ensemble_subsets(
      groups, num_groups, ensemble_subsets, np.random.default_rng([seed, 2]))
  i32, f32 = jnp.int32, jnp.float32
  return {
      **_optional(num_models, n, prediction_depth, feature_dim),
      'margin_quantile_levels': jnp.asarray(margin_quantiles, f32),
      'member': jnp.asarray(group_membership(groups, num_groups)),
      'labels': jnp.zeros((n,), i32),
      'correct': jnp.zeros((num_models,), i32),
      'correct_even': jnp.zeros((num_models,), i32),
      'correct_odd': jnp.zeros((num_models,), i32),
      'ece_count': jnp.zeros((num_models, NUM_ECE_BINS), i32),
      'ece_conf': jnp.zeros((num_models, NUM_ECE_BINS), f32),
      'ece_correct': jnp.zeros((num_models, NUM_ECE_BINS), i32),
      'margin': jnp.zeros((num_models, n), f32),
      'both_correct': jnp.zeros((num_models, num_models), i32),
      'same_pred': jnp.zeros((num_models, num_models), i32),
      'votes': jnp.zeros((num_groups, n, k), i32),
      'group_correct': jnp.zeros((num_groups, n), i32),
      'prob_sum': jnp.zeros((num_groups, n, k), f32),
      'alpha_grid': jnp.asarray(grid),
      'chi2_table': jnp.asarray(variance.chi2_table(num_models)),
      'seeds_needed_deltas': jnp.asarray(deltas),
      'seeds_needed_z': jnp.asarray(power.z_sum(seeds_needed_alpha, seeds_needed_power), f32),
      # Accuracy against ensemble size: fixed subsets, their ensembles scored per batch.
      'subset_member': jnp.asarray(subsets),
      'subset_slot': jnp.asarray(slots),
      'ensemble_sizes': jnp.asarray(sizes),
      'subset_correct_vote': jnp.zeros((len(slots),), i32),
      'subset_correct_softmax': jnp.zeros((len(slots),), i32),
      # One key per resample: the shapes carry the counts, the values the seed.
      'trim_keys': jax.random.key_data(
          jax.random.split(jax.random.fold_in(jax.random.key(seed), 0), alpha_trim_resamples)),
  }


def _checked(num_models, groups, num_groups, alpha_grid, alpha_trim_resamples,
             ensemble_subsets, seeds_needed_deltas):
  """``init``'s arguments as arrays: (groups, num_groups, alpha grid, deltas); ValueError if bad."""
  groups = np.zeros(num_models, np.int32) if groups is None else np.asarray(groups)
  if groups.shape != (num_models,) or groups.min() < -1:
    raise ValueError(f'groups must be {num_models} ints >= -1, got {groups!r}')
  num_groups = int(groups.max()) + 1 if num_groups is None else num_groups
  if num_groups < 1 or groups.max() >= num_groups:
    raise ValueError(f'groups {groups!r} do not fit num_groups={num_groups}')
  grid = np.asarray(DEFAULT_ALPHA_GRID if alpha_grid is None else alpha_grid, np.float32)
  if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) <= 0) or grid[0] < 0 or (
      grid[-1] >= 0.5):
    raise ValueError(f'alpha_grid must increase within [0, 0.5), got {grid!r}')
  if alpha_trim_resamples < 1 or ensemble_subsets < 1:
    raise ValueError(f'alpha_trim_resamples and ensemble_subsets must be >= 1, got '
                     f'{alpha_trim_resamples}, {ensemble_subsets}')
  deltas = np.asarray(seeds_needed_deltas, np.float32)
  if deltas.ndim != 1 or deltas.size == 0 or np.any(deltas <= 0):
    raise ValueError(f'seeds_needed_deltas must be positive, got {seeds_needed_deltas!r}')
  return groups, num_groups, grid, deltas


def _optional(num_models, n, prediction_depth, feature_dim):
  """The accumulators of the difficulty probes ``init`` was asked for."""
  out = {}
  if prediction_depth:
    out['depth'] = jnp.zeros((num_models, n), jnp.int32)
  if feature_dim:
    out.update(feature_margin=jnp.zeros((num_models, n), jnp.float32),
               feature_sum=jnp.zeros((num_models, feature_dim), jnp.float32),
               feature_sq=jnp.zeros((num_models,), jnp.float32))
  return out


def group_membership(groups, num_groups):
  """(N, G) float32 one-hot rows; a model in group -1 (e.g. diverged) gets a zero row."""
  return np.eye(num_groups + 1, dtype=np.float32)[np.asarray(groups)][:, :num_groups]


def _count(x):
  """Exact small counts from a float contraction (each <= batch size < 2**24)."""
  return jnp.round(x).astype(jnp.int32)


def true_class_margin(logits, labels):
  """Logit of the label minus the largest other logit, shape (N, b)."""
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  true = jnp.sum(jnp.where(is_label, logits, 0), axis=-1)
  other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return true - other


@jax.jit
def update(state, logits, labels, example_ids, extras=None):
  """Folds one batch of logits (N, b, K) into the accumulators.

  ``extras``: the difficulty probes of the batch that ``init`` asked for:
  ``depth`` (N, b), ``feature_margin`` (N, b), and the batch's per-model sums
  ``feature_sum`` (N, D) of the last embedding and ``feature_sq`` (N,) of its
  squared norm.

  Every example id must be seen exactly once over the whole stream; batches may
  come in any order and size.

  Example:
    >>> state = update(state, logits, labels, ids)   # doctest: +SKIP
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  ids = example_ids.astype(jnp.int32)
  member = state['member']

  pred = jnp.argmax(logits, axis=-1)                                    # (N, b)
  correct = (pred == labels).astype(jnp.float32)                        # (N, b)
  pred_1h = jax.nn.one_hot(pred, num_classes, dtype=jnp.float32)        # (N, b, K)
  probs = jax.nn.softmax(logits, axis=-1)
  conf = jnp.max(probs, axis=-1)
  # Bin b holds b/15 < conf <= (b+1)/15.
  bins = jnp.clip(jnp.ceil(conf * NUM_ECE_BINS).astype(jnp.int32) - 1, 0, NUM_ECE_BINS - 1)
  bins_1h = jax.nn.one_hot(bins, NUM_ECE_BINS, dtype=jnp.float32)       # (N, b, 15)
  even = (ids % 2 == 0).astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST

  new = dict(state)
  new['labels'] = state['labels'].at[ids].set(labels)
  new['correct'] = state['correct'] + _count(correct.sum(1))
  new['correct_even'] = state['correct_even'] + _count(correct @ even)
  new['correct_odd'] = state['correct_odd'] + _count(correct @ (1 - even))
  new['ece_count'] = state['ece_count'] + _count(bins_1h.sum(1))
  new['ece_conf'] = state['ece_conf'] + jnp.einsum('nb,nbj->nj', conf, bins_1h, precision=hi)
  new['ece_correct'] = state['ece_correct'] + _count(
      jnp.einsum('nb,nbj->nj', correct, bins_1h))
  new['margin'] = state['margin'].at[:, ids].set(true_class_margin(logits, labels))
  new['both_correct'] = state['both_correct'] + _count(correct @ correct.T)
  new['same_pred'] = state['same_pred'] + _count(jnp.einsum('nbk,mbk->nm', pred_1h, pred_1h))
  new['votes'] = state['votes'].at[:, ids].add(_count(jnp.einsum('ng,nbk->gbk', member, pred_1h)))
  new['group_correct'] = state['group_correct'].at[:, ids].add(_count(member.T @ correct))
  new['prob_sum'] = state['prob_sum'].at[:, ids].add(
      jnp.einsum('ng,nbk->gbk', member, probs, precision=hi))
  vote, soft = agreement.subset_correct(state['subset_member'], pred_1h, probs, labels)
  new['subset_correct_vote'] = state['subset_correct_vote'] + vote
  new['subset_correct_softmax'] = state['subset_correct_softmax'] + soft
  extras = extras or {}
  for name in ('depth', 'feature_margin'):
    if name in state:
      if name not in extras:
        raise ValueError(f'The analysis state accumulates {name!r}; pass it in update(extras=).')
      new[name] = state[name].at[:, ids].set(extras[name].astype(state[name].dtype))
  if 'feature_sum' in state:
    new['feature_sum'] = state['feature_sum'] + extras['feature_sum']
    new['feature_sq'] = state['feature_sq'] + extras['feature_sq']
  return new
