"""Replica exchange between neighbouring temperatures of the models axis, one collective a round.

Sampling mode (issue 31) makes the ensemble's models replicas of exp(-beta U) at a
ladder of inverse temperatures beta = 1 / T. Exchanging states between neighbouring
rungs lets the cold replicas cross barriers that only the hot ones climb.

Temperatures move, parameters stay: every model keeps its params (and optimiser or
sampler state) on its device, and ``slots[m]`` says which rung model m holds. A
round proposes to swap the models in slots (s, s + 1) for every s of one parity
(even s on even rounds, odd s on odd ones, so no slot is in two pairs), and accepts
each proposal with

  min(1, exp((beta_s - beta_{s+1}) (E_s - E_{s+1}))),

E_s the energy of the model in slot s. That is the Metropolis ratio of the product
target prod_s exp(-beta_s E_s) after the swap to before it: the cold slot (larger
beta) takes the lower energy with certainty. A NaN energy makes the ratio NaN and
the swap is refused. Alternating the parity deterministically (rather than drawing
it each round) is the non-reversible even-odd scheme, under which a replica travels
the ladder in O(K) rounds instead of the O(K^2) of a random walk (Syed et al. 2019,
"Non-reversible parallel tempering"); each round still keeps the product target.

The same ratio serves both ladders of ``varjax.analysis.thermodynamic``: energies U
(likelihood and prior) with beta = 1 / T for the tempered ladder exp(-U / T); energies
-log L with beta = b for the power posterior L^b p, whose untempered prior cancels.

Slots may hold several independent ladders side by side: with ``ladder_size`` K,
slots [jK, (j + 1) K) are ladder j and no pair crosses between ladders.

Sharded form (``exchange``): inside ``jax.shard_map`` over the models axis each
device holds its models' energies and slots; one all-gather brings every model's
(energy, slot) to every device, each device computes the same decisions from the
same replicated key, and keeps its own models' new slots. No other collective.

Example (two models; the cold slot 0 holds the higher energy, so they swap):
  >>> new_slots, info = swap(jnp.array([3.0, 1.0]), jnp.array([0, 1]),
  ...                        jnp.array([1.0, 0.5]), jax.random.key(0), 0)
  >>> new_slots.tolist(), float(info['acceptance_probability'][0])
  ([1, 0], 1.0)
"""

import jax
import jax.numpy as jnp
import numpy as np

# The mesh axis of the models (varjax.mesh.MODELS; spelled here because this module
# imports nothing else from varjax).
MODELS = 'models'


def geometric_ladder(t_min, t_max, num):
  """(num,) log-spaced temperatures from t_min to t_max (a constant ratio between rungs).

  For a harmonic U in d dimensions (Var U = d T^2 / 2) neighbouring rungs with ratio r
  exchange with probability about 2 Phi(-sqrt(d) log(r) / 2) when that is not small:
  a function of the ratio alone, so a geometric ladder has equal rates along it, and
  keeping the rate as d grows takes log r ~ 1 / sqrt(d) (about sqrt(d) rungs per
  e-fold of T).
  """
  return np.geomspace(t_min, t_max, num)


def pair_mask(num_slots, round_index, ladder_size=None):
  """(num_slots,) bool: True at slot s when the pair (s, s + 1) is proposed this round.

  Args:
    num_slots: N, a Python int.
    round_index: the round's number (may be traced); its parity picks the pairs.
    ladder_size: K slots a ladder (N a multiple of K); None for one ladder of N.

  Returns:
    The mask; entry s stands for the pair (s, s + 1).
  """
  k = num_slots if ladder_size is None else ladder_size
  if num_slots % k:
    raise ValueError(f'{num_slots} slots is not a multiple of ladder_size={k}.')
  rung = jnp.arange(num_slots) % k
  return (rung % 2 == jnp.asarray(round_index) % 2) & (rung + 1 < k)


def swap_log_ratio(betas, slot_energies):
  """(N,) log Metropolis ratio of swapping slots s and s + 1 (entry N - 1 is 0, no pair).

  Args:
    betas: (N,) inverse temperature of each slot.
    slot_energies: (N,) energy of the model in each slot.

  Returns:
    (beta_s - beta_{s+1}) (E_s - E_{s+1}) for each s.
  """
  log_ratio = (betas[:-1] - betas[1:]) * (slot_energies[:-1] - slot_energies[1:])
  return jnp.concatenate([log_ratio, jnp.zeros((1,), log_ratio.dtype)])


def swap(energies, slots, betas, key, round_index, ladder_size=None):
  """One exchange round over all N models, on one device.

  Args:
    energies: (N,) each model's energy (U, or -log L for a power posterior).
    slots: (N,) int, model m holds slot ``slots[m]``; a permutation of 0..N-1.
    betas: (N,) inverse temperature of each slot (1 / T, or the power b).
    key: the round's PRNG key, the same on every device.
    round_index: the round's number (may be traced): even rounds pair (0, 1), (2, 3)...,
      odd rounds (1, 2), (3, 4)...
    ladder_size: slots per ladder (``pair_mask``).

  Returns:
    (new_slots, info): new_slots (N,) int, each model's slot after the round; info a
    dict of (N,) arrays whose entry s is for the pair (s, s + 1): proposed (bool),
    accepted (bool), acceptance_probability (min(1, ratio); 0 where not proposed);
    and slot_energies, entry s the energy in slot s before the round (rung s's sample
    of the energy, which thermodynamic integration averages: every device has the
    whole ladder's without another collective).
  """
  slot_map, info = _decide(energies, slots, betas, key, round_index, ladder_size)
  return slot_map[slots], info


def _decide(energies, slots, betas, key, round_index, ladder_size):
  """``swap``'s decisions as slot_map (N,): the slot that each slot's model moves to."""
  n = energies.shape[0]
  model_in_slot = jnp.zeros(n, slots.dtype).at[slots].set(jnp.arange(n, dtype=slots.dtype))
  slot_energies = energies[model_in_slot]
  log_ratio = swap_log_ratio(betas, slot_energies)
  proposed = pair_mask(n, round_index, ladder_size)
  u = jax.random.uniform(key, (n,), log_ratio.dtype)
  # u < min(1, ratio) as log u < log ratio: no overflow; a NaN ratio compares False.
  accepted = proposed & (jnp.log(u) < log_ratio)
  probability = jnp.where(proposed & ~jnp.isnan(log_ratio),
                          jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
  # Slot s moves up when pair (s, s+1) swaps, down when pair (s-1, s) does.
  down = jnp.concatenate([jnp.zeros((1,), bool), accepted[:-1]])
  slot_map = (jnp.arange(n, dtype=slots.dtype) + accepted.astype(slots.dtype)
              - down.astype(slots.dtype))
  return slot_map, {'proposed': proposed, 'accepted': accepted,
                    'acceptance_probability': probability, 'slot_energies': slot_energies}


def exchange(energies, slots, betas, key, round_index, ladder_size=None, axis_name=MODELS):
  """``swap`` inside ``jax.shard_map``: this device's models in, their new slots out.

  One all-gather of the (energy, slot) pairs is the only communication: every device
  then runs the same ``swap`` on all N models with the same key, so the decisions
  agree everywhere, and keeps its own models' rows.

  Args:
    energies: (n,) this device's models' energies (n = N / devices).
    slots: (n,) int, their slots.
    betas: (N,) every slot's inverse temperature (replicated).
    key: the round's PRNG key (replicated).
    round_index: the round's number (replicated).
    ladder_size: slots per ladder (``pair_mask``).
    axis_name: the mesh axis the models are split over; None runs ``swap`` on the
      local models alone (one device).

  Returns:
    (new_slots, info): new_slots (n,) int for this device's models; info as ``swap``'s,
    (N,) and the same on every device (out_specs P() for it).
  """
  if axis_name is None:
    return swap(energies, slots, betas, key, round_index, ladder_size)
  # One collective: slots travel in the energies' float type (exact below 2^24 models
  # in float32), packed beside them.
  dtype = jnp.promote_types(energies.dtype, jnp.float32)
  packed = jnp.stack([energies.astype(dtype), slots.astype(dtype)], axis=-1)
  # 'invarying': the result is typed as the same on every device, so the decisions
  # (and ``info``) may leave shard_map replicated, out_specs P().
  gathered = jax.lax.all_gather(packed, axis_name, tiled=True, to='invarying')   # (N, 2)
  all_slots = gathered[:, 1].astype(slots.dtype)
  slot_map, info = _decide(gathered[:, 0], all_slots, betas, key, round_index, ladder_size)
  return slot_map[slots], info


def pair_acceptance_rates(info):
  """Per-pair swap acceptance over rounds, from ``swap``'s infos stacked on a leading axis.

  Args:
    info: dict of (R, N) arrays (proposed, accepted, acceptance_probability).

  Returns:
    dict of (N - 1,) arrays, entry s for the pair (s, s + 1), NaN where never proposed
    (across ladders): probability, the mean acceptance probability (lower variance
    than the accepted fraction, the same expectation); accepted, the fraction of
    proposals accepted; proposals, the count.
  """
  proposed = info['proposed'][:, :-1]
  count = proposed.sum(0)
  mean = lambda x: jnp.where(count > 0, jnp.where(proposed, x[:, :-1], 0).sum(0) / count, jnp.nan)
  return {'probability': mean(info['acceptance_probability']),
          'accepted': mean(info['accepted'].astype(jnp.float32)), 'proposals': count}
