"""Per-model lenses across a group's models: mean, spread, and Pearson r with accuracy and margins.

A lens (varjax/run/lenses.py: the top Hessian eigenvalue and trace, the first
layer's misalignment, train-set accuracy under label noise) gives one number
per model. Across a group's seeds this asks Lengyel et al.'s (2021) question
of sharpness: does it move with the margins and with test accuracy? ``member``
is the (N, G) one-hot group membership of the analysis (a diverged model's row
is zero: it joins no group statistic).

Example:
  >>> stats = lens_stats({'sharpness_trace': trace}, accuracy, margin_quantiles, member)  # doctest: +SKIP
  >>> stats['sharpness_trace_accuracy_corr']        # (G,) Pearson r across models      # doctest: +SKIP
"""

import jax.numpy as jnp
import numpy as np

from varjax.analysis import variance


def lens_stats(values, accuracy, margin_quantiles, member, correlate=None):
  """Group statistics of per-model lens values.

  Args:
    values: {name: (N,) per-model values}; a NaN (undefined for that model)
      leaves the model out of that value's statistics.
    accuracy: (N,) test accuracy.
    margin_quantiles: (N, Q) per-model quantiles of the true-class margin.
    member: (N, G) group membership.
    correlate: the names that get correlations (default: all).

  Returns:
    Per group, as NumPy arrays: ``mean_{name}`` and ``std_{name}`` (G,)
    (ddof 1; NaN below two models) of every value; for those in
    ``correlate``, ``{name}_accuracy_corr`` (G,) (Pearson r with test
    accuracy across the group's models) and ``{name}_margin_quantile_corr``
    (G, Q) (with each margin quantile).
  """
  member = jnp.asarray(member, jnp.float32)
  clean = lambda x: jnp.where(jnp.isfinite(x), x, 0.0)
  accuracy = clean(jnp.asarray(accuracy, jnp.float32))
  quantiles = clean(jnp.asarray(margin_quantiles, jnp.float32))
  out = {}
  for name, x in values.items():
    x = jnp.asarray(x, jnp.float32)
    # A model whose value is undefined (NaN) leaves that value's statistics.
    counted = member * jnp.isfinite(x)[:, None]
    x = clean(x)
    mean, var = variance.group_mean_var(x, counted)
    out[f'mean_{name}'] = mean
    out[f'std_{name}'] = jnp.sqrt(var)
    if correlate is not None and name not in correlate:
      continue
    out[f'{name}_accuracy_corr'] = variance.group_corr(x, accuracy, counted)
    out[f'{name}_margin_quantile_corr'] = jnp.stack(
        [variance.group_corr(x, quantiles[:, q], counted) for q in range(quantiles.shape[1])],
        axis=-1)
  return {k: np.asarray(v) for k, v in out.items()}
