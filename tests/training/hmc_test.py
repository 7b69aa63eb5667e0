"""HMC for exp(-U / T): the leapfrog against its closed form, the temperature convention,
the rejection of non-finite proposals, and the moments of Gaussians at several T."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.analysis import thermodynamic as td
from varjax.training import hmc

SIGMA = jnp.array([0.5, 1.0, 2.0])


def gaussian_potential(params):
  """U = sum_i x_i^2 / (2 sigma_i^2): exp(-U / T) is N(0, T sigma^2) per coordinate."""
  return 0.5 * jnp.sum(jnp.square(params['x'] / SIGMA))


GAUSSIAN = jax.value_and_grad(gaussian_potential)


@functools.partial(jax.jit, static_argnames=('value_and_grad', 'num_steps', 'num_transitions'))
def run_chains(value_and_grad, params, keys, step_size, temperature, num_steps, num_transitions,
               step_size_jitter=0.0):
  """Chains vmapped over their leading axis (params, keys, step sizes, temperatures).

  Returns (params trace (C, n, ...), accepted (C, n), acceptance probability (C, n)).
  """

  def chain(params, key, eps, t):
    def body(state, k):
      state, info = hmc.hmc_step(value_and_grad, state, k, eps, t, num_steps, step_size_jitter)
      return state, (state.params, info['accepted'], info['acceptance_probability'])

    _, trace = jax.lax.scan(body, hmc.init(value_and_grad, params),
                            jax.random.split(key, num_transitions))
    return trace

  return jax.vmap(chain)(params, keys, step_size, temperature)


def test_leapfrog_matches_the_harmonic_closed_form():
  # U = w^2 x^2 / 2: one leapfrog step is the linear map M below (kick-drift-kick).
  w, eps, steps = 1.3, 0.2, 7
  vg = jax.value_and_grad(lambda x: 0.5 * w ** 2 * x ** 2)
  x0, p0 = jnp.float32(0.7), jnp.float32(-0.4)
  u0, g0 = vg(x0)
  x, p, u, g = hmc.leapfrog(vg, x0, p0, u0, g0, eps, steps)
  a = 1 - 0.5 * (eps * w) ** 2
  m = np.array([[a, eps], [-eps * w ** 2 * (1 - 0.25 * (eps * w) ** 2), a]])
  want = np.linalg.matrix_power(m, steps) @ np.array([x0, p0])
  np.testing.assert_allclose([x, p], want, rtol=1e-5)
  assert float(u) == pytest.approx(0.5 * w ** 2 * want[0] ** 2, rel=1e-5)
  assert float(g) == pytest.approx(w ** 2 * want[0], rel=1e-5)


def test_a_transition_costs_num_steps_gradients():
  calls = []

  def vg(x):
    calls.append(1)
    return 0.5 * x ** 2, x

  state = hmc.init(vg, jnp.float32(0.3))
  calls.clear()
  with jax.disable_jit():  # the loop runs in Python, one call per gradient
    hmc.hmc_step(vg, state, jax.random.key(0), 0.1, 1.0, num_steps=5)
  assert len(calls) == 5


def test_temperature_scales_a_quadratic_chain():
  """The convention p ~ N(0, T): from sqrt(T) x at T, a transition is sqrt(T) times the
  transition from x at T = 1 (same key), with the same acceptance probability."""
  x = {'x': jnp.array([0.3, -1.2, 2.5])}
  key = jax.random.key(4)
  step = jax.jit(lambda s, t: hmc.hmc_step(GAUSSIAN, s, key, 0.45, t, 6))
  one, info1 = step(hmc.init(GAUSSIAN, x), 1.0)
  for t in (0.01, 3.0, 50.0):
    scaled = jax.tree.map(lambda v, t=t: math.sqrt(t) * v, x)
    hot, info = step(hmc.init(GAUSSIAN, scaled), t)
    np.testing.assert_allclose(hot.params['x'], math.sqrt(t) * one.params['x'], rtol=1e-5)
    assert float(info['acceptance_probability']) == pytest.approx(
        float(info1['acceptance_probability']), rel=1e-4)
    assert float(info['energy_error']) == pytest.approx(t * float(info1['energy_error']),
                                                        rel=1e-3, abs=1e-6 * t)
    assert bool(info['accepted']) == bool(info1['accepted'])


@pytest.mark.parametrize('bad', [jnp.nan, jnp.inf])
def test_a_non_finite_proposal_is_rejected(bad):
  # Past |x| = 1 the potential is NaN (or inf). From x = 0.9 one step of 3 lands at
  # 3 p - 3.15, inside [-1, 1] only for p in [0.72, 1.38]: most keys propose outside.
  vg = jax.value_and_grad(lambda x: jnp.where(jnp.abs(x) > 1.0, bad, 0.5 * x ** 2))
  state = hmc.init(vg, jnp.float32(0.9))
  new, info = jax.jit(jax.vmap(lambda k: hmc.hmc_step(vg, state, k, 3.0, 1.0, 1)))(
      jax.random.split(jax.random.key(0), 32))
  out = ~jnp.isfinite(info['energy_error'])
  assert int(out.sum()) >= 16                                  # the check bites
  assert not bool(jnp.any(info['accepted'] & out))
  assert bool(jnp.all(jnp.where(out, info['acceptance_probability'], 0.0) == 0.0))
  np.testing.assert_array_equal(new.params[out], np.float32(0.9))
  np.testing.assert_allclose(new.potential[out], 0.405, rtol=1e-6)
  np.testing.assert_allclose(new.grad[out], 0.9, rtol=1e-6)


def _check_gaussian_moments(num_transitions, seed):
  """Sample mean and variance of each coordinate at each T against 0 and T sigma^2.

  Tolerance: 4 standard errors. The mean's se is sqrt(T sigma^2 / ESS(x)); the
  variance estimate's se is sqrt(Var(x^2) / ESS(x^2)), both ESS from Geyer's initial
  monotone sequence on the chain itself. 18 checks at 4 se: a false failure has
  probability about 18 * 6e-5 = 1e-3 for a correct sampler (and the seeds are fixed).
  """
  temps = jnp.array([0.1, 1.0, 10.0])
  # Per-chain step sizes (traced): the same convention makes one size fit every T;
  # they differ here only to exercise per-chain values. eps L ~ 1.7 - 2.2 with 20%
  # jitter keeps clear of the half period pi sigma of the sigma = 1 coordinate.
  eps = jnp.array([0.3, 0.35, 0.4])
  x0 = {'x': jnp.sqrt(temps)[:, None] * SIGMA[None, :]}       # one sd out, not at the mode
  keys = jax.random.split(jax.random.key(seed), 3)
  trace, accepted, prob = run_chains(GAUSSIAN, x0, keys, eps, temps, 6, num_transitions, 0.2)
  x = trace['x'][:, num_transitions // 10:]                     # (3, n, 3) after 10% burn-in
  per_coordinate = jax.jit(jax.vmap(jax.vmap(td.chain_mean, in_axes=1)))   # (chain, coordinate)
  means, squares = per_coordinate(x), per_coordinate(x ** 2)
  report = []
  for c, t in enumerate(temps.tolist()):
    for i, s in enumerate(SIGMA.tolist()):
      var_exact = t * s * s
      mean = {k: v[c, i] for k, v in means.items()}
      assert abs(float(mean['mean'])) < 4 * math.sqrt(var_exact / float(mean['ess'])), (t, s)
      sq = {k: v[c, i] for k, v in squares.items()}
      assert abs(float(sq['mean']) - var_exact) < 4 * float(sq['std_error']), (t, s)
      report.append((t, s, round(float(sq['mean']) / var_exact, 4), round(float(mean['ess'])),
                     round(float(sq['ess']))))
  return report, accepted.mean(1), prob.mean(1)


def test_gaussian_moments_at_several_temperatures():
  report, acc, prob = _check_gaussian_moments(3000, seed=0)
  # The convention's claim: the acceptance rate does not depend on T for a quadratic U
  # (here it varies only with each chain's step size).
  assert np.all(np.asarray(acc) > 0.8), acc
  print('(T, sigma, variance / exact, ESS x, ESS x^2):', report, 'acceptance:', acc, prob)


@pytest.mark.slow
def test_gaussian_moments_at_several_temperatures_long():
  report, acc, prob = _check_gaussian_moments(40_000, seed=1)
  print('(T, sigma, variance / exact, ESS x, ESS x^2):', report, 'acceptance:', acc, prob)
