"""Optimiser pieces against hand-written references of airbench's PyTorch recipe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.training import optim
def test_sgd_units_match_the_recipe():
  lr, wd = optim.sgd_units(11.5, 0.0153, 0.85, batch_size=1024)
  assert lr == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)))
  assert lr == pytest.approx(1.46e-3, rel=0.01)
  assert wd == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))


def airbench_lr_factor(step, total):
  warmup = int(total * 0.23)
  if step < warmup:
    frac = step / warmup
    return 0.2 * (1 - frac) + frac
  frac = (step - warmup) / (total - warmup)
  return (1 - frac) + 0.07 * frac


@pytest.mark.parametrize('total', [10, 97, 476])
def test_lr_factor_is_piecewise_linear(total):
  got = [float(optim.lr_factor(s, total, 0.23, 0.2, 0.07)) for s in range(total + 1)]
  want = [airbench_lr_factor(s, total) for s in range(total + 1)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def torch_nesterov_sgd(params, grads_seq, lr, wd_coupled, momentum, factors):
  """torch.optim.SGD(nesterov=True) with weight_decay=wd_coupled and lr scheduled."""
  p, buf = params.copy(), None
  for g, f in zip(grads_seq, factors):
    d = g + wd_coupled * p
    buf = d if buf is None else momentum * buf + d
    p = p - lr * f * (d + momentum * buf)
  return p


def test_nesterov_sgd_matches_torch_sgd_with_lr_coupled_decay():
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(5,)).astype(np.float32),
            'norm': rng.normal(size=(3,)).astype(np.float32),
            'frozen': rng.normal(size=(2,)).astype(np.float32)}
  scales = {'w': 1.0, 'norm': 64.0, 'frozen': 0.0}
  lr, wd, m = 1e-3, 5e-4, 0.85
  tx = optim.nesterov_sgd(lr, wd, m, scales)
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  grads_seq = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
               for _ in range(4)]
  factors = [0.2, 0.5, 1.0, 0.7]
  for g, f in zip(grads_seq, factors):
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, u: a + f * u, p, updates)
  for name, s in scales.items():
    if s == 0:
      np.testing.assert_array_equal(p[name], params[name])
      continue
    # airbench: torch weight_decay = wd / group_lr, so the decay per step is wd.
    want = torch_nesterov_sgd(params[name], [g[name] for g in grads_seq], lr * s,
                              wd / (lr * s), m, factors)
    np.testing.assert_allclose(p[name], want, rtol=1e-5, atol=1e-7)


def test_lookahead_matches_airbench_schedule():
  total, every, decay = 20, 5, 0.95
  rng = np.random.default_rng(1)
  params = ema = {'w': jnp.asarray(rng.normal(size=3), jnp.float32)}
  net_ref = ema_ref = np.asarray(params['w'], np.float64)
  for step in range(1, total + 1):
    noise = rng.normal(size=3)
    params = {'w': params['w'] + noise.astype(np.float32)}
    net_ref = net_ref + noise
    params, ema = optim.lookahead(params, ema, step, total, decay, every, 3)
    if step % every == 0:
      d = decay ** every * (step / total) ** 3
      ema_ref = ema_ref + (1 - d) * (net_ref - ema_ref)  # torch lerp_(net, 1 - d)
      net_ref = ema_ref.copy()
    np.testing.assert_allclose(params['w'], net_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ema['w'], ema_ref, rtol=1e-5, atol=1e-5)
