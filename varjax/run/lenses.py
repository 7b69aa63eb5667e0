"""The lenses measured after training, as measurements (run/measurements.py's interface).

Each runs a per-model program of measures/ through the ensemble's per-model
machinery (chunked over models; a host loop over chunks on CPU), every model
on its own final weights and its own (possibly corrupted) training labels,
then puts its values beside their statistics across each group's models
(analysis/lenses.py: mean, std, Pearson r with test accuracy and margins).

Config (``config.lenses``; each costs only when on):
  train_eval_size  ``TrainFit``: accuracy on the first training images, against the
                   labels the model trained on and the true ones (0: off)
  sharpness        ``Sharpness``: top Hessian eigenvalue and trace (measures/sharpness.py)
  alignment        ``Alignment``: misalignment of group1's first conv (measures/alignment.py)

Example:
  >>> measured = Sharpness(context).after_training(state, evaluation)   # doctest: +SKIP
  >>> measured.per_model['sharpness_top_eigenvalue']   # (N,)            # doctest: +SKIP
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from varjax import analysis
from varjax import keys
from varjax.analysis import alignment as alignment_stats
from varjax.ensemble import mesh as mesh_lib
from varjax.measures import alignment as alignment_lib
from varjax.measures import sharpness as sharpness_lib
from varjax.measures import train_fit
from varjax.run import measurements
from varjax.training import step as step_lib

SHARPNESS_LOSS = ('mean label-smoothed cross-entropy over the probe images, against the labels '
                  'the model trained on, BatchNorm in eval mode, at the final weights, '
                  'w.r.t. every trained parameter (the whitening kernel excluded)')


def batches(num_images, batch_size):
  """(start, size) of consecutive batches covering [0, num_images)."""
  return [(s, min(batch_size, num_images - s)) for s in range(0, num_images, batch_size)]


class Lens(measurements.Measurement):
  """A lens: ``measure(state)`` -> (per-model values, settings, inputs of group statistics);
  ``correlated``: the values whose Pearson r with accuracy and margins each group reports."""
  correlated = ()

  def measure(self, state):
    raise NotImplementedError

  def group_stats(self, arrays, member):
    """Group statistics beyond mean, std and correlations (the alignment's pooled filters)."""
    del arrays, member
    return {}, {}, {}

  def after_training(self, state, evaluation):
    start = time.perf_counter()
    values, settings, arrays = self.measure(state)
    more_values, per_group, more_settings = self.group_stats(arrays, evaluation.member)
    values = {**values, **more_values}
    r = evaluation.results
    per_group.update(analysis.lens_stats(values, r['accuracy'], r['margin_quantiles'],
                                         evaluation.member, self.correlated))
    settings = {**settings, **more_settings, 'seconds': time.perf_counter() - start}
    logging.info('lens %s: %.1fs', self.name, settings['seconds'])
    return measurements.Measured(values, per_group, {}, {'lenses': {self.name: settings}})


class TrainFit(Lens):
  """Accuracy on the first training images against the trained-on and the true labels."""
  name = 'train_eval'
  correlated = ('train_fit_accuracy',)

  def measure(self, state):
    ctx = self.context
    ens, images, labels = ctx.ens, ctx.train_images, ctx.train_labels
    size = min(ctx.config.lenses.train_eval_size, images.shape[0])
    run = ens.per_model('lens_train_eval',
                        train_fit.make_counts_one(ens.model, ens.recipe, ens.seed), 3, 3)
    totals = None
    for start, n in batches(size, ctx.config.eval.batch_size):
      ids = jnp.arange(start, start + n, dtype=jnp.int32)
      counts = run(state, ens.hparams, ens.ids, images[start:start + n], labels, ids)
      totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    t = jax.tree.map(lambda x: np.asarray(x, np.float64), ctx.to_host(totals))
    ratio = lambda a, b: np.where(b > 0, a / np.maximum(b, 1), np.nan)
    values = {'train_fit_accuracy': t['fit'] / size, 'train_true_accuracy': t['true'] / size,
              'corrupted_fraction': t['changed'] / size,
              'corrupted_fit_accuracy': ratio(t['changed_fit'], t['changed']),
              'corrupted_true_accuracy': ratio(t['changed_true'], t['changed'])}
    return values, {'images': size}, {}


def random_vectors(ens, state, kind):
  """Returns draw(index) -> a stacked random pytree shaped like the trainable params."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], jnp.float32),
                        sharpness_lib.split_trainable(state['params'])[0])
  seed = ens.seed
  one = lambda model_id, index: sharpness_lib.random_like(
      keys.sharpness_key(seed, model_id, index), shapes, kind)
  draw = jax.jit(jax.vmap(one, in_axes=(0, None)),
                 out_shardings=mesh_lib.model_sharding(ens.mesh))
  return lambda index: draw(ens.ids, jnp.int32(index))


class Sharpness(Lens):
  """Top Hessian eigenvalue (power iteration) and trace (Hutchinson) of the training loss."""
  name = 'sharpness'
  correlated = ('sharpness_top_eigenvalue', 'sharpness_trace')

  def measure(self, state):
    ctx = self.context
    ens, images, labels, lens = ctx.ens, ctx.train_images, ctx.train_labels, ctx.config.lenses
    size = min(lens.sharpness_images, images.shape[0])
    run = ens.per_model('lens_hvp',
                        sharpness_lib.make_hvp_one(ens.model, ens.recipe, ens.seed, size), 4, 3)
    parts = batches(size, lens.batch_size)

    def hvp(v):
      total = None
      for start, n in parts:
        ids = jnp.arange(start, start + n, dtype=jnp.int32)
        part = run(state, ens.hparams, ens.ids, v, images[start:start + n], labels, ids)
        total = part if total is None else jax.tree.map(jnp.add, total, part)
      return total

    power = sharpness_lib.power_iteration(hvp, random_vectors(ens, state, 'normal')(0),
                                          lens.power_iterations)
    rademacher = random_vectors(ens, state, 'rademacher')
    trace = sharpness_lib.hutchinson_trace(hvp, lambda p: rademacher(1 + p),
                                           lens.hutchinson_probes)
    found = ctx.to_host({'top': power['top_eigenvalue'], 'residual': power['residual'],
                         'estimates': trace['estimates']})
    # Mean and standard error per model on the host: no reduction whose order depends on N.
    estimates = np.asarray(found['estimates'], np.float64)
    values = {'sharpness_top_eigenvalue': found['top'],
              'sharpness_power_residual': found['residual'],
              'sharpness_trace': estimates.mean(1),
              'sharpness_trace_stderr': estimates.std(1, ddof=1) / np.sqrt(estimates.shape[1])}
    settings = {'images': size, 'power_iterations': lens.power_iterations,
                'hutchinson_probes': lens.hutchinson_probes, 'loss': SHARPNESS_LOSS}
    return values, settings, {}


class Alignment(Lens):
  """Maennel et al.'s misalignment of the first trained conv's filters with its input patches."""
  name = 'alignment'
  correlated = ('misalignment', 'update_misalignment')

  def measure(self, state):
    ctx = self.context
    ens, images, lens = ctx.ens, ctx.train_images, ctx.config.lenses
    size = min(lens.alignment_images, images.shape[0])
    final = lambda s: step_lib.final_variables(s, ens.recipe)
    run = ens.per_model('lens_alignment', alignment_lib.make_moments_one(ens.model, final), 1, 1)
    moments = None
    for start, n in batches(size, lens.batch_size):
      part = run(state, images[start:start + n])
      moments = part if moments is None else jax.tree.map(jnp.add, moments, part)
    moments = ctx.to_host(moments)
    count = float(moments['count'][0])
    cov_x = np.stack([alignment_stats.covariance_from_moments(s, o, count)
                      for s, o in zip(moments['sum'], moments['outer'])])
    kernels = ctx.to_host(alignment_lib.first_conv_kernel(final(state)['params']))
    # Each model's initial weights, recomputed from its init key (as at the start).
    initial = ens.init(ctx.to_host(state['params']['whiten_kernel'])[0])
    initial = ctx.to_host(alignment_lib.first_conv_kernel(initial['params']))
    settings = {'images': size, 'patches': int(count),
                'layer': '/'.join(alignment_lib.FIRST_CONV)}
    return {}, settings, {'cov_x': cov_x, 'kernels': kernels, 'initial_kernels': initial}

  def group_stats(self, arrays, member):
    config = self.context.config
    per_model, per_group, info = alignment_stats.alignment_stats(
        arrays['cov_x'], arrays['kernels'], arrays['initial_kernels'], member,
        config.lenses.alignment_components, config.analysis.seed)
    return per_model, {f'group_{name}': v for name, v in per_group.items()}, info
