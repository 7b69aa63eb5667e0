"""How well one model fits its training images: against the labels it trained on and the true ones.

Under label noise the two differ: memorisation shows as accuracy on the
(corrupted) labels the model trained on, generalisation as accuracy on the
true ones; among the labels the noise changed, the share predicted as the
corrupted and as the true label says which the model learned.

Example:
  >>> counts_one = make_counts_one(model, recipe, seed)                          # doctest: +SKIP
  >>> counts = counts_one((state, hparams, model_id), images, labels, ids)      # doctest: +SKIP
"""

import jax.numpy as jnp

from varjax import keys
from varjax.data import label_noise
from varjax.training import step as step_lib


def make_counts_one(model, recipe, seed):
  """Returns counts_one(per_model=(state, hparams, model_id), images, labels, ids) -> int32 counts.

  Counts on a batch of training images (``ids``: their positions in the
  training set, whose true ``labels`` are all given): predictions equal to
  the label the model trained on (``fit``) and to the true one (``true``);
  labels the corruption changed (``changed``) and, among those, fit and true.
  """
  forward = step_lib.make_eval_logits(model, recipe.tta_level)

  def counts_one(per_model, images_u8, labels, example_ids):
    state, hparams, model_id = per_model
    trained_on = labels
    if recipe.label_noise:
      trained_on = label_noise.corrupt(keys.label_noise_key(seed, model_id), labels,
                                       hparams['label_noise'], model.num_classes)
    pred = forward(step_lib.final_variables(state, recipe), images_u8).argmax(-1)
    y_true, y_train = labels[example_ids], trained_on[example_ids]
    changed = y_true != y_train
    count = lambda mask: jnp.sum(mask.astype(jnp.int32))
    return {'fit': count(pred == y_train), 'true': count(pred == y_true),
            'changed': count(changed), 'changed_fit': count(changed & (pred == y_train)),
            'changed_true': count(changed & (pred == y_true))}

  return counts_one
