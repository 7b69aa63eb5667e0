"""HMC with replica exchange on a double well: the cold replica's histogram matches the
exact density only with exchange; without it the chain stays in the well it started in.
The run's energies by slot also give log Z(1 / 16) - log Z(1) by thermodynamic integration.

U(x) = h (x^2 - 1)^2 with h = 12, target exp(-U / T) at T = 1: a barrier of 12 T at
x = 0 between wells at +-1. Plain HMC crosses only when a transition's total energy
exceeds the barrier, probability about e^-12 = 6e-6 a transition, so an expected 0.03
crossings in the 4,500 transitions below. A geometric ladder T = 1 .. 16 (8 rungs,
ratio 1.49) puts the top rung's barrier at 0.75 T, crossed freely, and exchange
carries both wells down to T = 1.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from varjax.analysis import thermodynamic as td
from varjax.ensemble import replica_exchange as rx
from varjax.training import hmc

HEIGHT = 12.0
# U'' = h (12 x^2 - 4): 96 at the minima, 850 at |x| = 2.5, beyond which the top rung
# (T = 16, U / T = 20) goes with probability e^-20; eps w < 2 there for eps = 0.05.
STEP_SIZE, NUM_STEPS = 0.05, 20
TEMPERATURES = rx.geometric_ladder(1.0, 16.0, 8)
EDGES = np.array([-np.inf, -1.4, -1.2, -1.05, -0.9, -0.7, -0.4, 0.0, 0.4, 0.7, 0.9, 1.05, 1.2,
                  1.4, np.inf])


def potential(x):
  return HEIGHT * jnp.square(jnp.square(x) - 1.0)


VALUE_AND_GRAD = jax.value_and_grad(potential)


@functools.partial(jax.jit, static_argnames='num_rounds')
def run(key, temperatures, num_rounds, exchange):
  """Every model starts at x = +1 in slot = its index; each round one HMC transition per
  model at its slot's temperature, then (with ``exchange``) one swap round.

  Returns (x of the model in slot 0 each round (R,), swap infos (R, K), HMC acceptance (R, K)).
  """
  k = temperatures.shape[0]
  betas = 1.0 / temperatures
  states = jax.vmap(lambda x: hmc.init(VALUE_AND_GRAD, x))(jnp.ones(k))
  slots = jnp.arange(k)

  def one_round(carry, inputs):
    states, slots = carry
    r, key = inputs
    hmc_key, swap_key = jax.random.split(key)
    states, info = jax.vmap(
        lambda s, kk, t: hmc.hmc_step(VALUE_AND_GRAD, s, kk, STEP_SIZE, t, NUM_STEPS, 0.2))(
            states, jax.random.split(hmc_key, k), temperatures[slots])
    new_slots, swap_info = rx.swap(states.potential, slots, betas, swap_key, r)
    slots = jnp.where(exchange, new_slots, slots)        # traced: one compilation for both runs
    cold = states.params[jnp.argmin(slots)]
    return (states, slots), (cold, swap_info, info['accepted'])

  rounds = (jnp.arange(num_rounds), jax.random.split(key, num_rounds))
  return jax.lax.scan(one_round, (states, slots), rounds)[1]


def exact_bin_probabilities(temperature=1.0):
  density = lambda x: math.exp(-HEIGHT * (x * x - 1) ** 2 / temperature)
  lo, hi = -3.0, 3.0                                              # U / T > 700 beyond
  edges = np.clip(EDGES, lo, hi)
  mass = np.array([integrate.quad(density, a, b, epsabs=1e-13)[0]
                   for a, b in zip(edges[:-1], edges[1:])])
  return mass / mass.sum()


def chi_squared(x, probabilities):
  """Pearson's statistic with each bin's count weighted by its indicator's ESS.

  For n independent draws sum_b n (f_b - p_b)^2 / p_b is chi^2(B - 1); autocorrelation
  inflates the variance of f_b by n / ESS_b, which replacing n with ESS_b undoes
  (approximately: the bins' ESS differ, and their covariance is the multinomial one
  scaled per bin).
  """
  bins = np.digitize(np.asarray(x), EDGES[1:-1])
  indicators = jnp.asarray(bins[None, :] == np.arange(len(probabilities))[:, None], jnp.float32)
  ess = np.asarray(jax.jit(jax.vmap(td.effective_sample_size))(indicators))
  freq = np.asarray(indicators.mean(1))
  return float(np.sum(ess * (freq - probabilities) ** 2 / probabilities)), freq, ess


def exact_log_z(temperature):
  value, _ = integrate.quad(lambda x: math.exp(-HEIGHT * (x * x - 1) ** 2 / temperature), -4, 4,
                            epsabs=1e-13, points=[-1.0, 0.0, 1.0])
  return math.log(value)


@jax.jit
def _log_z(temps, slot_energies):
  s = jax.vmap(td.chain_mean, in_axes=1)(slot_energies)
  return td.log_partition_difference(1.0 / temps, s['mean'], s['std_error'], s['variance'],
                                     s['variance_std_error'], variable='log_beta')


def log_z_check(temps, slot_energies):
  """log Z(1 / 16) - log Z(1) by thermodynamic integration over the exchange run's rungs
  (their energies by slot, from the exchange's all-gather), against quadrature."""
  r = _log_z(temps, slot_energies)
  return {'estimate': float(r['estimate'][-1]), 'trapezoid': float(r['trapezoid'][-1]),
          'exact': exact_log_z(float(temps[-1])) - exact_log_z(float(temps[0])),
          'std_error': float(r['std_error'][-1]), 'quadrature_error': float(r['quadrature_error'][-1])}


def _check(num_rounds, seed):
  """Returns the figures the tests assert on (and print)."""
  key = jax.random.key(seed)
  temps = jnp.asarray(TEMPERATURES, jnp.float32)
  burn = num_rounds // 10
  p = exact_bin_probabilities()
  df = len(p) - 1
  bound = stats.chi2.ppf(0.999, df)
  out = {'bound': bound}
  for exchange in (True, False):
    cold, swap_info, accepted = run(key, temps, num_rounds, jnp.bool_(exchange))
    x = cold[burn:]
    stat, freq, ess = chi_squared(x, p)
    right = jax.jit(td.chain_mean)((x > 0).astype(jnp.float32))
    out[exchange] = {'chi2': stat, 'right_well': float(right['mean']),
                     'right_well_se': float(right['std_error']), 'min_bin_ess': float(ess.min()),
                     'well_changes': int(np.sum(np.diff(np.sign(np.asarray(x))) != 0)),
                     'hmc_acceptance': np.asarray(accepted.mean(0)).round(3).tolist()}
    if exchange:
      rates = rx.pair_acceptance_rates(swap_info)
      out[exchange]['swap_rates'] = np.asarray(rates['probability']).round(3).tolist()
      out['log_z'] = log_z_check(temps, swap_info['slot_energies'][burn:])
  return out


def _assert(out):
  ex, plain = out[True], out[False]
  # With exchange: chi-squared below its 0.999 quantile (df 13: 34.5), and the weight of
  # the right well 1/2 (exact, by symmetry) within 4 se.
  assert ex['chi2'] < out['bound'], out
  assert abs(ex['right_well'] - 0.5) < 4 * ex['right_well_se'], out
  assert min(ex['swap_rates']) > 0.3, out
  # Thermodynamic integration over the same run's ladder (rungs correlated by the swaps,
  # so the propagated se is approximate): within 4 se plus the quadrature error.
  z = out['log_z']
  assert abs(z['estimate'] - z['exact']) < 4 * z['std_error'] + z['quadrature_error'], out
  # Without: every sample stays in the starting well, and the same check fails by far.
  assert plain['right_well'] == 1.0 and plain['well_changes'] == 0, out
  assert plain['chi2'] > 10 * out['bound'], out


def test_replica_exchange_samples_both_wells_and_plain_hmc_does_not():
  out = _check(5000, seed=0)
  print(out)
  _assert(out)


@pytest.mark.slow
def test_replica_exchange_samples_both_wells_long():
  out = _check(50_000, seed=1)
  print(out)
  _assert(out)
