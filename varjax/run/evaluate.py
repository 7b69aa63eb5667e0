"""Evaluation of every model on a test set, its logits streamed into the on-device analysis.

Example:
  >>> evaluate = make_evaluator(ens, 10_000, 10, 1000, config.analysis)   # doctest: +SKIP
  >>> results = evaluate(state, test_images, test_labels)                # doctest: +SKIP
"""

import jax
import jax.numpy as jnp
import numpy as np

from varjax import analysis
from varjax.ensemble import mesh as mesh_lib


def host_gatherer(mesh):
  """Returns to_host(tree) -> NumPy: gathers arrays sharded over all processes' devices."""
  gather = jax.jit(lambda tree: tree, out_shardings=mesh_lib.replicated(mesh))
  return lambda tree: jax.tree.map(np.asarray, gather(tree))


def make_evaluator(ens, num_examples, num_classes, batch_size, analysis_config,
                   groups=None, support=(), support_labels=None):
  """Returns evaluate(state, images, labels) -> analysis results (host NumPy).

  Test images and labels live on the device; each batch's TTA logits (and the
  difficulty probes the config asks for) stay there and go straight into the
  analysis accumulators (replicated over the mesh; only the final results are
  gathered). ``groups`` (N,): each model's group, -1 for one that joins no
  group statistic (diverged); default ``ens.groups``. ``support``,
  ``support_labels``: the prediction-depth support set (``support_embeddings``).
  """

  def take(images, labels, start, size):
    x = jax.lax.dynamic_slice_in_dim(images, start, size)
    y = jax.lax.dynamic_slice_in_dim(labels, start, size)
    return x, y, start + jnp.arange(size, dtype=jnp.int32)

  take = jax.jit(take, static_argnums=3)
  replicated = mesh_lib.replicated(ens.mesh)
  finalize = jax.jit(analysis.finalize, out_shardings=replicated)

  def evaluate(state, images, labels):
    stats = ens.analysis_init(num_examples, num_classes, groups, analysis_config)
    # From each process's own copy: device_put would first compare the copies across
    # processes, and the NaN the state holds never equals itself.
    stats = jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), replicated, lambda index, x=np.asarray(x): x[index]), stats)
    for start in range(0, num_examples, batch_size):
      x, y, ids = take(images, labels, jnp.int32(start), min(batch_size, num_examples - start))
      outputs = ens.eval_outputs(state, x, y, support, support_labels)
      logits = outputs.pop('logits')
      stats = ens.analysis_update(stats, logits, y, ids, outputs)
    return jax.tree.map(np.asarray, finalize(stats))

  return evaluate


def support_embeddings(ens, state, images, batch_size):
  """Each probe place's embeddings (N, S, D_l) of the support images, batch by batch."""
  parts = [ens.embeddings(state, images[start:start + batch_size])
           for start in range(0, images.shape[0], batch_size)]
  return tuple(jnp.concatenate(layer, axis=1) for layer in zip(*parts))
