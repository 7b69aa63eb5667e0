"""Thermodynamic integration and effective sample sizes against closed forms: AR(1) chains,
a Gaussian's log Z(beta), and a conjugate Gaussian model's evidence through its power
posteriors (exact moments, then HMC samples)."""

import ast
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from varjax.analysis import thermodynamic as td
from varjax.training import hmc


# Jitted once each: op-by-op dispatch of these small functions costs more than compiling.
log_z = jax.jit(td.log_partition_difference, static_argnames='variable')
log_evidence = jax.jit(td.log_evidence)
chain_mean = jax.jit(td.chain_mean)


@functools.partial(jax.jit, static_argnames='n')
def ar1(key, phi, n):
  """A stationary AR(1) chain x_t = phi x_{t-1} + e_t: tau = (1 + phi) / (1 - phi) exactly."""
  e = jax.random.normal(key, (n,))
  x0 = e[0] / jnp.sqrt(1 - phi ** 2)
  _, xs = jax.lax.scan(lambda x, ei: (phi * x + ei,) * 2, x0, e[1:])
  return jnp.concatenate([x0[None], xs])


@pytest.mark.parametrize('phi', [-0.5, 0.0, 0.5, 0.9])
def test_autocorrelation_time_of_ar1_chains(phi):
  """Mean tau over 8 chains of 20,000 within 10% of (1 + phi) / (1 - phi).

  The truncated estimator's sd on one chain is about tau sqrt(2 (2M + 1) / n), M the
  truncation lag (~3 tau): 8% at phi = 0.9, measured 8% too; over 8 chains 2.8%, so
  10% is 3.5 se (and Geyer's truncation bias is ~1% here).
  """
  keys = jax.random.split(jax.random.key(11), 8)
  taus = jax.jit(jax.vmap(lambda k: td.integrated_autocorrelation_time(ar1(k, phi, 20_000))))(keys)
  assert float(taus.mean()) == pytest.approx((1 + phi) / (1 - phi), rel=0.10)


def test_constant_trace_and_autocorrelation_basics():
  assert float(td.integrated_autocorrelation_time(jnp.ones(100))) == 1.0
  assert float(td.effective_sample_size(jnp.ones(100))) == 100.0
  x = ar1(jax.random.key(0), 0.5, 4096)
  rho = td.autocorrelation(x)
  assert float(rho[0]) == pytest.approx(1.0)
  assert float(rho[1]) == pytest.approx(0.5, abs=0.05)            # se ~ 1 / sqrt(n) = 0.016
  # The FFT matches the direct biased estimate at a few lags.
  xc = np.asarray(x) - float(x.mean())
  for lag in (1, 7, 100):
    direct = np.dot(xc[:-lag], xc[lag:]) / np.dot(xc, xc)
    assert float(rho[lag]) == pytest.approx(direct, abs=1e-5)


def test_chain_mean_of_an_ar1_chain_has_the_exact_standard_error():
  # Var(x) = 1 / (1 - phi^2), tau = (1 + phi) / (1 - phi): se^2 = Var tau / n.
  phi, n = 0.8, 50_000
  r = chain_mean(ar1(jax.random.key(5), phi, n))
  want = math.sqrt((1 / (1 - phi ** 2)) * (1 + phi) / (1 - phi) / n)
  assert float(r['std_error']) == pytest.approx(want, rel=0.15)
  assert abs(float(r['mean'])) < 4 * want


def _gaussian(d, betas):
  """<U>, Var(U) and log Z(beta) - log Z(beta_0) for U = |x|^2 / 2 in d dimensions."""
  return d / (2 * betas), d / (2 * betas ** 2), (d / 2) * np.log(betas[0] / betas)


def test_quadrature_on_a_gaussian_ladder():
  """Exact means on a geometric ladder: log beta is exact, beta's trapezoid errs by about
  its reported error, and the corrected rule lands within that error."""
  betas = np.geomspace(0.1, 10.0, 9)
  m, v, exact = _gaussian(4, betas)
  zeros = jnp.zeros(9)
  log_beta = log_z(jnp.asarray(betas), jnp.asarray(m), zeros,
                                         variable='log_beta')
  np.testing.assert_allclose(log_beta['estimate'], exact, atol=1e-5)
  plain = log_z(jnp.asarray(betas), jnp.asarray(m), zeros)
  corrected = log_z(jnp.asarray(betas), jnp.asarray(m), zeros, jnp.asarray(v))
  trap_error = abs(float(plain['estimate'][-1]) - exact[-1])       # 0.52
  assert trap_error > 0.1                                          # a coarse grid: a real test
  for r in (plain, corrected):
    # The estimated trapezoid error is the right size (0.74 from divided differences,
    # 0.55 from the variances).
    assert 0.5 * trap_error < float(r['quadrature_error'][-1]) < 2 * trap_error
  assert abs(float(corrected['estimate'][-1]) - exact[-1]) < 0.1 * trap_error
  np.testing.assert_array_less(np.abs(np.asarray(corrected['estimate']) - exact),
                               np.asarray(corrected['quadrature_error']) + 1e-6)
  # Integrating downwards in beta gives the negated difference.
  down = log_z(jnp.asarray(betas[::-1]), jnp.asarray(m[::-1]), zeros,
                                     jnp.asarray(v[::-1]))
  assert float(down['estimate'][-1]) == pytest.approx(-float(corrected['estimate'][-1]), rel=1e-5)


def test_quadrature_weights_hand_case():
  w, c = td.quadrature_weights(jnp.array([0.0, 1.0, 3.0]))
  np.testing.assert_allclose(w, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 1.5, 1.0]])
  np.testing.assert_allclose(c, [[0, 0, 0], [1 / 12, -1 / 12, 0],
                                 [1 / 12, 4 / 12 - 1 / 12, -4 / 12]])
  # Exact for a cubic: integral_0^3 t^3 = 81 / 4 from f and f' at the rungs.
  t = jnp.array([0.0, 1.0, 3.0])
  assert float((w @ t ** 3 + c @ (3 * t ** 2))[-1]) == pytest.approx(81 / 4)


class Conjugate:
  """y_i ~ N(theta, s^2), i = 1..n, prior theta ~ N(mu0, tau0^2): every power posterior
  L^b p is Gaussian, and the evidence is N(y; mu0 1, s^2 I + tau0^2 1 1')."""

  def __init__(self, n=20, s=1.0, mu0=0.5, tau0=2.0, seed=0):
    self.s, self.mu0, self.tau0 = s, mu0, tau0
    self.y = np.random.default_rng(seed).normal(1.3, s, n)
    self.n = n

  def log_evidence(self):
    cov = self.s ** 2 * np.eye(self.n) + self.tau0 ** 2 * np.ones((self.n, self.n))
    return stats.multivariate_normal(self.mu0 * np.ones(self.n), cov).logpdf(self.y)

  def posterior(self, b):
    """Mean and variance of theta under L^b p."""
    var = 1 / (1 / self.tau0 ** 2 + b * self.n / self.s ** 2)
    return var * (self.mu0 / self.tau0 ** 2 + b * self.y.sum() / self.s ** 2), var

  def log_likelihood_moments(self, b):
    """<log L>_b and Var_b(log L): log L = c - (S + n (theta - ybar)^2) / (2 s^2)."""
    mean, var = self.posterior(b)
    ybar, k = self.y.mean(), self.n / (2 * self.s ** 2)
    scatter = ((self.y - ybar) ** 2).sum()
    a = mean - ybar
    mean_ll = (-self.n / 2 * math.log(2 * math.pi * self.s ** 2)
               - (scatter + self.n * (a * a + var)) / (2 * self.s ** 2))
    return mean_ll, k * k * (2 * var * var + 4 * a * a * var)

  def negative_log_likelihood(self, theta):
    return (0.5 * jnp.sum(jnp.square(jnp.asarray(self.y) - theta)) / self.s ** 2
            + self.n / 2 * math.log(2 * math.pi * self.s ** 2))

  def negative_log_prior(self, theta):
    return (0.5 * jnp.square((theta - self.mu0) / self.tau0)
            + 0.5 * math.log(2 * math.pi * self.tau0 ** 2))


def friel_pettitt_ladder(k):
  """b_j = (j / K)^5: rungs crowd near b = 0, where <log L>_b changes fastest."""
  return (np.arange(k + 1) / k) ** 5


def test_power_posterior_identity_with_exact_moments():
  """With exact <log L>_b the only error is the quadrature's: the trapezoid's within its
  reported error (and about that size), the corrected rule's far inside it; halving the
  spacing cuts them by about 4 and 16 (orders h^2 and h^4)."""
  model = Conjugate()
  exact = model.log_evidence()                                   # -27.8629
  errors = {}
  for k in (10, 20):
    b = friel_pettitt_ladder(k)
    mv = np.array([model.log_likelihood_moments(x) for x in b])
    r = log_evidence(jnp.asarray(b), jnp.asarray(mv[:, 0]), jnp.zeros(k + 1), jnp.asarray(mv[:, 1]))
    trap, corr = abs(float(r['trapezoid']) - exact), abs(float(r['estimate']) - exact)
    assert 0.8 * trap < float(r['quadrature_error']) < 1.5 * trap
    assert corr < 0.1 * float(r['quadrature_error'])
    errors[k] = trap, corr
  assert 3.0 < errors[10][0] / errors[20][0] < 5.0
  assert errors[10][1] / errors[20][1] > 8.0


@functools.partial(jax.jit, static_argnames=('value_and_grad_of', 'num_steps', 'num_transitions'))
def _rungs(value_and_grad_of, rung_params, x0, keys, step_size, temperature, num_steps,
           num_transitions):
  """One HMC chain a rung (vmapped), potential ``value_and_grad_of(rung_param)``.

  Returns each chain's trace of params (K, n, ...).
  """

  def chain(rung_param, x, key, eps, t):
    vg = value_and_grad_of(rung_param)

    def body(state, k):
      state, _ = hmc.hmc_step(vg, state, k, eps, t, num_steps, 0.2)
      return state, state.params

    return jax.lax.scan(body, hmc.init(vg, x), jax.random.split(key, num_transitions))[1]

  return jax.vmap(chain)(rung_params, x0, keys, step_size, temperature)


def _rung_stats(traces, burn_in):
  return jax.jit(jax.vmap(td.chain_mean))(traces[:, burn_in:])


def _check_gaussian_log_z(num_transitions, seed):
  """log Z(beta_K) - log Z(beta_0) of U = sum x_i^2 / (2 sigma_i^2) from HMC at six rungs
  T = 0.5 .. 8, against (d / 2) log(beta_0 / beta_K): within 4 reported standard errors
  plus the reported quadrature error (zero for exact means in log beta)."""
  sigma = jnp.array([0.5, 1.0, 2.0])
  temps = jnp.asarray(np.geomspace(0.5, 8.0, 6), jnp.float32)
  betas = 1 / temps
  potential = lambda x: 0.5 * jnp.sum(jnp.square(x / sigma))
  value_and_grad_of = lambda _: jax.value_and_grad(potential)
  x0 = jnp.sqrt(temps)[:, None] * sigma
  xs = _rungs(value_and_grad_of, temps, x0, jax.random.split(jax.random.key(seed), 6),
              jnp.full(6, 0.3), temps, 6, num_transitions)
  energies = jax.vmap(jax.vmap(potential))(xs)                   # (6, n)
  s = _rung_stats(energies, num_transitions // 10)
  exact = 1.5 * math.log(float(betas[0] / betas[-1]))
  results = {}
  for name, kwargs in (('trapezoid', {}),
                       ('corrected', {'variance': s['variance'],
                                      'variance_std_error': s['variance_std_error']})):
    r = log_z(betas, s['mean'], s['std_error'], variable='log_beta', **kwargs)
    est, se, qe = (float(r[k][-1]) for k in ('estimate', 'std_error', 'quadrature_error'))
    assert abs(est - exact) < 4 * se + qe, (name, est, exact, se, qe)
    results[name] = (est, exact, se, qe)
  return results


def test_log_z_of_a_gaussian_from_hmc_rungs():
  print(_check_gaussian_log_z(3000, seed=0))


@pytest.mark.slow
def test_log_z_of_a_gaussian_from_hmc_rungs_long():
  print(_check_gaussian_log_z(40_000, seed=1))


def _check_evidence_from_hmc(num_transitions, seed, k=20):
  """log p(D) of the conjugate model from HMC on its power posteriors (T = 1, potential
  b NLL - log p), against the closed form: within 4 reported standard errors plus the
  reported quadrature error."""
  model = Conjugate()
  b = jnp.asarray(friel_pettitt_ladder(k), jnp.float32)
  value_and_grad_of = lambda bk: jax.value_and_grad(
      lambda th: bk * model.negative_log_likelihood(th) + model.negative_log_prior(th))
  # Step sizes from each rung's posterior sd (known here; a run would adapt them).
  sd = np.sqrt([model.posterior(float(x))[1] for x in b])
  mean0 = np.array([model.posterior(float(x))[0] for x in b])
  thetas = _rungs(value_and_grad_of, b, jnp.asarray(mean0, jnp.float32),
                  jax.random.split(jax.random.key(seed), k + 1), jnp.asarray(0.4 * sd, jnp.float32),
                  jnp.ones(k + 1), 5, num_transitions)
  log_l = -jax.vmap(jax.vmap(model.negative_log_likelihood))(thetas)
  s = _rung_stats(log_l, num_transitions // 10)
  r = log_evidence(b, s['mean'], s['std_error'], s['variance'], s['variance_std_error'])
  exact = model.log_evidence()
  est, se, qe = (float(r[key]) for key in ('estimate', 'std_error', 'quadrature_error'))
  assert abs(est - exact) < 4 * se + qe, (est, exact, se, qe)
  return est, exact, se, qe, float(r['trapezoid'])


def test_evidence_of_a_conjugate_model_from_hmc_power_posteriors():
  print(_check_evidence_from_hmc(2000, seed=0))


@pytest.mark.slow
def test_evidence_of_a_conjugate_model_from_hmc_power_posteriors_long():
  print(_check_evidence_from_hmc(30_000, seed=1))


def test_imports_nothing_else_from_varjax():
  # analysis/ depends on nothing else in varjax (shared/ARCHITECTURE.md).
  tree = ast.parse(pathlib.Path(td.__file__).read_text())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert not [m for m in names if m.split('.')[0] == 'varjax'], names
