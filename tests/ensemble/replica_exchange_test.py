"""Replica exchange: the swap ratio on hand-computed cases, its sign through the stationary
distribution it must keep, and the sharded form's one collective."""

import ast
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P
from scipy import integrate
from scipy import special

from varjax.ensemble import replica_exchange as rx

COLLECTIVES = ('all-gather', 'all-gather-start', 'all-reduce', 'all-reduce-start',
               'collective-permute', 'collective-permute-start', 'all-to-all',
               'ragged-all-to-all', 'reduce-scatter', 'collective-broadcast', 'send', 'recv')


# round_index traced: one compilation per shape for every round.
_swap = jax.jit(rx.swap, static_argnames='ladder_size')


@jax.jit
def _swap_keys(energies, slots, betas, keys, round_index):
  return jax.vmap(lambda k: rx.swap(energies, slots, betas, k, round_index))(keys)


def _accept_fraction(energies, slots, betas, round_index, num_keys=4000):
  """Fraction of keys for which each pair swaps, and the (key-independent) probability."""
  keys = jax.random.split(jax.random.key(7), num_keys)
  _, info = _swap_keys(energies, slots, betas, keys, round_index)
  return info['accepted'].mean(0), info['acceptance_probability'][0]


def test_cold_slot_with_higher_energy_always_swaps():
  # slot 0 (beta 1) holds E = 3, slot 1 (beta 0.5) E = 1: log ratio (1 - 0.5)(3 - 1) = +1.
  new_slots, info = _swap(jnp.array([3.0, 1.0]), jnp.array([0, 1]), jnp.array([1.0, 0.5]),
                         jax.random.key(0), 0)
  assert new_slots.tolist() == [1, 0]
  assert info['accepted'].tolist() == [True, False]
  assert float(info['acceptance_probability'][0]) == 1.0


def test_cold_slot_with_lower_energy_swaps_with_probability_exp_of_log_ratio():
  # log ratio (1 - 0.5)(1 - 3) = -1: probability e^-1. 4000 keys: se of the fraction
  # sqrt(p (1 - p) / 4000) = 0.0076; 4 se.
  frac, prob = _accept_fraction(jnp.array([1.0, 3.0]), jnp.array([0, 1]), jnp.array([1.0, 0.5]), 0)
  assert float(prob[0]) == pytest.approx(math.exp(-1.0), rel=1e-6)
  p = math.exp(-1.0)
  assert abs(float(frac[0]) - p) < 4 * math.sqrt(p * (1 - p) / 4000)


def test_pairs_alternate_by_round_and_follow_the_slots_not_the_models():
  # Models A, B, C hold slots 2, 0, 1: slot energies (B, C, A) = (0, 2, 5), betas (2, 1, 0.5).
  energies, slots = jnp.array([5.0, 0.0, 2.0]), jnp.array([2, 0, 1])
  betas = jnp.array([2.0, 1.0, 0.5])
  frac0, prob0 = _accept_fraction(energies, slots, betas, 0)
  frac1, prob1 = _accept_fraction(energies, slots, betas, 1)
  # Round 0: pair (0, 1) alone, (2 - 1)(0 - 2) = -2. Round 1: pair (1, 2), (1 - 0.5)(2 - 5) = -1.5.
  np.testing.assert_allclose(prob0, [math.exp(-2.0), 0.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(prob1, [0.0, math.exp(-1.5), 0.0], rtol=1e-6)
  assert float(frac0[1]) == 0.0 and float(frac1[0]) == 0.0
  for frac, p in ((frac0[0], math.exp(-2.0)), (frac1[1], math.exp(-1.5))):
    assert abs(float(frac) - p) < 4 * math.sqrt(p * (1 - p) / 4000)
  # Where round 1 swaps, model C (slot 1) and model A (slot 2) trade slots; B stays.
  keys = jax.random.split(jax.random.key(7), 64)
  new_slots, info = _swap_keys(energies, slots, betas, keys, 1)
  swapped = np.asarray(info['accepted'][:, 1])
  assert swapped.any() and not swapped.all()
  np.testing.assert_array_equal(np.asarray(new_slots)[swapped], [[1, 0, 2]] * swapped.sum())
  np.testing.assert_array_equal(np.asarray(new_slots)[~swapped], [[2, 0, 1]] * (~swapped).sum())


def test_nan_energy_never_swaps_and_ladders_do_not_mix():
  _, info = _swap(jnp.array([jnp.nan, 1.0]), jnp.array([0, 1]), jnp.array([1.0, 0.5]),
                   jax.random.key(0), 0)
  assert not bool(info['accepted'][0]) and float(info['acceptance_probability'][0]) == 0.0
  # Two ladders of two: round 1's only candidate pair (1, 2) straddles them.
  assert rx.pair_mask(4, 1, ladder_size=2).tolist() == [False, False, False, False]
  assert rx.pair_mask(4, 0, ladder_size=2).tolist() == [True, False, True, False]
  assert rx.pair_mask(5, 1).tolist() == [False, True, False, True, False]


def test_slots_stay_a_permutation():
  n, rng = 12, np.random.default_rng(0)
  slots = jnp.asarray(rng.permutation(n), jnp.int32)
  betas = jnp.asarray(1 / rx.geometric_ladder(1.0, 8.0, n), jnp.float32)
  for r in range(20):
    energies = jnp.asarray(rng.normal(size=n) * 2, jnp.float32)
    slots, _ = _swap(energies, slots, betas, jax.random.key(r), r)
    assert sorted(np.asarray(slots).tolist()) == list(range(n))


def _exact_two_replica_acceptance(beta0, beta1):
  """E[min(1, exp((beta0 - beta1)(E0 - E1)))], E_i = x_i^2 / 2, x_i ~ N(0, 1 / beta_i).

  With beta0 > beta1 and a = |x0|: the swap is certain for |x1| <= a (probability erf(a sqrt(beta1 / 2))),
  and for |x1| > a the Gaussian integral of exp((beta0 - beta1)(a^2 - x1^2) / 2) leaves
  sqrt(beta1 / beta0) exp(-beta1 a^2 / 2) erfcx(a sqrt(beta0 / 2)); then average over a.
  """

  def given_a(a):
    inner = (special.erf(a * math.sqrt(beta1 / 2))
             + math.sqrt(beta1 / beta0) * math.exp(-beta1 * a * a / 2)
             * special.erfcx(a * math.sqrt(beta0 / 2)))
    return 2 * math.sqrt(beta0 / (2 * math.pi)) * math.exp(-beta0 * a * a / 2) * inner

  value, _ = integrate.quad(given_a, 0, math.inf, epsabs=1e-12)
  return value


def test_swap_keeps_each_slot_at_its_own_temperature():
  """Exact draws at (T0, T1) = (1, 4) stay distributed so after a swap (the sign check).

  M = 40,000 independent two-replica systems, x ~ N(0, T_slot) exactly, U = x^2 / 2; after
  one swap the x in slot 0 must have variance 1 and slot 1's variance 4. The sample
  variance of M normal draws has se sqrt(2 / M) T (0.0071 T); 5 se. Swapping with the
  sign reversed sends the hot replica's x into slot 0 most of the time (variance 4.2 here).
  The mean acceptance probability matches its exact expectation (2-D quadrature), within
  5 se of the draws' probabilities.
  """
  m, betas = 40_000, jnp.array([1.0, 0.25])
  kx, ks = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (m, 2)) / jnp.sqrt(betas)           # model j starts in slot j
  slots = jnp.broadcast_to(jnp.arange(2), (m, 2))
  new_slots, info = jax.jit(jax.vmap(lambda e, s, k: rx.swap(e, s, betas, k, 0)))(
      0.5 * x ** 2, slots, jax.random.split(ks, m))
  in_slot0 = jnp.where(new_slots[:, 0] == 0, x[:, 0], x[:, 1])
  in_slot1 = jnp.where(new_slots[:, 0] == 1, x[:, 0], x[:, 1])
  se = math.sqrt(2 / m)
  assert abs(float(jnp.mean(in_slot0 ** 2)) - 1.0) < 5 * se * 1.0
  assert abs(float(jnp.mean(in_slot1 ** 2)) - 4.0) < 5 * se * 4.0
  p = info['acceptance_probability'][:, 0]
  exact = _exact_two_replica_acceptance(1.0, 0.25)
  assert abs(float(p.mean()) - exact) < 5 * float(p.std()) / math.sqrt(m)
  rates = rx.pair_acceptance_rates(info)
  assert float(rates['probability'][0]) == pytest.approx(float(p.mean()), rel=1e-5)
  assert int(rates['proposals'][0]) == m


def test_pair_acceptance_rates_hand_case():
  info = {'proposed': jnp.array([[True, False, True], [False, True, False]]),
          'accepted': jnp.array([[True, False, False], [False, True, False]]),
          'acceptance_probability': jnp.array([[1.0, 0.0, 0.25], [0.0, 0.5, 0.0]])}
  r = rx.pair_acceptance_rates(info)
  np.testing.assert_allclose(r['probability'], [1.0, 0.5])
  np.testing.assert_allclose(r['accepted'], [1.0, 1.0])
  np.testing.assert_array_equal(r['proposals'], [1, 1])


def _collective_counts(hlo_text):
  counts = {op: len(re.findall(rf'(?<![\w-]){re.escape(op)}\(', hlo_text)) for op in COLLECTIVES}
  return {op: c for op, c in counts.items() if c}


def test_sharded_exchange_matches_one_device_with_one_all_gather():
  devices = jax.devices()
  assert len(devices) == 8
  mesh = Mesh(np.asarray(devices), (rx.MODELS,))
  n, ladder = 32, 16                                              # 4 models a device, 2 ladders
  betas = jnp.asarray(1 / np.tile(rx.geometric_ladder(1.0, 10.0, ladder), 2), jnp.float32)
  sharded = jax.jit(jax.shard_map(
      lambda e, s, b, k, r: rx.exchange(e, s, b, k, r, ladder_size=ladder),
      mesh=mesh, in_specs=(P(rx.MODELS), P(rx.MODELS), P(), P(), P()),
      out_specs=(P(rx.MODELS), P())))
  one_device = jax.jit(lambda e, s, b, k, r: rx.swap(e, s, b, k, r, ladder_size=ladder))

  rng = np.random.default_rng(3)
  slots = jnp.asarray(rng.permutation(n), jnp.int32)
  swaps = 0
  for r in range(6):
    # Energies on the scale of the slots' temperatures, so that some pairs swap and some not.
    energies = jnp.asarray(rng.normal(size=n) * 3, jnp.float32)
    key = jax.random.key(100 + r)
    got_slots, got_info = sharded(energies, slots, betas, key, jnp.int32(r))
    want_slots, want_info = one_device(energies, slots, betas, key, jnp.int32(r))
    np.testing.assert_array_equal(got_slots, want_slots)
    for k in want_info:
      np.testing.assert_array_equal(got_info[k], want_info[k])
    swaps += int(want_info['accepted'].sum())
    np.testing.assert_array_equal(got_info['slot_energies'], energies[jnp.argsort(slots)])
    slots = got_slots
  assert 0 < swaps < 6 * (n // 2)

  hlo = sharded.lower(energies, slots, betas, key, jnp.int32(0)).compile().as_text()
  assert _collective_counts(hlo) == {'all-gather': 1}, _collective_counts(hlo)


def test_imports_nothing_else_from_varjax():
  # The exchange is pure maths over the models axis: the ensemble imports it, not the reverse.
  tree = ast.parse(pathlib.Path(rx.__file__).read_text())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert not [m for m in names if m.split('.')[0] == 'varjax'], names
