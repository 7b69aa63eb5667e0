"""Calibration: per-model ECE (15 equal-width bins) and the vote ensemble's class-aggregated
calibration error (Jiang et al. 2022).

Example:
  >>> ece(state['ece_conf'], state['ece_correct'], n)        # doctest: +SKIP
  >>> cace(state['votes'], state['labels'], group_size, N)    # doctest: +SKIP
"""

import jax
import jax.numpy as jnp


def ece(bin_conf, bin_correct, num_examples):
  """sum_b |sum of confidences - number correct in bin b| / n, per model."""
  return jnp.sum(jnp.abs(bin_conf - bin_correct), axis=-1) / num_examples


def cace(votes, labels, group_size, num_models):
  """Class-aggregated calibration error of the vote fraction (Jiang et al. 2022).

  Def. 4.4 / Eq. 6 there, with h~_k(x) the fraction of the group's M models
  that predict class k:
    CACE = sum_q | sum_k [ P(Y = k, h~_k(X) = q) - q P(h~_k(X) = q) ] |,
  q over the vote levels 0, 1/M, ..., 1: the classes are summed inside the
  absolute value (this is what bounds |disagreement - error|). The per-level
  sums are exact counts over (example, class) pairs.

  With few models the estimate is biased upward (the empirical vote fraction
  scatters around the true one, and |.| of a noisy sum is positive on
  average), so read it together with M.

  Example:
    >>> cace(votes, labels, jnp.array([16.]), 16)   # doctest: +SKIP
  """
  _, n, k = votes.shape
  levels = num_models + 1
  is_label = jax.nn.one_hot(labels, k, dtype=jnp.float32)       # (n, K)

  def one_group(group_votes, m):
    level = group_votes.reshape(-1)
    count = jax.ops.segment_sum(jnp.ones(n * k), level, levels)
    hits = jax.ops.segment_sum(is_label.reshape(-1), level, levels)
    fraction = jnp.arange(levels) / m
    return jnp.sum(jnp.abs(hits - fraction * count)) / n

  out = jax.vmap(one_group)(votes, group_size)
  return jnp.where(group_size >= 1, out, jnp.nan)
