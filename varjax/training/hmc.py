"""One chain's Hamiltonian Monte Carlo transition for exp(-U(theta) / T) on a params pytree.

Sampling mode (issue 31) runs every model of the ensemble as a replica of a sampler
of exp(-U / T), U the full-batch negative log-likelihood plus the prior's negative
log density, each model at its own temperature T. This module is one model's
transition: pure, with an explicit key, so the ensemble maps it over models as it
maps the train step.

Convention (how T enters): the Hamiltonian is H(theta, p) = U(theta) + |p|^2 / 2
(unit mass) and the joint target is exp(-H / T), so

- momenta are drawn with variance T: p ~ N(0, T I);
- the leapfrog integrates Hamilton's equations of H itself (dtheta = p dt,
  dp = -grad U dt), which do not involve T;
- the proposal is accepted with probability min(1, exp(-(H_new - H_old) / T)).

Marginalising p leaves exp(-U / T). Under this convention the leapfrog's stability
limit depends on U's curvature only (eps < 2 / sqrt(lambda_max(Hessian U)) for a
quadratic U), and for a quadratic U the whole transition commutes with the scaling
theta -> sqrt(T) theta: a step size tuned at one temperature keeps its acceptance
rate at every other. The other common convention (p ~ N(0, I), H = U / T + |p|^2 / 2)
is the same chain with step size eps * sqrt(T) in place of eps.

Each transition costs ``num_steps`` evaluations of U and its gradient: the state
carries U and grad U at the current point, so the first half-kick needs none, and the
last position's gradient is kept for the next transition whether or not it is
accepted (a rejection restores the old point with its old U and gradient).

A proposal whose energy is not finite (NaN or inf in U, or in the last gradient,
which enters the kinetic energy) is rejected: the chain stays where it was.

Precision: H differences are formed as (U_new - U_old) + (K_new - K_old). A
full-batch U summed in float32 near 1e5 (50,000 images at 2.3 nats) has rounding
errors near 1e-2, which enter exp(-dH / T) as 1e-2 / T: harmless at T >= 0.1 and
worth a float64 or compensated sum of U below that.

Example:
  >>> vg = jax.value_and_grad(lambda x: 0.5 * jnp.sum(x ** 2))
  >>> state = init(vg, jnp.zeros(3))
  >>> state, info = hmc_step(vg, state, jax.random.key(0), 0.3, 2.0, num_steps=10)
  >>> info['accepted'].dtype
  dtype('bool')
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class HMCState(NamedTuple):
  """One chain's point with its potential and gradient (what the next transition reuses)."""
  params: Any
  potential: jax.Array
  grad: Any


def init(value_and_grad, params):
  """The chain's state at ``params``: one evaluation of ``value_and_grad``.

  Args:
    value_and_grad: ``params -> (U, grad U)``, e.g. ``jax.value_and_grad(U)`` or a
      full-batch sum over chunks of the training set.
    params: a pytree of float arrays.

  Returns:
    An ``HMCState``.
  """
  potential, grad = value_and_grad(params)
  return HMCState(params, potential, grad)


def kinetic_energy(momentum):
  """|p|^2 / 2 summed over every leaf of the momentum pytree (unit mass)."""
  return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(momentum))


def sample_momentum(key, params, temperature):
  """p ~ N(0, T I), a pytree shaped and typed like ``params``.

  Args:
    key: a PRNG key.
    params: a pytree of float arrays (shapes and dtypes only).
    temperature: T > 0, a scalar (may be traced).

  Returns:
    The momentum pytree.
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  scale = jnp.sqrt(temperature)
  momenta = [(scale * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
             for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, momenta)


def leapfrog(value_and_grad, params, momentum, potential, grad, step_size, num_steps):
  """``num_steps`` leapfrog steps of H = U + |p|^2 / 2 from (params, momentum).

  Kick-drift-kick with the half kicks of neighbouring steps merged: num_steps drifts,
  num_steps gradient evaluations.

  Args:
    value_and_grad: ``params -> (U, grad U)``.
    params: the start point (pytree).
    momentum: the start momentum (pytree like params).
    potential: U at ``params`` (sets the dtype of the U carried through the loop).
    grad: grad U at ``params`` (pytree like params).
    step_size: eps, a scalar (may be traced).
    num_steps: L >= 1, a Python int (static: the loop's length).

  Returns:
    (params, momentum, potential, grad) at the end of the trajectory.
  """
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps}: a trajectory needs at least one step.')
  axpy = lambda a, x, y: jax.tree.map(
      lambda xi, yi: (yi + a * xi).astype(jnp.result_type(yi)), x, y)
  momentum = axpy(-0.5 * step_size, grad, momentum)

  def body(i, carry):
    params, momentum, _, _ = carry
    params = axpy(step_size, momentum, params)
    potential, grad = value_and_grad(params)
    potential = potential.astype(carry[2].dtype)
    # A full kick between drifts; the last one is the closing half kick.
    kick = jnp.where(i == num_steps - 1, 0.5, 1.0) * step_size
    return params, axpy(-kick, grad, momentum), potential, grad

  return jax.lax.fori_loop(0, num_steps, body, (params, momentum, potential, grad))


def hmc_step(value_and_grad, state, key, step_size, temperature, num_steps, step_size_jitter=0.0):
  """One HMC transition targeting exp(-U / T): momentum refresh, leapfrog, Metropolis.

  With ``step_size_jitter`` = j > 0 each transition draws its step size uniformly
  from eps * [1 - j, 1 + j]. The draw does not depend on the state, so every
  transition still leaves exp(-U / T) invariant; it breaks the resonance of a fixed
  trajectory length with a near-harmonic direction (a trajectory of half a period
  maps theta to -theta there and that direction never mixes its variance).

  Args:
    value_and_grad: ``params -> (U, grad U)``, U a scalar.
    state: the chain's ``HMCState``.
    key: this transition's PRNG key (momentum and the accept draw).
    step_size: eps > 0, a scalar; may be traced (one per chain under vmap).
    temperature: T > 0, a scalar; may be traced (one per chain under vmap).
    num_steps: L, a Python int shared by every chain (static).
    step_size_jitter: j in [0, 1), a scalar (may be traced).

  Returns:
    (new_state, info), info a dict of scalars:
      accepted: whether the proposal was taken;
      acceptance_probability: min(1, exp(-(H_new - H_old) / T)), 0 when H_new is
        not finite;
      energy_error: H_new - H_old in units of U (NaN or inf when the trajectory
        diverged).
  """
  momentum_key, accept_key, jitter_key = jax.random.split(key, 3)
  momentum = sample_momentum(momentum_key, state.params, temperature)
  step_size = step_size * (1.0 + step_size_jitter * jax.random.uniform(jitter_key, minval=-1.0))
  params, momentum_new, potential, grad = leapfrog(
      value_and_grad, state.params, momentum, state.potential, state.grad, step_size, num_steps)
  energy_error = ((potential - state.potential)
                  + (kinetic_energy(momentum_new) - kinetic_energy(momentum)))
  finite = jnp.isfinite(energy_error)
  log_ratio = jnp.where(finite, -energy_error / temperature, -jnp.inf)
  probability = jnp.exp(jnp.minimum(log_ratio, 0.0))
  # u < min(1, r) in log form: log u < log r, exact also where r underflows.
  accepted = finite & (jnp.log(jax.random.uniform(accept_key)) < log_ratio)
  proposal = HMCState(params, potential, grad)
  new_state = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), proposal, state)
  return new_state, {'accepted': accepted, 'acceptance_probability': probability,
                     'energy_error': energy_error}
