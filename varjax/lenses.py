"""Per-model lenses measured after training: sharpness, alignment, train-set accuracy.

Runs the per-model programs of sharpness.py and alignment.py, and a
train-set evaluation, through the ensemble's per-model machinery (chunked over
models; a host loop over chunks on CPU), each model on its own final weights
and its own (possibly corrupted) training labels. Returns host arrays per
model; the statistics across a group's models are in varjax/analysis/lenses.py.

Config (``config.lenses``; each costs only when on):
  sharpness            top Hessian eigenvalue and trace (sharpness.py)
  alignment            misalignment of group1's first conv (alignment.py)
  train_eval_size      accuracy on the first training images, against the
                       labels the model trained on and the true ones (0: off)

Example:
  >>> measured = measure(ens, state, train_images, train_labels, to_host)         # doctest: +SKIP
  >>> values, groups, settings = summarize(measured, member, acc, quantiles, config)  # doctest: +SKIP
  >>> values['sharpness_top_eigenvalue']   # (N,)                                   # doctest: +SKIP
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from varjax.measures import alignment as alignment_lib
from varjax.data import label_noise as label_noise_lib
from varjax.ensemble import mesh as mesh_lib
from varjax.measures import sharpness as sharpness_lib
from varjax import analysis
from varjax.training import step as step_lib
from varjax.analysis import alignment as analysis_alignment

# Per-model results, in the order the summary lists them.
PER_MODEL_KEYS = ('train_fit_accuracy', 'train_true_accuracy', 'corrupted_fraction',
                  'corrupted_fit_accuracy', 'corrupted_true_accuracy',
                  'sharpness_top_eigenvalue', 'sharpness_power_residual', 'sharpness_trace',
                  'sharpness_trace_stderr', 'misalignment', 'misalignment_random_basis',
                  'update_misalignment', 'update_misalignment_random_basis')
# The lenses whose Pearson r with test accuracy and margins each group reports.
CORRELATED = ('sharpness_top_eigenvalue', 'sharpness_trace', 'misalignment',
              'update_misalignment', 'train_fit_accuracy')
SHARPNESS_LOSS = ('mean label-smoothed cross-entropy over the probe images, against the labels '
                  'the model trained on, BatchNorm in eval mode, at the final weights, '
                  'w.r.t. every trained parameter (the whitening kernel excluded)')


def enabled(config):
  c = config.lenses
  return bool(c.sharpness or c.alignment or c.train_eval_size > 0)


def batches(num_images, batch_size):
  """(start, size) of consecutive batches covering [0, num_images)."""
  return [(s, min(batch_size, num_images - s)) for s in range(0, num_images, batch_size)]


def make_train_eval_one(model, recipe, seed):
  """Returns one(per_model=(state, hparams, model_id), images, labels, ids) -> int32 counts.

  Counts on a batch of training images: predictions equal to the label the
  model trained on (``fit``) and to the true one (``true``); labels the
  corruption changed (``changed``) and, among those, fit and true.
  """
  forward = step_lib.make_eval_logits(model, recipe.tta_level)

  def one(per_model, images_u8, labels, example_ids):
    state, hparams, model_id = per_model
    trained_on = labels
    if recipe.label_noise:
      trained_on = label_noise_lib.corrupt(label_noise_lib.noise_key(seed, model_id), labels,
                                           hparams['label_noise'], model.num_classes)
    pred = forward(step_lib.final_variables(state, recipe), images_u8).argmax(-1)
    y_true, y_train = labels[example_ids], trained_on[example_ids]
    changed = y_true != y_train
    count = lambda mask: jnp.sum(mask.astype(jnp.int32))
    return {'fit': count(pred == y_train), 'true': count(pred == y_true),
            'changed': count(changed), 'changed_fit': count(changed & (pred == y_train)),
            'changed_true': count(changed & (pred == y_true))}

  return one


def train_eval(ens, state, images, labels, size, to_host):
  """Per-model train-set accuracies on the first ``size`` training images (host arrays)."""
  run = ens.per_model('lens_train_eval', make_train_eval_one(ens.model, ens.recipe, ens.seed), 3, 3)
  totals = None
  for start, n in batches(size, ens.config.eval.batch_size):
    ids = jnp.arange(start, start + n, dtype=jnp.int32)
    counts = run(state, ens.hparams, ens.ids, images[start:start + n], labels, ids)
    totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
  t = jax.tree.map(lambda x: np.asarray(x, np.float64), to_host(totals))
  ratio = lambda a, b: np.where(b > 0, a / np.maximum(b, 1), np.nan)
  return {'train_fit_accuracy': t['fit'] / size, 'train_true_accuracy': t['true'] / size,
          'corrupted_fraction': t['changed'] / size,
          'corrupted_fit_accuracy': ratio(t['changed_fit'], t['changed']),
          'corrupted_true_accuracy': ratio(t['changed_true'], t['changed'])}


def random_vectors(ens, state, kind):
  """Returns draw(index) -> a stacked random pytree shaped like the trainable params."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], jnp.float32),
                        sharpness_lib.split_trainable(state['params'])[0])
  seed = ens.seed
  one = lambda model_id, index: sharpness_lib.random_like(
      sharpness_lib.vector_key(seed, model_id, index), shapes, kind)
  draw = jax.jit(jax.vmap(one, in_axes=(0, None)),
                 out_shardings=mesh_lib.model_sharding(ens.mesh))
  return lambda index: draw(ens.ids, jnp.int32(index))


def sharpness(ens, state, images, labels, lens_config, to_host):
  """(images used, per-model top eigenvalue, residual, trace and its standard error)."""
  size = min(lens_config.sharpness_images, images.shape[0])
  run = ens.per_model('lens_hvp', sharpness_lib.make_hvp_one(ens.model, ens.recipe, ens.seed, size),
                      4, 3)
  parts = batches(size, lens_config.batch_size)

  def hvp(v):
    total = None
    for start, n in parts:
      ids = jnp.arange(start, start + n, dtype=jnp.int32)
      part = run(state, ens.hparams, ens.ids, v, images[start:start + n], labels, ids)
      total = part if total is None else jax.tree.map(jnp.add, total, part)
    return total

  power = sharpness_lib.power_iteration(hvp, random_vectors(ens, state, 'normal')(0),
                                        lens_config.power_iterations)
  rademacher = random_vectors(ens, state, 'rademacher')
  trace = sharpness_lib.hutchinson_trace(hvp, lambda p: rademacher(1 + p),
                                         lens_config.hutchinson_probes)
  values = to_host({'top': power['top_eigenvalue'], 'residual': power['residual'],
                    'estimates': trace['estimates']})
  # Mean and standard error per model on the host: no reduction whose order depends on N.
  estimates = np.asarray(values['estimates'], np.float64)
  return size, {'sharpness_top_eigenvalue': values['top'],
                'sharpness_power_residual': values['residual'],
                'sharpness_trace': estimates.mean(1),
                'sharpness_trace_stderr': estimates.std(1, ddof=1) / np.sqrt(estimates.shape[1])}


def alignment(ens, state, images, lens_config, to_host):
  """Each model's patch covariance (N, d, d) and first-conv kernels, trained and initial."""
  size = min(lens_config.alignment_images, images.shape[0])
  final = lambda s: step_lib.final_variables(s, ens.recipe)
  run = ens.per_model('lens_alignment', alignment_lib.make_moments_one(ens.model, final), 1, 1)
  moments = None
  for start, n in batches(size, lens_config.batch_size):
    part = run(state, images[start:start + n])
    moments = part if moments is None else jax.tree.map(jnp.add, moments, part)
  moments = to_host(moments)
  count = float(moments['count'][0])
  cov_x = np.stack([analysis_alignment.covariance_from_moments(s, o, count)
                    for s, o in zip(moments['sum'], moments['outer'])])
  kernels = to_host(alignment_lib.first_conv_kernel(final(state)['params']))
  # Each model's initial weights, recomputed from its init key (as at the start).
  initial = ens.init(to_host(state['params']['whiten_kernel'])[0])
  initial = to_host(alignment_lib.first_conv_kernel(initial['params']))
  return {'images': size, 'patches': int(count)}, {'cov_x': cov_x, 'kernels': kernels,
                                                   'initial_kernels': initial}


def measure(ens, state, train_images, train_labels, to_host):
  """Every lens the config asks for, as (values, settings, arrays).

  ``values``: {name: (N,) host array} per model; ``settings``: what was
  measured and its seconds, for the summary; ``arrays``: inputs of group
  statistics (the alignment lens's patch covariances and kernels).
  """
  c = ens.config.lenses
  values, settings, arrays = {}, {}, {}
  if c.train_eval_size > 0:
    start = time.perf_counter()
    size = min(c.train_eval_size, train_images.shape[0])
    values.update(train_eval(ens, state, train_images, train_labels, size, to_host))
    settings['train_eval'] = {'images': size, 'seconds': time.perf_counter() - start}
  if c.sharpness:
    start = time.perf_counter()
    size, found = sharpness(ens, state, train_images, train_labels, c, to_host)
    values.update(found)
    settings['sharpness'] = {'images': size, 'power_iterations': c.power_iterations,
                             'hutchinson_probes': c.hutchinson_probes, 'loss': SHARPNESS_LOSS,
                             'seconds': time.perf_counter() - start}
  if c.alignment:
    start = time.perf_counter()
    info, arrays['alignment'] = alignment(ens, state, train_images, c, to_host)
    settings['alignment'] = {**info, 'layer': '/'.join(alignment_lib.FIRST_CONV),
                             'seconds': time.perf_counter() - start}
  for name, s in settings.items():
    logging.info('lens %s: %.1fs', name, s['seconds'])
  return values, settings, arrays


def summarize(measured, member, accuracy, margin_quantiles, config):
  """Per-model and per-group lens results for the summary, from ``measure``'s output.

  ``member``: (N, G) group membership (diverged models in no group);
  ``accuracy`` (N,) and ``margin_quantiles`` (N, Q): the test set's.
  Returns (per_model {name: (N,)}, per_group {name: (G,) or (G, Q)}, settings).
  """
  values, settings, arrays = measured
  values, settings, groups = dict(values), dict(settings), {}
  if 'alignment' in arrays:
    a = arrays['alignment']
    per_model, per_group, info = analysis_alignment.alignment_stats(
        a['cov_x'], a['kernels'], a['initial_kernels'], member,
        config.lenses.alignment_components, config.analysis.seed)
    values.update(per_model)
    groups.update({f'group_{name}': v for name, v in per_group.items()})
    settings['alignment'] = {**settings['alignment'], **info}
  groups.update(analysis.lens_stats(values, accuracy, margin_quantiles, member, CORRELATED))
  return values, groups, settings
