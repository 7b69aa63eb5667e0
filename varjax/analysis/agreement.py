"""Run-to-run agreement: churn, error consistency, disagreement, ensembles.

Churn and error consistency (Geirhos et al. 2020) per pair of models; the
expected disagreement of two models of a group, which equals the expected error
for a class-wise calibrated ensemble (Jiang et al. 2022); plurality-vote and
mean-softmax ensembles, and their accuracy against ensemble size.

Example:
  >>> pair = pairwise(both_correct, same_pred, correct, n)   # doctest: +SKIP
  >>> group_pair_mean(pair['churn'], member)                  # doctest: +SKIP
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np


def pairwise(both_correct, same_pred, correct, num_examples):
  """(N, N) churn and Geirhos et al.'s error-consistency kappa from pair counts.

  Example:
    >>> pairwise(both_correct, same_pred, correct, 10_000)['error_kappa']  # doctest: +SKIP
  """
  n = num_examples
  c = correct.astype(jnp.float32)
  both_wrong = n - c[:, None] - c[None, :] + both_correct
  observed = (both_correct + both_wrong) / n
  a = c / n
  expected = a[:, None] * a[None, :] + (1 - a[:, None]) * (1 - a[None, :])
  return {'churn': 1 - same_pred / n,
          'error_kappa': (observed - expected) / (1 - expected)}


def group_pair_mean(x, member):
  """Mean of x (N, N) over pairs of distinct models within each group (G,)."""
  off_diagonal = 1 - jnp.eye(x.shape[0], dtype=member.dtype)
  pairs = member.T[:, :, None] * member.T[:, None, :] * off_diagonal > 0   # (G, N, N)
  # where, not a product: NaN kappas of other groups must not leak in.
  return jnp.sum(jnp.where(pairs, x, 0), axis=(1, 2)) / jnp.where(
      member.sum(0) >= 2, pairs.sum((1, 2)), jnp.nan)


def mean_disagreement(votes, group_size):
  """Expected disagreement of two distinct models of the group, from votes (G, n, K)."""
  m = group_size[:, None]
  v = votes.astype(jnp.float32)
  agree = jnp.sum(v * (v - 1), axis=-1) / (m * (m - 1))
  return jnp.where(group_size >= 2, jnp.mean(1 - agree, axis=1), jnp.nan)


def vote_prediction(votes, prob_sum):
  """The plurality class; a tie goes to the tied class with the larger summed
  softmax (then to the lowest index). Without it, ties - frequent in small
  ensembles (two models that disagree always tie) - would all go to class 0."""
  top = jnp.max(votes, axis=-1, keepdims=True)
  return jnp.argmax(jnp.where(votes == top, prob_sum, -jnp.inf), axis=-1)


def ensemble_accuracy(votes, prob_sum, labels, group_size):
  """Accuracy of the plurality vote (``vote_prediction``) and of the mean softmax, each (G,)."""
  vote = jnp.mean(vote_prediction(votes, prob_sum) == labels, axis=1)
  soft = jnp.mean(jnp.argmax(prob_sum, axis=-1) == labels, axis=1)
  some = group_size >= 1
  return jnp.where(some, vote, jnp.nan), jnp.where(some, soft, jnp.nan)


def ensemble_sizes(group_size):
  """1, 2, 4, ... below the group size, then the group size itself."""
  sizes = [2 ** i for i in range(max(group_size - 1, 0).bit_length()) if 2 ** i < group_size]
  return sizes + [group_size] if group_size else []


def ensemble_subsets(groups, num_groups, max_subsets, rng):
  """The subsets of models whose ensembles trace accuracy against ensemble size.

  For each group and size of ``ensemble_sizes``: every subset of that size
  when there are at most ``max_subsets`` of them (exact average), else
  ``max_subsets`` subsets drawn uniformly without replacement within each.

  Returns (host arrays):
    member: (S, N) float32, row s marks subset s's models;
    slot: (S,) int32, the index of (group, size) in sizes.reshape(-1);
    sizes: (G, L) int32 ensemble sizes per group, 0-padded to the longest ladder.
  """
  groups = np.asarray(groups)
  ladders = [ensemble_sizes(int(np.sum(groups == g))) for g in range(num_groups)]
  width = max([len(l) for l in ladders] + [1])
  sizes = np.zeros((num_groups, width), np.int32)
  rows, slots = [], []
  for g, ladder in enumerate(ladders):
    models = np.flatnonzero(groups == g)
    for level, size in enumerate(ladder):
      sizes[g, level] = size
      if math.comb(len(models), size) <= max_subsets:
        subsets = [list(c) for c in itertools.combinations(models, size)]
      else:
        subsets = [rng.choice(models, size, replace=False) for _ in range(max_subsets)]
      for subset in subsets:
        row = np.zeros(len(groups), np.float32)
        row[subset] = 1
        rows.append(row)
        slots.append(g * width + level)
  member = np.stack(rows) if rows else np.zeros((0, len(groups)), np.float32)
  return member, np.asarray(slots, np.int32), sizes


def subset_correct(subset_member, pred_1h, probs, labels):
  """Examples of the batch that each subset's vote / softmax ensemble gets right, (S,) each."""
  hi = jax.lax.Precision.HIGHEST
  votes = jnp.einsum('sn,nbk->sbk', subset_member, pred_1h)                 # exact counts
  prob_sum = jnp.einsum('sn,nbk->sbk', subset_member, probs, precision=hi)
  vote = jnp.sum(vote_prediction(votes, prob_sum) == labels, axis=1)
  soft = jnp.sum(jnp.argmax(prob_sum, axis=-1) == labels, axis=1)
  return vote.astype(jnp.int32), soft.astype(jnp.int32)


def size_curve(correct, slot, sizes, num_examples):
  """Mean accuracy over the subsets of each (group, size), (G, L); NaN in the padding."""
  segments = sizes.size
  total = jax.ops.segment_sum(correct.astype(jnp.float32), slot, segments)
  count = jax.ops.segment_sum(jnp.ones_like(slot, jnp.float32), slot, segments)
  curve = total / jnp.maximum(count, 1) / num_examples
  return jnp.where(count > 0, curve, jnp.nan).reshape(sizes.shape)
