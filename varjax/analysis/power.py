"""Seeds per arm that a comparison of two configurations needs (the practical side
of "variance impedes hyperparameter comparison", Jordan 2024).

Two arms of n seeds each, accuracies with the same std sigma per seed; a
two-sided z-test at level alpha detects a difference of means Delta with
probability ``power`` when
  n = ceil(2 (z_{1 - alpha/2} + z_{power})^2 sigma^2 / Delta^2).
The measured std's uncertainty is carried through by evaluating n at the ends
of its interval as well.

Example:
  >>> z = z_sum(alpha=0.05, power=0.8)                  # 1.960 + 0.842
  >>> seeds_per_arm(jnp.array([0.01]), jnp.array([0.002]), z)  # doctest: +SKIP
  Array([[393.]], dtype=float32)
"""

import statistics

import jax.numpy as jnp


def z_sum(alpha, power):
  """z_{1 - alpha/2} + z_{power} of the standard normal (host, exact)."""
  if not (0 < alpha < 1 and 0 < power < 1):
    raise ValueError(f'alpha and power must lie in (0, 1), got {alpha}, {power}')
  normal = statistics.NormalDist()
  return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)


def seeds_per_arm(std, deltas, z):
  """Seeds per arm to detect each difference; std (...,), deltas (D,) -> (..., D).

  At least 1 (a std of 0 detects any difference with one seed); NaN where the
  std is NaN (groups of fewer than two models).
  """
  ratio = std[..., None] / deltas
  return jnp.maximum(jnp.ceil(2 * z * z * ratio * ratio), 1)
