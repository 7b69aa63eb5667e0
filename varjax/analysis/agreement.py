"""Run-to-run agreement: churn, error consistency, disagreement, ensembles (SPEC §2-3).

Example:
  >>> pair = pairwise(both_correct, same_pred, correct, n)   # doctest: +SKIP
  >>> group_pair_mean(pair['churn'], member)                  # doctest: +SKIP
"""

import jax.numpy as jnp


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


def ensemble_accuracy(votes, prob_sum, labels, group_size):
  """Accuracy of the plurality vote and of the mean softmax, each (G,)."""
  vote = jnp.mean(jnp.argmax(votes, axis=-1) == labels, axis=1)
  soft = jnp.mean(jnp.argmax(prob_sum, axis=-1) == labels, axis=1)
  some = group_size >= 1
  return jnp.where(some, vote, jnp.nan), jnp.where(some, soft, jnp.nan)
