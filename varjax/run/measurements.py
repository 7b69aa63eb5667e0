"""Per-model measurements beyond the variance statistics, as plug-ins the run loops over.

A measurement is enabled by its config switch (``enabled``) and acts through up
to three hooks, each a no-op by default:

- ``after_epoch(state, epoch) -> state``: records kept during training
  (checkpointed with the state);
- ``evaluation_inputs(state) -> dict``: extra inputs of the evaluation program;
- ``after_training(state, evaluation) -> Measured``: per-model values and their
  statistics across each group's models.

The difficulty probes (prediction depth, forgetting) live here, the lenses
(train-set fit, sharpness, alignment) in run/lenses.py; the per-model maths of
each is in measures/, the group statistics in analysis/.

Example:
  >>> for m in enabled(config, context):                  # doctest: +SKIP
  ...   state = m.after_epoch(state, epoch)
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from varjax import analysis
from varjax.ensemble import mesh as mesh_lib
from varjax.errors import ConfigError
from varjax.run import evaluate


class Measured(NamedTuple):
  """What one measurement adds to the run's outputs (host arrays and JSON values).

  per_model: {name: (N, ...)}, into summary.json's models; per_group:
  {name: (G, ...)}, into its groups; per_example: {name: array}, into
  per_example.npz; summary: top-level summary.json entries (a dict value is
  merged into an existing dict of the same name).
  """
  per_model: dict
  per_group: dict
  per_example: dict
  summary: dict


@dataclasses.dataclass
class Context:
  """What measurements may use: the run's config, ensemble and training data (on the device).

  ``to_host``: gathers device arrays to NumPy (run/evaluate.py).
  """
  config: Any
  ens: Any
  train_images: Any
  train_labels: Any
  to_host: Any


@dataclasses.dataclass
class Evaluation:
  """The main test set's analysis results (host), as measurements see them after training.

  ``member``: (N, G) group membership with diverged models in no group.
  """
  results: dict
  member: np.ndarray


class Measurement:
  """The hooks of a measurement (see the module docstring); all no-ops here."""
  name = ''

  def __init__(self, context):
    self.context = context

  def after_epoch(self, state, epoch):
    del epoch
    return state

  def evaluation_inputs(self, state):
    del state
    return {}

  def after_training(self, state, evaluation):
    del state, evaluation
    return Measured({}, {}, {}, {})


class PredictionDepth(Measurement):
  """Baldock et al.'s prediction depth: k-NN probes need the support set's embeddings."""
  name = 'prediction_depth'

  def evaluation_inputs(self, state):
    c, ens = self.context.config, self.context.ens
    size = min(c.difficulty.depth_support_size, self.context.train_images.shape[0])
    if size < c.difficulty.depth_k:
      raise ConfigError(
          f'difficulty.depth_k={c.difficulty.depth_k} exceeds the {size} support images (the '
          'training set is smaller than difficulty.depth_support_size); lower depth_k.')
    support = evaluate.support_embeddings(ens, state, self.context.train_images[:size],
                                          c.eval.batch_size)
    return {'support': support, 'support_labels': self.context.train_labels[:size]}

  def after_training(self, state, evaluation):
    del state, evaluation  # the depths come out of the analysis with the test results
    return Measured({}, {}, {}, {'depth_probes': list(self.context.config.difficulty.depth_probes)})


# Forgetting records and their aggregates -> per_example.npz names.
FORGETTING_ARRAYS = {'correct': 'probe_correct', 'forgetting_events': 'forgetting_events',
                     'learned_epoch': 'learned_epoch', 'cumulative_correct': 'cumulative_correct',
                     'forgetting_mean': 'forgetting_mean', 'never_learned': 'never_learned',
                     'learned_epoch_mean': 'learned_epoch_mean',
                     'cumulative_accuracy': 'cumulative_accuracy',
                     'probe_accuracy': 'probe_accuracy'}
FORGETTING_PER_MODEL = ('mean_forgetting_events', 'never_learned_fraction',
                        'unforgettable_fraction')


class Forgetting(Measurement):
  """Toneva et al.'s forgetting events of the first training images, recorded after every epoch."""
  name = 'forgetting'

  def after_epoch(self, state, epoch):
    del epoch
    n = self.context.ens.num_tracked
    return self.context.ens.record_forgetting(state, self.context.train_images[:n],
                                              self.context.train_labels[:n])

  def after_training(self, state, evaluation):
    ens, to_host = self.context.ens, self.context.to_host
    member = jnp.asarray(evaluation.member)
    stats = jax.jit(analysis.forgetting_stats, out_shardings=mesh_lib.replicated(ens.mesh))(
        state['forgetting'], member)
    records = {**to_host(state['forgetting']), **jax.tree.map(np.asarray, stats)}
    n = ens.num_tracked
    per_example = {out: records[k] for k, out in FORGETTING_ARRAYS.items()}
    per_example['probe_labels'] = self.context.to_host(self.context.train_labels[:n])
    # Events are means over the (model, example) pairs ever classified right;
    # the never-right pairs (Toneva et al.'s infinitely forgotten) are counted apart.
    section = {'probes': f'training images [0, {n})', 'num_probes': n,
               'epochs_recorded': int(records['epochs'].max()),
               'groups': [{'group': g,
                           'mean_forgetting_events': records['group_forgetting_events'][g],
                           'never_learned': records['group_never_learned'][g],
                           'forgetting_accuracy_corr': records['forgetting_accuracy_corr'][g]}
                          for g in range(member.shape[1])]}
    return Measured({k: records[k] for k in FORGETTING_PER_MODEL}, {}, per_example,
                    {'forgetting': section})


def enabled(context):
  """The measurements ``context.config`` switches on, in the order the run applies them."""
  # Imported here: the lenses import this module for its interface.
  from varjax.run import lenses  # pylint: disable=g-import-not-at-top
  c = context.config
  kinds = [(c.difficulty.prediction_depth, PredictionDepth),
           (c.difficulty.forgetting, Forgetting),
           (c.lenses.train_eval_size > 0, lenses.TrainFit),
           (c.lenses.sharpness, lenses.Sharpness),
           (c.lenses.alignment, lenses.Alignment)]
  return [kind(context) for on, kind in kinds if on]
