"""Hessian estimators against closed-form Hessians: quadratics and linear softmax regression."""

import jax
import jax.numpy as jnp
import numpy as np

from varjax.measures import sharpness
from varjax.training import recipe as recipe_lib
from varjax.training import step as step_lib
from varjax.models import airbench
from varjax.models import layers

from conftest import tiny_config


def stacked_quadratic(hessians):
  """hvp on stacked pytrees {'a': (N, 5), 'b': (N, 3)} for per-model matrices (N, 8, 8)."""
  h = jnp.asarray(hessians, jnp.float32)

  def hvp(v):
    flat = jnp.concatenate([v['a'], v['b']], axis=1)
    out = jnp.einsum('nij,nj->ni', h, flat, precision=jax.lax.Precision.HIGHEST)
    return {'a': out[:, :5], 'b': out[:, 5:]}

  return hvp


def spd_with_spectrum(rng, spectrum):
  q, _ = np.linalg.qr(rng.normal(size=(len(spectrum), len(spectrum))))
  return q @ np.diag(spectrum) @ q.T


def test_power_iteration_finds_the_top_eigenvalue_within_its_residual():
  rng = np.random.default_rng(0)
  spectra = [[10, 4, 3, 2, 1, 1, 0.5, -1], [6, 5.5, 2, 1, 0, 0, 0, 0], [1, 0.9, 0.2, 0, 0, 0, 0, 0]]
  hessians = np.stack([spd_with_spectrum(rng, s) for s in spectra])
  start = {'a': jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
           'b': jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}
  r = sharpness.power_iteration(stacked_quadratic(hessians), start, num_iterations=60)
  top = np.array([max(s) for s in spectra])
  est, residual = np.asarray(r['top_eigenvalue']), np.asarray(r['residual'])
  np.testing.assert_allclose(est, top, rtol=2e-3)
  assert np.all(np.abs(est - top) <= residual + 1e-4)
  assert r['history'].shape == (3, 60)
  # Few iterations: a Rayleigh quotient never exceeds the top eigenvalue, and some
  # eigenvalue lies within the residual of it (here not the top one of model 1).
  short = sharpness.power_iteration(stacked_quadratic(hessians), start, num_iterations=3)
  est, residual = np.asarray(short['top_eigenvalue']), np.asarray(short['residual'])
  assert np.all(est <= top + 1e-4)
  nearest = np.array([np.min(np.abs(np.array(s) - e)) for s, e in zip(spectra, est)])
  assert np.all(nearest <= residual + 1e-4)


def test_hutchinson_is_exact_on_diagonal_hessians_and_unbiased_otherwise():
  rng = np.random.default_rng(1)
  diag = rng.normal(size=(2, 8))
  probes = [{'a': jnp.asarray(rng.choice([-1.0, 1.0], size=(2, 5)), jnp.float32),
             'b': jnp.asarray(rng.choice([-1.0, 1.0], size=(2, 3)), jnp.float32)}
            for _ in range(3)]
  r = sharpness.hutchinson_trace(stacked_quadratic(np.stack([np.diag(d) for d in diag])),
                                 lambda p: probes[p], 3)
  np.testing.assert_allclose(r['trace'], diag.sum(1), rtol=1e-5)  # z_i^2 = 1
  np.testing.assert_allclose(r['trace_stderr'], 0, atol=1e-5)
  # A dense Hessian: each estimate is z'Hz in NumPy, their mean and standard error.
  h = np.stack([spd_with_spectrum(rng, rng.normal(size=8)) for _ in range(2)])
  r = sharpness.hutchinson_trace(stacked_quadratic(h), lambda p: probes[p], 3)
  z = np.stack([np.concatenate([np.asarray(p['a']), np.asarray(p['b'])], 1) for p in probes], 1)
  want = np.einsum('npi,nij,npj->np', z, h, z)
  np.testing.assert_allclose(r['estimates'], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(r['trace_stderr'], want.std(1, ddof=1) / np.sqrt(3), rtol=1e-4)


def test_estimators_on_linear_softmax_regression_match_its_closed_form_hessian():
  # Mean label-smoothed CE of logits X W: H = 1/n sum_i (diag p_i - p_i p_i') kron x_i x_i'
  # (the targets do not enter), in W's row-major (feature, class) order.
  rng = np.random.default_rng(2)
  n, d, k = 40, 4, 3
  x = rng.normal(size=(n, d))
  y = rng.integers(0, k, n)
  w = rng.normal(size=(d, k)) * 0.5
  loss = lambda params: step_lib.smoothed_cross_entropy_sum(
      jnp.asarray(x, jnp.float32) @ params, jnp.asarray(y), 0.2) / n
  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  h = sum(np.kron(np.outer(xi, xi), np.diag(pi) - np.outer(pi, pi)) for xi, pi in zip(x, p)) / n
  hvp_one = sharpness.loss_hvp(loss)
  w32 = jnp.asarray(w, jnp.float32)
  for _ in range(2):
    v = rng.normal(size=(d, k))
    np.testing.assert_allclose(hvp_one(w32, jnp.asarray(v, jnp.float32)),
                               (h @ v.ravel()).reshape(d, k), rtol=1e-4, atol=1e-6)
  hvp = jax.jit(lambda v: {'w': jax.vmap(hvp_one, in_axes=(None, 0))(w32, v['w'])})  # N = 1
  r = sharpness.power_iteration(hvp, {'w': jnp.asarray(rng.normal(size=(1, d, k)), jnp.float32)},
                                num_iterations=200)
  eigenvalues = np.linalg.eigvalsh(h)
  assert abs(float(r['top_eigenvalue'][0]) - eigenvalues[-1]) <= float(r['residual'][0]) + 1e-5
  np.testing.assert_allclose(r['top_eigenvalue'][0], eigenvalues[-1], rtol=1e-3)
  keys = jax.random.split(jax.random.key(3), 1)
  probes = jax.random.rademacher(keys[0], (400, 1, d, k), jnp.float32)
  t = sharpness.hutchinson_trace(hvp, lambda i: {'w': probes[i]}, 400)
  assert abs(float(t['trace'][0]) - np.trace(h)) < 4 * float(t['trace_stderr'][0])


def test_gelu_has_the_exact_second_derivative():
  # d^2/dx^2 x Phi(x) = phi(x) (2 - x^2): the custom-jvp GELU is twice differentiable.
  x = np.linspace(-4, 4, 17)
  got = jax.vmap(jax.grad(jax.grad(layers.gelu)))(jnp.asarray(x, jnp.float32))
  phi = np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(got, phi * (2 - x * x), atol=1e-6)


def test_model_hvp_matches_reverse_over_reverse_and_adds_over_batches():
  """make_hvp_one (forward over reverse, sliced conv gradients) against reverse over
  reverse on the same network with XLA's conv gradients. (Finite differences of the
  gradient are no reference here: max pooling makes the gradient piecewise smooth,
  and steps of 1e-5 already cross its kinks.)"""
  config = tiny_config()
  recipe = recipe_lib.Recipe.from_config(config, num_train=32)
  model = airbench.Airbench(widths=(4, 8, 8), conv_weight_grad='sliced', conv_grad_slice=4)
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
  kernel = airbench.whitening_kernel(rng.normal(size=(8, 32, 32, 3)), 2)
  variables = airbench.init_variables(model, jax.random.key(0), kernel)
  state = {'ema_params': variables['params'], 'ema_batch_stats': variables['batch_stats'],
           'params': variables['params'], 'batch_stats': variables['batch_stats']}
  hparams = {'label_smoothing': jnp.float32(0.2), 'label_noise': jnp.float32(0)}
  trainable, frozen = sharpness.split_trainable(variables['params'])
  assert 'whiten_kernel' in frozen and 'whiten_bias' in trainable
  v = sharpness.random_like(jax.random.key(1), trainable, 'normal')
  hvp_one = jax.jit(sharpness.make_hvp_one(model, recipe, seed=0, num_images=32))
  ids = jnp.arange(32, dtype=jnp.int32)
  whole = hvp_one((state, hparams, 0, v), images, labels, ids)
  halves = [hvp_one((state, hparams, 0, v), images[s:s + 16], labels, ids[s:s + 16])
            for s in (0, 16)]
  for a, b, c in zip(*map(jax.tree.leaves, (whole, *halves))):
    np.testing.assert_allclose(a, b + c, rtol=1e-4, atol=1e-6)

  plain = airbench.Airbench(widths=(4, 8, 8), conv_weight_grad='xla')
  x = (jnp.asarray(images, jnp.float32) / 255.0 - jnp.asarray((0.4914, 0.4822, 0.4465))
       ) / jnp.asarray((0.2470, 0.2435, 0.2616))
  loss = lambda q: step_lib.smoothed_cross_entropy_sum(plain.apply(
      {'params': {**frozen, **q}, 'batch_stats': variables['batch_stats']}, x, train=False),
      labels, 0.2) / 32
  directional = lambda q: sum(jnp.vdot(g, t) for g, t in zip(
      jax.tree.leaves(jax.grad(loss)(q)), jax.tree.leaves(v)))
  want = jax.jit(jax.grad(directional))(trainable)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * float(jnp.abs(b).max()))
