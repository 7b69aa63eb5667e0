"""Calibration: per-model ECE and the vote ensemble's class-aggregated error (SPEC §3).

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

  CACE = sum_k sum_j P(v_k = j) |P(y = k | v_k = j) - j/M|, summed over classes
  as in Jiang et al. (it bounds |disagreement - error|). With M models the vote
  fraction takes M+1 values, so the per (class, vote count) sums are exact.

  Example:
    >>> cace(votes, labels, jnp.array([16.]), 16)   # doctest: +SKIP
  """
  _, n, k = votes.shape
  levels = num_models + 1
  segment = jnp.arange(k) * levels + votes                       # (G, n, K)
  is_label = jax.nn.one_hot(labels, k, dtype=jnp.float32)       # (n, K)

  def one_group(seg, m):
    count = jax.ops.segment_sum(jnp.ones(n * k), seg.reshape(-1), k * levels)
    hits = jax.ops.segment_sum(is_label.reshape(-1), seg.reshape(-1), k * levels)
    fraction = (jnp.arange(k * levels) % levels) / m
    return jnp.sum(jnp.abs(fraction * count - hits)) / n

  out = jax.vmap(one_group)(segment, group_size)
  return jnp.where(group_size >= 1, out, jnp.nan)
