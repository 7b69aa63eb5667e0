"""Per-model difficulty probes against NumPy k-NN, geometry and hand-built sequences."""

import jax
import jax.numpy as jnp
import numpy as np

from varjax.data import augment
from varjax.measures import difficulty
from varjax.training import step as step_lib
from varjax.models import airbench


def numpy_knn(queries, support, labels, k, num_classes):
  dist = ((queries[:, None, :] - support[None]) ** 2).sum(-1)
  nearest = np.argsort(dist, axis=1, kind='stable')[:, :k]
  votes = np.stack([np.bincount(labels[row], minlength=num_classes) for row in nearest])
  return votes.argmax(1)  # first maximum: the smallest class on a tie


def numpy_depth(probes, final):
  depth = np.zeros(len(final), int)
  for i in range(len(final)):
    for layer in range(probes.shape[1]):
      if probes[i, layer] != final[i]:
        depth[i] = layer + 1
  return depth


def test_knn_predict_matches_numpy():
  rng = np.random.default_rng(0)
  support = rng.normal(size=(200, 8)).astype(np.float32)
  labels = rng.integers(0, 5, 200)
  queries = rng.normal(size=(50, 8)).astype(np.float32)
  for k in (1, 7, 30):
    got = difficulty.knn_predict(jnp.asarray(queries), jnp.asarray(support), jnp.asarray(labels),
                                 k, 5)
    np.testing.assert_array_equal(got, numpy_knn(queries, support, labels, k, 5))


def test_prediction_depth_of_planted_embeddings():
  # Support: three layers of well-separated class clusters. Each test example
  # sits on the cluster of a chosen class at each layer, so its probe
  # predictions, and its depth, are known by construction.
  rng = np.random.default_rng(1)
  num_classes, per_class, k = 4, 40, 30
  centres = [rng.normal(0, 10, (num_classes, d)) for d in (3, 6, 5)]
  support_labels = np.repeat(np.arange(num_classes), per_class)
  support = [c[support_labels] + rng.normal(0, 0.5, (len(support_labels), c.shape[1]))
             for c in centres]
  final = np.array([0, 1, 2, 3, 0, 1])
  planted = np.array([[0, 0, 0], [2, 1, 1], [2, 3, 2], [3, 3, 0], [1, 0, 1], [1, 2, 3]])
  expected = np.array([0, 1, 2, 3, 3, 3])
  queries = [c[planted[:, layer]] + rng.normal(0, 0.5, (len(final), c.shape[1]))
             for layer, c in enumerate(centres)]
  probes = np.stack([difficulty.knn_predict(jnp.asarray(q, jnp.float32),
                                            jnp.asarray(s, jnp.float32),
                                            jnp.asarray(support_labels), k, num_classes)
                     for q, s in zip(queries, support)], axis=-1)
  np.testing.assert_array_equal(probes, planted)
  depth = difficulty.prediction_depth(jnp.asarray(probes), jnp.asarray(final))
  np.testing.assert_array_equal(depth, expected)
  np.testing.assert_array_equal(depth, numpy_depth(planted, final))


def test_feature_margin_is_the_distance_to_the_boundary():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(64, 6))
  head = rng.normal(size=(6, 5))
  labels = rng.integers(0, 5, 64)
  scale = 1 / 9
  logits = scale * features @ head
  got = np.asarray(difficulty.feature_margin(jnp.asarray(logits, jnp.float32),
                                             jnp.asarray(head, jnp.float32), scale,
                                             jnp.asarray(labels)))
  for i in range(64):
    others = [j for j in range(5) if j != labels[i]]
    j = others[int(np.argmax(logits[i, others]))]
    normal = head[:, labels[i]] - head[:, j]
    normal /= np.linalg.norm(normal)
    # Walking the signed distance back along the normal lands on the boundary.
    on_boundary = features[i] - got[i] * normal
    z = on_boundary @ head
    np.testing.assert_allclose(z[labels[i]], z[j], atol=1e-4)
    assert (got[i] > 0) == (logits[i].argmax() == labels[i])


def numpy_learned_epoch(correct):
  """1-based epoch from which every later epoch is correct; -1 if the last is wrong."""
  out = np.full(correct.shape[1], -1)
  for j in range(correct.shape[1]):
    for e in range(correct.shape[0]):
      if correct[e:, j].all():
        out[j] = e + 1
        break
  return out


def test_learned_epoch_of_random_sequences_matches_its_definition():
  correct = np.random.default_rng(5).random((7, 200)) < 0.6
  record = difficulty.init_forgetting(200)
  step = jax.jit(difficulty.update_forgetting)
  for e, row in enumerate(correct):
    record = step(record, jnp.asarray(row))
    np.testing.assert_array_equal(record['learned_epoch'], numpy_learned_epoch(correct[:e + 1]))
  np.testing.assert_array_equal(record['forgetting_events'], (correct[:-1] & ~correct[1:]).sum(0))


def test_forgetting_records_count_a_hand_built_correctness_sequence():
  # Rows: epochs; columns: probe examples.
  correct = np.array([[1, 0, 0, 1],
                      [0, 0, 1, 1],
                      [1, 0, 1, 0],
                      [0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [1, 0, 1, 0]], bool)
  record = difficulty.init_forgetting(4)
  for row in correct:
    record = jax.jit(difficulty.update_forgetting)(record, jnp.asarray(row))
  np.testing.assert_array_equal(record['forgetting_events'], [2, 0, 0, 2])
  # Learned: the epoch after which the example stays correct (-1: wrong at the end).
  np.testing.assert_array_equal(record['learned_epoch'], [6, -1, 2, -1])
  np.testing.assert_array_equal(record['cumulative_correct'], [3, 0, 5, 4])
  np.testing.assert_array_equal(record['correct'], [1, 0, 1, 0])
  assert int(record['epochs']) == 6


def test_eval_outputs_of_a_tiny_model_match_numpy():
  """Embeddings captured independently of the model's sow, k-NN and depth in NumPy."""
  model = airbench.Airbench(widths=(4, 8, 8), probes=airbench.GROUP_PROBES)
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  kernel = airbench.whitening_kernel(rng.normal(size=(32, 32, 32, 3)), 2)
  variables = airbench.init_variables(model, jax.random.key(0), kernel)
  tta = 2
  forward = step_lib.make_eval_forward(model, tta)
  eval_outputs = difficulty.make_eval_outputs(forward, 10, model.head_scale, depth_k=5,
                                              feature_margins=True)
  support_images, query_images = images[:30], images[30:]
  support = forward(variables, jnp.asarray(support_images))[1]['probes']
  support_labels = rng.integers(0, 10, 30)
  labels = rng.integers(0, 10, 10)
  out = eval_outputs(variables, jnp.asarray(query_images), jnp.asarray(labels), support,
                     jnp.asarray(support_labels))

  def captured(images_u8):
    """Each group's output, max-pooled, TTA-averaged: via flax's capture, not the sow."""
    x = augment.normalize(jnp.asarray(images_u8), jnp.float32)
    weights, views = zip(*augment.tta_views(x, tta))
    _, state = model.apply(variables, jnp.concatenate(views), train=False,
                           capture_intermediates=lambda mdl, _: isinstance(mdl, airbench.ConvGroup))
    groups = state['intermediates']
    # A group returns (its first conv's output, its output); the probes take the output.
    pooled = [np.asarray(groups[f'group{i}']['__call__'][0][1]).max(axis=(1, 2))
              for i in (1, 2, 3)]
    return [np.tensordot(weights, p.reshape(len(views), len(images_u8), -1), axes=1)
            for p in pooled]

  support_np, query_np = captured(support_images), captured(query_images)
  for got, want in zip(support, support_np):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  logits = np.asarray(out['logits'])
  np.testing.assert_allclose(logits, model.head_scale * query_np[-1]
                             @ np.asarray(variables['params']['head']), rtol=1e-4, atol=1e-5)
  probes = np.stack([numpy_knn(q, s, support_labels, 5, 10) for q, s in zip(query_np, support_np)],
                    axis=-1)
  np.testing.assert_array_equal(out['depth'], numpy_depth(probes, logits.argmax(-1)))
  np.testing.assert_allclose(out['feature_sum'], query_np[-1].sum(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['feature_sq'], (query_np[-1] ** 2).sum(), rtol=1e-5)
  # Feature margin: the distance from the last embedding to the plane where the
  # true class and the runner-up tie, in NumPy geometry.
  head = np.asarray(variables['params']['head'], np.float64)
  for i in range(10):
    other = np.where(np.arange(10) == labels[i], -np.inf, logits[i]).argmax()
    normal = head[:, labels[i]] - head[:, other]
    distance = query_np[-1][i] @ normal / np.linalg.norm(normal)
    np.testing.assert_allclose(out['feature_margin'][i], distance, rtol=1e-4, atol=1e-6)
