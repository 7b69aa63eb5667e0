"""Cost of the analysis kernel, the difficulty probes and the lenses against the forward pass.

``analysis_costs`` (the command ``python -m varjax.bench.analysis``). For each N: seconds per test batch of ``analysis.update`` (jitted, on random
logits of shape (N, batch, 10)) and of the ensemble's evaluation forward pass
(``Ensemble.logits`` at the config's TTA level) on the same batch, their ratio,
``finalize``'s seconds for a 10,000-example state, and the state's bytes. One
JSON line per N.

With ``--difficulty`` (default on), one more line per N and example-difficulty
probe (config.difficulty): its evaluation seconds per test batch against the
plain evaluation (``over_plain``), its one-off cost (the depth support set's
embeddings), and for forgetting the probe pass per epoch against an epoch of
training steps (``over_train_epoch``). Prediction depth is timed twice: with
the config's ``depth_probes`` (default: the input, the whitening output and
every conv, 8 places) and with only the three conv groups' outputs
(``prediction_depth_groups``), so the extra probes' cost is their difference.

With ``--lenses``, one line per N and lens (config.lenses; varjax/run/lenses.py):
a call's seconds against the plain evaluation of as many images
(``over_plain``), and the lens's whole cost per run: ``sharpness``
(one Hessian-vector product call of ``lenses.batch_size`` images; the run
takes (power_iterations + hutchinson_probes) x ceil(sharpness_images /
batch_size) of them), ``alignment`` (patch moments of one batch) and
``train_eval`` (one batch of the train-set evaluation).
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from varjax import analysis
from varjax import ensemble as ensemble_lib
from varjax.measures import alignment as alignment_lib
from varjax.measures import sharpness as sharpness_lib
from varjax.measures import train_fit
from varjax.models import airbench
from varjax.run import evaluate
from varjax.run import lenses as lenses_lib
from varjax.training import step as step_lib

def timed(fn, repeats):
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def difficulty_costs(config, num_models, images, labels, kernel, repeats):
  """Yields one dict per difficulty probe: its cost against the plain evaluation."""
  rng = np.random.default_rng(1)
  num_train = max(config.difficulty.depth_support_size, config.difficulty.forgetting_probe_size)
  train_images = jnp.asarray(rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8))
  train_labels = jnp.asarray(rng.integers(0, 10, num_train).astype(np.int32))
  variants = {'plain': {}, 'normalized_margin': {'normalized_margin': True},
              'prediction_depth_groups': {'prediction_depth': True,
                                          'depth_probes': airbench.GROUP_PROBES},
              'prediction_depth': {'prediction_depth': True}, 'forgetting': {'forgetting': True}}
  plain_s = None
  for name, switches in variants.items():
    c = config.copy_and_resolve_references()
    c.num_models = num_models
    c.difficulty.normalized_margin = False
    for key, value in switches.items():
      c.difficulty[key] = value
    ens = ensemble_lib.Ensemble(c, num_train=num_train)
    state = ens.init(kernel)
    row = {'probe': name, 'num_models': num_models, 'batch': images.shape[0]}
    support, support_labels = (), None
    if name.startswith('prediction_depth'):
      size = c.difficulty.depth_support_size
      embed = lambda: evaluate.support_embeddings(ens, state, train_images[:size],
                                                   c.eval.batch_size)
      row['support_s'] = round(timed(embed, 1), 3)
      row.update(support_size=size, k=c.difficulty.depth_k,
                 probes=len(c.difficulty.depth_probes))
      support, support_labels = embed(), train_labels[:size]
    if name == 'forgetting':
      probes = (train_images[:ens.num_tracked], train_labels[:ens.num_tracked])
      row['probe_s_per_epoch'] = round(timed(lambda: ens.record_forgetting(state, *probes), 1), 3)
      orders = ens.orders(0)
      step_images = ens.step_images(train_images)
      step = lambda: ens.train_step(ens.init(kernel), orders, step_images, train_labels, 0)
      epoch_s = timed(step, 1) * ens.recipe.steps_per_epoch
      row.update(num_probes=ens.num_tracked, train_s_per_epoch=round(epoch_s, 2),
                 over_train_epoch=round(row['probe_s_per_epoch'] / epoch_s, 4))
    else:
      eval_s = timed(lambda: ens.eval_outputs(state, images, labels, support, support_labels),
                     repeats)
      plain_s = plain_s or eval_s
      row.update(eval_s_per_batch=round(eval_s, 4), over_plain=round(eval_s / plain_s, 3))
    yield row


def lens_costs(config, num_models, kernel, repeats):
  """Yields one dict per lens: a call's seconds against the plain evaluation, and per run."""
  c = config.copy_and_resolve_references()
  c.num_models = num_models
  lens = c.lenses
  rng = np.random.default_rng(2)
  b = lens.batch_size
  images = jnp.asarray(rng.integers(0, 256, (max(b, c.eval.batch_size), 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, images.shape[0]).astype(np.int32))
  ens = ensemble_lib.Ensemble(c, num_train=images.shape[0])
  state = ens.init(kernel)
  plain = lambda n: timed(lambda: ens.logits(state, images[:n]), repeats)
  ids = jnp.arange(b, dtype=jnp.int32)
  hvp = ens.per_model('lens_hvp', sharpness_lib.make_hvp_one(ens.model, ens.recipe, 0, b), 4, 3)
  vector = lenses_lib.random_vectors(ens, state, 'rademacher')(1)
  hvp_s = timed(lambda: hvp(state, ens.hparams, ens.ids, vector, images[:b], labels, ids),
                repeats)
  plain_s = plain(b)
  calls = (lens.power_iterations + lens.hutchinson_probes) * math.ceil(lens.sharpness_images / b)
  yield {'lens': 'sharpness', 'num_models': num_models, 'batch': b,
         's_per_call': round(hvp_s, 4), 'over_plain': round(hvp_s / plain_s, 2),
         'calls_per_run': calls, 's_per_run': round(calls * hvp_s, 1)}
  final = lambda s: step_lib.final_variables(s, ens.recipe)
  moments = ens.per_model('lens_alignment', alignment_lib.make_moments_one(ens.model, final),
                          1, 1)
  align_s = timed(lambda: moments(state, images[:b]), repeats)
  calls = math.ceil(lens.alignment_images / b)
  yield {'lens': 'alignment', 'num_models': num_models, 'batch': b,
         's_per_call': round(align_s, 4), 'over_plain': round(align_s / plain_s, 2),
         'calls_per_run': calls, 's_per_run': round(calls * align_s, 1)}
  e = c.eval.batch_size
  counts = ens.per_model('lens_train_eval',
                         train_fit.make_counts_one(ens.model, ens.recipe, 0), 3, 3)
  eval_ids = jnp.arange(e, dtype=jnp.int32)
  count_s = timed(lambda: counts(state, ens.hparams, ens.ids, images[:e], labels, eval_ids),
                  repeats)
  yield {'lens': 'train_eval', 'num_models': num_models, 'batch': e,
         's_per_call': round(count_s, 4), 'over_plain': round(count_s / plain(e), 2),
         'images_per_s': round(num_models * e / count_s)}


def analysis_costs(config, models=(16, 128, 512), batch=200, examples=10_000, repeats=3,
                   difficulty=True, lenses=False):
  """Yields the records of the module docstring, for each ensemble size in ``models``."""
  b, n = batch, examples
  config = config.copy_and_resolve_references()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, b).astype(np.int32))
  ids = jnp.arange(b, dtype=jnp.int32)
  for num_models in models:
    config.num_models = num_models
    ens = ensemble_lib.Ensemble(config, num_train=1024)
    kernel = step_lib.whitening_kernel_for(np.asarray(rng.integers(
        0, 256, (256, 32, 32, 3), dtype=np.uint8)), config.model)
    state = ens.init(kernel)
    forward_s = timed(lambda: ens.logits(state, images), repeats)
    logits = jnp.asarray(rng.normal(size=(num_models, b, 10)).astype(np.float32))
    groups = np.arange(num_models) % 2
    stats = analysis.init(num_models, n, 10, groups,
                          alpha_trim_resamples=config.analysis.alpha_trim_resamples,
                          ensemble_subsets=config.analysis.ensemble_subsets)
    update = jax.jit(analysis.update)
    update_s = timed(lambda: update(stats, logits, labels, ids), repeats)
    for start in range(0, n, b):  # fill the state so finalize sees real values
      stats = update(stats, logits, labels, (ids + start) % n)
    finalize = jax.jit(analysis.finalize)
    finalize_s = timed(lambda: finalize(stats), 1)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(stats))
    yield {
        'backend': jax.default_backend(), 'num_models': num_models, 'batch': b,
        'tta_level': config.eval.tta_level, 'forward_s_per_batch': round(forward_s, 4),
        'update_s_per_batch': round(update_s, 5),
        'update_over_forward': round(update_s / forward_s, 4),
        'finalize_s': round(finalize_s, 2), 'num_examples': n,
        'alpha_trim_resamples': config.analysis.alpha_trim_resamples,
        'num_subsets': int(stats['subset_member'].shape[0]),
        'state_mbytes': round(state_bytes / 2**20, 1)}
    if difficulty:
      for row in difficulty_costs(config, num_models, images, labels, kernel, repeats):
        yield {'backend': jax.default_backend(), **row}
    if lenses:
      for row in lens_costs(config, num_models, kernel, repeats):
        yield {'backend': jax.default_backend(), **row}
