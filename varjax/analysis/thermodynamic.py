"""Thermodynamic integration over a temperature ladder, and a chain's effective sample size.

Sampling mode (issue 31) runs replicas of exp(-U / T) on a ladder of temperatures,
U = -log L(theta) - log p(theta) (the full-batch negative log-likelihood plus the
prior's negative log density). Free-energy differences and the evidence that model
selection compares come from the per-rung means of an energy; this module turns
those means, and the chains behind them, into estimates with error bars.

Two identities, each exact under its premise:

1. The tempered ladder (what varjax's exp(-U / T) replicas sample). With
   Z(beta) = integral of exp(-beta U(theta)) dtheta over R^d (Lebesgue measure),
   finite for the betas used, and <.>_beta the average under exp(-beta U) / Z(beta),
   d log Z / d beta = -<U>_beta, so

     log Z(beta_1) - log Z(beta_0) = -integral_{beta_0}^{beta_1} <U>_beta dbeta.

   Also d<U>_beta / d beta = -Var_beta(U), which the corrected rule below uses.
   At beta = 1, Z(1) = integral L p dtheta = p(D), the evidence, but no rung of
   this ladder has a known Z: Z(0) is the volume of R^d (infinite), and a
   Gaussian prior tempered by beta is N(0, s^2 / beta), a different prior at every
   rung. So this ladder gives differences of log Z between rungs (free energies),
   and the evidence only with an anchor from elsewhere (e.g. a harmonic estimate
   of log Z at the coldest rung if the posterior is one well-resolved mode).

2. The power posterior (what model selection needs). With a normalised prior p,
   a likelihood L and p_b(theta) = L(theta)^b p(theta) / z(b), z(0) = 1 (the prior
   integrates to one) and z(1) = p(D), so

     log p(D) = integral_0^1 <log L>_b db.

   Premise: p is proper and normalised, and the rung at b = 0 is sampled from the
   prior. Its replicas sample exp(-(b (-log L) + (-log p))): the prior is not
   tempered. The same HMC transition (varjax.training.hmc at T = 1 with potential
   b * NLL - log p) and the same exchange (varjax.ensemble.replica_exchange with
   energies -log L and inverse temperatures b: the prior terms cancel in the swap
   ratio) sample it; only the potential differs. ``log_evidence`` computes it.

   The ladders coincide when the prior is flat on a bounded region B (uniform,
   p = 1 / |B|): exp(-beta U) restricted to B is then the power posterior at b = beta,
   and Z(0) = |B| anchors identity 1. The finite-temperature study behind issue 31
   (Baldock & Marzari 2019, arXiv:1904.04154; code github.com/rjnbaldock/nn_sample)
   sampled such a box prior; with a Gaussian prior, use the power-posterior ladder.

Quadrature. On rungs t_0 < ... < t_K with h_j = t_{j+1} - t_j the trapezoid rule
errs by -h_j^3 f''(xi_j) / 12 per interval. Since the integrand's derivative is a
variance (above), the per-rung variances give the Euler-Maclaurin endpoint
correction, -h_j^2 (f'(t_{j+1}) - f'(t_j)) / 12 per interval (the integral of the
cubic Hermite interpolant): error O(h^5 f'''') per interval instead of O(h^3 f'').
The reported ``quadrature_error`` is the size of that correction (the trapezoid's
estimated error; a conservative figure for the corrected rule), or, without
variances, -h^3 f'' / 12 from divided differences of the means.

On a geometric ladder (log-spaced T, as varjax's) integrate in t = log beta:
integral <U> dbeta = integral beta <U>_beta dlog beta, whose integrand is flat
(d / 2 for a Gaussian in d dimensions, exactly) where <U> ~ 1 / beta varies fastest.

Error propagation: the estimate is a fixed linear combination of the rung means m_k
(and, corrected, variances v_k), so its standard error is
sqrt(sum_k a_k^2 se(m_k)^2 + b_k^2 se(v_k)^2) when the rungs' errors are independent.
Rungs coupled by replica exchange are correlated; the figure is then an
approximation (repeat the whole ladder's estimate over independent ladders, which
the models axis has room for, for an exact one). Each rung's standard errors come
from its chain's effective sample size (``chain_mean``).

Effective sample size: Geyer's (1992) initial monotone sequence estimator of the
integrated autocorrelation time tau = 1 + 2 sum_{t>0} rho_t, from the sums of
adjacent autocorrelations Gamma_k = rho_{2k} + rho_{2k+1}, which are positive and
decreasing for a reversible chain: truncated at the first non-positive Gamma_k
and made monotone. ESS = n / tau, with tau floored at 1 / log10(n) (as Stan) so an
antithetic chain's ESS stays finite.

Example:
  >>> betas = jnp.array([0.5, 1.0, 2.0])
  >>> r = log_partition_difference(betas, 1.5 / betas, jnp.zeros(3), variable='log_beta')
  >>> round(float(r['estimate'][-1]), 4), round(-1.5 * math.log(4), 4)   # Gaussian, d = 3
  (-2.0794, -2.0794)
"""

import math

import jax
import jax.numpy as jnp

VARIABLES = ('beta', 'log_beta')


def autocorrelation(x):
  """Normalised autocorrelation rho_t, t = 0..n-1, of a 1-D trace (biased, divided by n).

  The biased autocovariance (divide by n at every lag) is the one Geyer's
  sequences are positive-definite for. Computed by FFT, padded to avoid wrap-around.

  Args:
    x: (n,) float trace.

  Returns:
    (n,) float: rho_0 = 1; NaN throughout when x is constant.
  """
  n = x.shape[0]
  size = 1 << (2 * n - 1).bit_length()
  centred = x - jnp.mean(x)
  f = jnp.fft.rfft(centred, size)
  autocov = jnp.fft.irfft(f * jnp.conj(f), size)[:n] / n
  return autocov / autocov[0]


def integrated_autocorrelation_time(x):
  """tau = 1 + 2 sum_{t>0} rho_t by Geyer's initial monotone sequence, floored at 1 / log10(n).

  Args:
    x: (n,) float trace, n >= 4.

  Returns:
    Scalar tau; 1 for a constant trace.
  """
  n = x.shape[0]
  rho = autocorrelation(x)
  pairs = rho[:2 * (n // 2)].reshape(-1, 2).sum(-1)            # Gamma_k, k = 0..n/2-1
  initial = jnp.cumprod(pairs > 0)                             # up to the first Gamma_k <= 0
  monotone = jax.lax.cummin(pairs)
  tau = -1.0 + 2.0 * jnp.sum(jnp.where(initial > 0, monotone, 0.0))
  tau = jnp.maximum(tau, 1.0 / math.log10(max(n, 10)))
  return jnp.where(jnp.isnan(rho[0]), 1.0, tau)


def effective_sample_size(x):
  """n / tau for a 1-D trace (``integrated_autocorrelation_time``)."""
  return x.shape[0] / integrated_autocorrelation_time(x)


def chain_mean(x):
  """Mean and variance of a chain's trace with their MCMC standard errors.

  Args:
    x: (n,) float trace (after burn-in).

  Returns:
    dict of scalars: mean; variance (ddof 0); ess (of x); std_error = sqrt(variance /
    ess); variance_std_error, the same for the mean of (x - mean)^2 with its own ESS.
  """
  mean = jnp.mean(x)
  ess = effective_sample_size(x)
  variance = jnp.var(x)
  squares = jnp.square(x - mean)
  return {'mean': mean, 'variance': variance, 'ess': ess,
          'std_error': jnp.sqrt(variance / ess),
          'variance_std_error': jnp.sqrt(jnp.var(squares) / effective_sample_size(squares))}


def quadrature_weights(t):
  """Cumulative trapezoid weights and their endpoint correction on rungs t.

  Args:
    t: (K,) monotone rung positions, K >= 2 (a decreasing grid gives signed, negative
      steps and so signed integrals).

  Returns:
    (W, C), each (K, K): integral_{t_0}^{t_k} f ~ (W f)_k (trapezoid) and
    ~ (W f + C f')_k (corrected), f and f' the integrand and its derivative at the rungs.
  """
  k = t.shape[0]
  if k < 2:
    raise ValueError(f'{k} rungs: integration needs at least two.')
  h = jnp.diff(t)                                              # (K-1,)
  upto = jnp.arange(1, k)[None, :] <= jnp.arange(k)[:, None]   # (K, K-1): interval j in row k
  pad = jnp.zeros((k, 1), t.dtype)
  # Interval j adds h_j / 2 to rungs j and j+1, and h_j^2 / 12 (f'_j - f'_{j+1}).
  half = jnp.where(upto, 0.5 * h[None, :], 0.0)
  w = jnp.concatenate([half, pad], 1) + jnp.concatenate([pad, half], 1)
  twelfth = jnp.where(upto, jnp.square(h)[None, :] / 12.0, 0.0)
  c = jnp.concatenate([twelfth, pad], 1) - jnp.concatenate([pad, twelfth], 1)
  return w, c


def _second_derivative(t, f):
  """f'' at every rung from divided differences (the nearest interior value at the ends)."""
  h = jnp.diff(t)
  slope = jnp.diff(f) / h
  interior = 2.0 * jnp.diff(slope) / (h[:-1] + h[1:])            # (K-2,)
  return jnp.concatenate([interior[:1], interior, interior[-1:]])


def _integrate(t, m, se_m, a, c, v, se_v, b):
  """Cumulative integral of f = a m, with f' = c m + b v, over rungs t.

  m and v are the rungs' sample means and variances of the energy, each with its
  standard error; a, b, c the change of variable's known per-rung factors (c None
  for 0). The estimate is linear in (m, v), so its standard error is exact for
  independent rungs (the covariance of a rung's m and v is left out: zero for a
  symmetric energy distribution, small beside the trapezoid's term in general).
  """
  w, corr = quadrature_weights(t)
  f = a * m
  trapezoid = w @ f
  h = jnp.diff(t)
  if v is None:
    std = jnp.sqrt(jnp.square(w * a[None, :]) @ jnp.square(se_m))
    if t.shape[0] >= 3:
      f2 = _second_derivative(t, f)
      per_interval = -h ** 3 * 0.5 * (f2[:-1] + f2[1:]) / 12.0
    else:
      per_interval = jnp.full_like(h, jnp.nan)
    estimate = trapezoid
  else:
    coef_m = w * a[None, :] + (0.0 if c is None else corr * c[None, :])
    coef_v = corr * b[None, :]
    var_v = 0.0 if se_v is None else jnp.square(coef_v) @ jnp.square(se_v)
    std = jnp.sqrt(jnp.square(coef_m) @ jnp.square(se_m) + var_v)
    derivative = b * v + (0.0 if c is None else c * m)
    per_interval = -jnp.square(h) * jnp.diff(derivative) / 12.0
    estimate = coef_m @ m + coef_v @ v
  zero = jnp.zeros((1,), f.dtype)
  error = jnp.concatenate([zero, jnp.cumsum(jnp.abs(per_interval))])
  return {'estimate': estimate, 'trapezoid': trapezoid, 'std_error': std,
          'quadrature_error': error}


def log_partition_difference(betas, mean_energy, std_error, variance=None,
                             variance_std_error=None, variable='beta'):
  """log Z(beta_k) - log Z(beta_0) = -integral_{beta_0}^{beta_k} <U>_beta dbeta, every k.

  Identity 1 of the module docstring; premise: Z finite on the span of the betas and
  each rung's moments taken under exp(-beta_k U) at equilibrium.

  Args:
    betas: (K,) inverse temperatures 1 / T, monotone, > 0 for 'log_beta'.
    mean_energy: (K,) <U> at each rung.
    std_error: (K,) standard errors of those means (``chain_mean``).
    variance: optional (K,) Var(U) at each rung: enables the corrected rule.
    variance_std_error: optional (K,) standard errors of the variances, propagated
      into the corrected estimate's std_error.
    variable: 'beta' (integrate <U> over beta) or 'log_beta' (beta <U> over log beta,
      for geometric ladders).

  Returns:
    dict of (K,) arrays, entry k for log Z(beta_k) - log Z(beta_0) (entry -1 the whole
    span): estimate (the corrected rule when ``variance`` is given, else the
    trapezoid); trapezoid; std_error (sampling error of ``estimate``);
    quadrature_error (the trapezoid's estimated error, module docstring).
  """
  if variable not in VARIABLES:
    raise ValueError(f'variable={variable!r}: one of {VARIABLES}.')
  ones = jnp.ones_like(betas)
  if variable == 'beta':
    # f = <U>, f' = -Var(U).
    r = _integrate(betas, mean_energy, std_error, ones, None, variance, variance_std_error, -ones)
  else:
    # f = beta <U>, f' = d f / d log beta = beta <U> - beta^2 Var(U).
    r = _integrate(jnp.log(betas), mean_energy, std_error, betas, betas, variance,
                   variance_std_error, -jnp.square(betas))
  return {'estimate': -r['estimate'], 'trapezoid': -r['trapezoid'], 'std_error': r['std_error'],
          'quadrature_error': r['quadrature_error']}


def log_evidence(b, mean_log_likelihood, std_error, variance=None, variance_std_error=None):
  """log p(D) = integral_0^1 <log L>_b db over a power-posterior ladder (identity 2).

  Premise: a proper, normalised prior; rung b_k sampled from L^b_k p / z(b_k) at
  equilibrium, with b_0 = 0 (the prior) and b_K = 1. With other end points the
  result is log z(b_K) - log z(b_0).

  Args:
    b: (K,) powers of the likelihood, increasing from 0 to 1.
    mean_log_likelihood: (K,) <log L> at each rung.
    std_error: (K,) their standard errors.
    variance: optional (K,) Var(log L) at each rung (= d<log L>_b / db): the
      corrected rule.
    variance_std_error: optional (K,) standard errors of those variances.

  Returns:
    dict of scalars: estimate, trapezoid, std_error, quadrature_error (as
    ``log_partition_difference``'s).
  """
  ones = jnp.ones_like(b)
  r = _integrate(b, mean_log_likelihood, std_error, ones, None, variance, variance_std_error, ones)
  return {k: v[-1] for k, v in r.items()}
