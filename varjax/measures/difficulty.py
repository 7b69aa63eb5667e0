"""Per-model example-difficulty probes: prediction depth, feature margins, forgetting.

Pure functions of one model's arrays; the ensemble maps them over models and
the analysis (varjax/analysis/difficulty.py) aggregates them across models.

- Prediction depth (Baldock, Maennel, Neyshabur 2021): k-NN probes on the
  pooled activations at the model's probe places (by default the input, the
  whitening output and every conv's output; models/airbench.py), against a
  support set of training images embedded by the same model; the depth of an
  example is the 1-based index of the last probe that disagrees with the
  model's final prediction, 0 when all agree (so 0..L for L probes).
- Feature margin (Jiang et al. 2019 at the last layer): the head is linear
  without bias, so the distance of the last embedding h to the boundary between
  the true class y and the runner-up j is (z_y - z_j) / (s * ||w_y - w_j||);
  dividing by the root of h's total variance over the test set (done by the
  analysis) makes it invariant to the embedding's scale.
- Forgetting (Toneva et al. 2019) and learning speed (Jiang et al. 2021): the
  correctness of a fixed subset of training examples after every epoch;
  an example is learned from the epoch after which it stays correct.

Example:
  >>> pred = knn_predict(queries, support, support_labels, k=30, num_classes=10)  # doctest: +SKIP
  >>> depth = prediction_depth(probe_preds, final_pred)                         # doctest: +SKIP
"""

import jax
import jax.numpy as jnp

from varjax.analysis.variance import HIGHEST



def knn_predict(queries, support, support_labels, k, num_classes):
  """Majority label of the k nearest (Euclidean) support points of each query.

  Args:
    queries: (b, D) embeddings.
    support: (S, D) embeddings of the support set.
    support_labels: (S,) int labels.
    k: neighbours (k <= S).
    num_classes: K.

  Returns:
    (b,) int32 predictions; a tied vote goes to the smallest class index.

  Example:
    >>> knn_predict(jnp.zeros((1, 2)), jnp.eye(2), jnp.array([0, 1]), 1, 2)
    Array([0], dtype=int32)
  """
  queries = queries.astype(jnp.float32)
  support = support.astype(jnp.float32)
  # ||q - s||^2 without the ||q||^2 term, which does not change the ranking.
  dist = jnp.sum(support * support, -1) - 2 * jnp.matmul(queries, support.T, precision=HIGHEST)
  _, nearest = jax.lax.top_k(-dist, k)
  votes = jax.nn.one_hot(support_labels[nearest], num_classes, dtype=jnp.int32).sum(1)
  return jnp.argmax(votes, axis=-1).astype(jnp.int32)


def prediction_depth(probe_preds, final_pred):
  """Depth per example from probe predictions (b, L) and the final prediction (b,).

  The 1-based index of the last probe that disagrees with ``final_pred``; 0
  when every probe agrees.

  Example:
    >>> prediction_depth(jnp.array([[1, 1, 1], [2, 1, 1], [1, 2, 1]]), jnp.array([1, 1, 1]))
    Array([0, 1, 2], dtype=int32)
  """
  num_probes = probe_preds.shape[-1]
  disagree = probe_preds != final_pred[:, None]
  layer = jnp.arange(1, num_probes + 1, dtype=jnp.int32)
  return jnp.max(jnp.where(disagree, layer, 0), axis=-1).astype(jnp.int32)


def feature_margin(logits, head, head_scale, labels):
  """Signed distance of the last embedding to the true-vs-runner-up boundary.

  Args:
    logits: (b, K) the model's logits, head_scale * features @ head (the head
      is linear without bias, so the logits carry the features' projections).
    head: (D, K) the head's weights.
    head_scale: the constant factor of the logits.
    labels: (b,) true classes.

  Returns:
    (b,) float32: (z_y - z_j) / (head_scale * ||w_y - w_j||) with j the largest
    other logit; negative for a misclassified example.

  Example:
    >>> feature_margin(jnp.array([[2., 0.]]), jnp.eye(2), 1.0, jnp.array([0]))  # doctest: +SKIP
    Array([1.4142135], dtype=float32)
  """
  logits = logits.astype(jnp.float32)
  head = head.astype(jnp.float32)
  is_label = jax.nn.one_hot(labels, head.shape[-1], dtype=bool)
  runner_up = jnp.argmax(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  gap = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0] - jnp.take_along_axis(
      logits, runner_up[:, None], -1)[:, 0]
  direction = head[:, labels] - head[:, runner_up]                       # (D, b)
  return gap / (head_scale * jnp.linalg.norm(direction, axis=0))


def init_forgetting(num_tracked):
  """One model's empty forgetting record over ``num_tracked`` training examples.

  ``correct`` after the latest epoch (0/1), ``forgetting_events`` (correct ->
  incorrect transitions), ``learned_epoch`` (the 1-based epoch after which
  the example has stayed correct up to the latest one; -1 when it is wrong
  now), ``cumulative_correct`` (epochs correct; 0: never learned, which
  Toneva et al. count as forgotten infinitely often), ``epochs`` (recorded).
  """
  zeros = jnp.zeros((num_tracked,), jnp.int32)
  return {'correct': zeros, 'forgetting_events': zeros,
          'learned_epoch': jnp.full((num_tracked,), -1, jnp.int32),
          'cumulative_correct': zeros, 'epochs': jnp.zeros((), jnp.int32)}


def update_forgetting(record, correct):
  """Adds one epoch's correctness (P,) bool of the tracked examples to a model's record.

  Example:
    >>> d = init_forgetting(1)
    >>> for c in (True, False, True):
    ...   d = update_forgetting(d, jnp.array([c]))
    >>> int(d['forgetting_events'][0]), int(d['learned_epoch'][0])
    (1, 3)
  """
  correct = correct.astype(jnp.int32)
  epoch = record['epochs'] + 1
  forgotten = (record['correct'] == 1) & (correct == 0)
  # Correct now: learned at the start of the current run of correct epochs.
  learned = jnp.where(correct == 1, jnp.where(record['learned_epoch'] >= 0,
                                              record['learned_epoch'], epoch), -1)
  return {'correct': correct,
          'forgetting_events': record['forgetting_events'] + forgotten.astype(jnp.int32),
          'learned_epoch': learned,
          'cumulative_correct': record['cumulative_correct'] + correct,
          'epochs': epoch}


def make_eval_outputs(forward, num_classes, head_scale, depth_k=None, feature_margins=False):
  """Returns eval_outputs(variables, images, labels, support, support_labels) -> dict.

  ``forward`` is ``step.make_eval_forward(model, tta_level)``. The dict holds
  ``logits`` (b, K); with ``depth_k``, ``depth`` (b,) from k-NN probes against
  ``support`` (a tuple of (S, D_l) embeddings, one per probe place); with
  ``feature_margins``, ``feature_margin`` (b,) and the batch's sums of the
  last embedding, ``feature_sum`` (D,), and of its squared norm, ``feature_sq``
  (for the total variance; summed per model so no result depends on N).
  """

  def eval_outputs(variables, images, labels, support=(), support_labels=None):
    logits, embeddings = forward(variables, images)
    out = {'logits': logits}
    if depth_k:
      probes = jnp.stack([knn_predict(e, s, support_labels, depth_k, num_classes)
                          for e, s in zip(embeddings['probes'], support)], axis=-1)
      out['depth'] = prediction_depth(probes, jnp.argmax(logits, -1))
    if feature_margins:
      features = embeddings['features']
      out['feature_sum'] = features.sum(0)
      out['feature_sq'] = jnp.sum(features * features)
      out['feature_margin'] = feature_margin(logits, variables['params']['head'], head_scale,
                                             labels)
    return out

  return eval_outputs
