"""Flatness of each model's training loss: top Hessian eigenvalue and Hessian trace.

Lengyel, Hanjalic, Kotsia (2021), "On flat minima, large margins and
generalizability": under cross-entropy, flatness and classification margins
correlate once training error is non-trivial. The Hessian here:

- of the *mean* label-smoothed cross-entropy (the loss the step sums over a
  batch, divided by the number of images, so the figures do not scale with
  the probe set) over the first ``lenses.sharpness_images`` training images,
  against the labels the model trained on (corrupted ones under label noise),
  with the model's own label smoothing; no augmentation, no TTA;
- at the final (lookahead-averaged) weights, with respect to every trained
  parameter (all but the frozen whitening kernel; the whitening bias, trained
  in the first epochs, is included);
- with BatchNorm in eval mode (running statistics): the network the model is
  evaluated as, and a loss that is a sum over images, so the Hessian-vector
  product of the probe set is the exact sum of those of its batches, whatever
  the batch size. Train mode would couple a batch's images through its
  statistics and make the Hessian depend on how the probe set is batched.

Estimators, each deterministic from (seed, model id):
- top eigenvalue: power iteration on Hessian-vector products (forward over
  reverse: ``jax.jvp`` of ``jax.grad``) from a Gaussian start; the estimate is
  the Rayleigh quotient v'Hv of the last unit iterate, never above the top
  eigenvalue, and its convergence check the residual ||Hv - (v'Hv) v||: a
  symmetric matrix has an eigenvalue within that distance of the estimate
  (the top one once the iteration has converged; a small residual with a
  small estimate can also mean a lower eigenpair). Power iteration converges
  to the eigenvalue of largest magnitude, the top one unless the Hessian has
  a larger negative eigenvalue.
- trace: Hutchinson's estimator, the mean of z'Hz over Rademacher probes z;
  its error bar the standard error over probes (std / sqrt(probes)).

The algorithms act on pytrees stacked over models (leading axis N) through an
``hvp(v)`` callable, so the same code runs an ensemble's programs and a test's
closed-form Hessians.

Example:
  >>> hvp = lambda v: {'w': v['w'] * jnp.array([[3., 1.]])}   # H = diag(3, 1), N = 1
  >>> r = power_iteration(hvp, {'w': jnp.ones((1, 2))}, num_iterations=30)
  >>> round(float(r['top_eigenvalue'][0]), 4)
  3.0
"""

import jax
import jax.numpy as jnp
import numpy as np

from varjax import keys
from varjax.data import augment
from varjax.data import label_noise as label_noise_lib
from varjax.training import step as step_lib

FROZEN = ('whiten_kernel',)


def split_trainable(params):
  """(trainable, frozen) halves of a model's params dict."""
  return ({k: v for k, v in params.items() if k not in FROZEN},
          {k: v for k, v in params.items() if k in FROZEN})


def random_like(key, template, kind):
  """A pytree shaped like ``template`` of standard normals ('normal') or +-1 ('rademacher')."""
  leaves, treedef = jax.tree.flatten(template)
  sizes = [int(np.prod(x.shape)) for x in leaves]
  draw = {'normal': jax.random.normal, 'rademacher': jax.random.rademacher}[kind]
  # One draw for the whole tree, cut into leaves: one generator to compile, not one per leaf.
  flat = draw(key, (sum(sizes),), jnp.float32)
  cuts = np.cumsum([0] + sizes)
  return jax.tree.unflatten(treedef, [flat[a:b].reshape(x.shape)
                                      for a, b, x in zip(cuts[:-1], cuts[1:], leaves)])


@jax.jit
def model_dot(a, b):
  """Per-model inner product of two stacked pytrees: (N,)."""
  return sum(jnp.sum((x * y).reshape(x.shape[0], -1), axis=1)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@jax.jit
def _scaled(v, scale):
  return jax.tree.map(lambda x: x * scale.reshape((-1,) + (1,) * (x.ndim - 1)), v)


def normalized(v):
  """Each model's slice of ``v`` scaled to unit norm (a zero slice stays zero)."""
  norm = jnp.sqrt(model_dot(v, v))
  return _scaled(v, jnp.where(norm > 0, 1 / jnp.where(norm > 0, norm, 1), 0))


def power_iteration(hvp, start, num_iterations):
  """Top eigenvalue of each model's Hessian by power iteration.

  Args:
    hvp: v -> Hv on stacked pytrees.
    start: stacked pytree, the first iterate (normalised here).
    num_iterations: Hessian-vector products.

  Returns:
    ``top_eigenvalue`` (N,): the Rayleigh quotient of the last iterate;
    ``residual`` (N,): ||Hv - (v'Hv) v|| for it; ``history`` (N, iterations).
  """
  v = normalized(start)
  history = []
  for _ in range(num_iterations):
    hv = hvp(v)
    rayleigh = model_dot(v, hv)
    history.append(rayleigh)
    gap = jax.tree.map(jnp.subtract, hv, _scaled(v, rayleigh))
    residual = jnp.sqrt(model_dot(gap, gap))
    v = normalized(hv)
  return {'top_eigenvalue': history[-1], 'residual': residual,
          'history': jnp.stack(history, axis=1)}


def hutchinson_trace(hvp, probe, num_probes):
  """Each model's Hessian trace by Hutchinson's estimator.

  ``probe(p)`` -> the p-th stacked Rademacher vector. Returns ``trace`` (N,),
  ``trace_stderr`` (N,) (std over probes / sqrt(probes); NaN for one probe)
  and ``estimates`` (N, probes).
  """
  estimates = []
  for p in range(num_probes):
    z = probe(p)
    estimates.append(model_dot(z, hvp(z)))
  estimates = jnp.stack(estimates, axis=1)
  stderr = (jnp.std(estimates, axis=1, ddof=1) / np.sqrt(num_probes) if num_probes > 1
            else jnp.full(estimates.shape[:1], jnp.nan))
  return {'trace': estimates.mean(1), 'trace_stderr': stderr, 'estimates': estimates}


def loss_hvp(loss):
  """(params, v) -> H v of a scalar ``loss(params)``: forward over reverse mode."""
  return lambda params, v: jax.jvp(jax.grad(loss), (params,), (v,))[1]


def make_hvp_one(model, recipe, seed, num_images):
  """Returns hvp_one(per_model, images_u8, labels, example_ids) -> a model's H v on a batch.

  ``per_model`` = (state, hparams, model_id, v); ``labels`` are the whole
  training set's true labels (the model's own are derived from them, as the
  step does) and ``example_ids`` the batch's positions in it. The result is
  the batch's share of the Hessian of the mean loss over ``num_images``
  images: summed over the probe set's batches it is that Hessian times v.
  """

  # Forward over reverse mode: the pools differentiate by JAX's own rules (the
  # 'windows' form has a reverse-mode-only gradient); the same maths.
  model = model.clone(max_pool='reshape')

  def hvp_one(per_model, images_u8, labels, example_ids):
    state, hparams, model_id, vector = per_model
    variables = step_lib.final_variables(state, recipe)
    if recipe.label_noise:
      labels = label_noise_lib.corrupt(keys.label_noise_key(seed, model_id), labels,
                                       hparams['label_noise'], model.num_classes)
    y = labels[example_ids]
    x = augment.normalize(images_u8, model.dtype)
    trainable, frozen = split_trainable(variables['params'])

    def loss(params):
      logits = model.apply({'params': {**frozen, **params},
                            'batch_stats': variables['batch_stats']}, x, train=False)
      return step_lib.smoothed_cross_entropy_sum(logits, y, hparams['label_smoothing']) / num_images

    return loss_hvp(loss)(trainable, vector)

  return hvp_one
