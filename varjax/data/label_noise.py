"""Per-model label noise: a fixed corruption of each model's training labels.

Zhang et al. (2017, "Understanding deep learning requires rethinking
generalization", Sec. 2) and Maennel et al. (2020): independently with
probability ``fraction``, an example's label is replaced by a class drawn
uniformly from all K classes. The draw may return the true class, so the
expected share of labels that actually change is ``fraction * (1 - 1/K)``;
``fraction = 1`` makes every label uniformly random ("random labels").

The corruption is a pure function of the model's noise key (from
``(seed, model id)`` alone) and the example's position in the training set:
the same in every epoch and step, the same for the model alone or in any
ensemble, and recomputed identically after a resume. Evaluation sets keep
their true labels.

Example:
  >>> noisy = corrupt(jax.random.key(5), jnp.arange(4) % 10, 0.0, 10)
  >>> noisy.tolist()
  [0, 1, 2, 3]
"""

import jax
import jax.numpy as jnp

def corrupt(key, labels, fraction, num_classes):
  """The model's training labels: (n,) int32, each replaced with probability ``fraction``.

  Args:
    key: the model's label-noise key (keys.label_noise_key).
    labels: (n,) true labels of the whole training set (position i is example i).
    fraction: probability in [0, 1] (a traced per-model value is fine).
    num_classes: K; the replacement is uniform over all K classes.
  """
  labels = jnp.asarray(labels, jnp.int32)
  pick_key, class_key = jax.random.split(key)
  replaced = jax.random.uniform(pick_key, labels.shape) < fraction
  random_labels = jax.random.randint(class_key, labels.shape, 0, num_classes, jnp.int32)
  return jnp.where(replaced, random_labels, labels)
