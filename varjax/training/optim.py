"""airbench's optimiser: decoupled-unit Nesterov SGD, its lr schedule, and lookahead.

Units: the config's lr and weight decay are "decoupled", per 1024 examples
(airbench). With a summed loss the SGD step uses

  lr_sgd = lr / (1024 * (1 + 1 / (1 - momentum)))
  wd_sgd = weight_decay * batch_size / (1024 * (1 + 1 / (1 - momentum)))

and, as in PyTorch's SGD with ``weight_decay = wd_sgd / lr_group``, the decay is
added to the gradient before momentum, so every parameter group decays by
``schedule * wd_sgd`` per step whatever its learning rate.

Example:
  >>> lr, wd = sgd_units(11.5, 0.0153, momentum=0.85, batch_size=1024)
  >>> round(lr, 7)
  0.0014557
  >>> tx = nesterov_sgd(lr, wd, 0.85, lr_scales)              # doctest: +SKIP
"""

import jax
import jax.numpy as jnp
import optax


def sgd_units(lr, weight_decay, momentum, batch_size, reference_batch=1024):
  """Decoupled (lr, weight_decay) -> the SGD step's (lr, weight_decay)."""
  scale = reference_batch * (1 + 1 / (1 - momentum))
  return lr / scale, weight_decay * batch_size / scale


def lr_factor(step, total_steps, warmup_frac, start_factor, end_factor):
  """Piecewise-linear multiplier: start -> 1 over warm-up, then 1 -> end at the end.

  ``step`` counts optimiser steps already taken (0 for the first).
  """
  warmup = int(total_steps * warmup_frac)
  return jnp.interp(jnp.asarray(step, jnp.float32),
                    jnp.array([0.0, warmup, total_steps], jnp.float32),
                    jnp.array([start_factor, 1.0, end_factor], jnp.float32))


def coupled_weight_decay(coefficients):
  """Adds ``c * param`` to each gradient, with a per-leaf coefficient tree."""

  def update_fn(updates, state, params=None):
    updates = jax.tree.map(lambda g, c, p: g + c * p, updates, coefficients, params)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def nesterov_sgd(lr, weight_decay, momentum, lr_scales):
  """PyTorch-style Nesterov SGD with per-leaf lr multipliers (0 freezes a leaf).

  ``lr`` and ``weight_decay`` are in SGD units (see ``sgd_units``) and may be
  traced per-model values. The schedule factor is applied by the caller.
  """
  group_lr = jax.tree.map(lambda s: lr * s, lr_scales)
  decay = jax.tree.map(lambda s, g: jnp.where(s > 0, weight_decay / jnp.where(s > 0, g, 1.0), 0.0),
                       lr_scales, group_lr)
  return optax.chain(
      coupled_weight_decay(decay),
      optax.trace(decay=momentum, nesterov=True),
      optax.GradientTransformation(
          lambda params: optax.EmptyState(),
          lambda updates, state, params=None: (
              jax.tree.map(lambda u, g: -g * u, updates, group_lr), state)),
  )


def lookahead_decay(step, total_steps, decay, every_steps, power):
  """EMA decay used at ``step`` (counted after the update): decay^every * (t/T)^power."""
  frac = jnp.asarray(step, jnp.float32) / total_steps
  return (decay ** every_steps) * frac ** power


def lookahead(params, ema, step, total_steps, decay, every_steps, power):
  """Every ``every_steps`` steps pull the EMA toward the weights and reset the weights to it.

  Returns (params, ema). Early in training the decay is ~0 (the EMA tracks the
  weights); late it approaches decay^every, smoothing the last steps.
  """
  due = (step % every_steps) == 0
  d = lookahead_decay(step, total_steps, decay, every_steps, power)
  new_ema = jax.tree.map(lambda e, p: jnp.where(due, e + (1 - d) * (p - e), e), ema, params)
  new_params = jax.tree.map(lambda e, p: jnp.where(due, e, p), new_ema, params)
  return new_params, new_ema
