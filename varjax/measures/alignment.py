"""The inputs of Maennel et al.'s (2020) alignment lens: a model's first trained conv and its patches.

The measure itself (misalignment of the filters' covariance with the patch
covariance, per model and pooled over a group's models) is model-free and
lives in varjax/analysis/alignment.py. This module extracts what it is taken
on, per model:

- the layer: airbench's whitening conv is frozen, so the first *trained*
  layer is group1's first 3x3 conv (``FIRST_CONV``), its m filters flattened
  to d = 9 C in (row, column, channel) order;
- its input x: the whitening output after its GELU, captured from the model's
  own forward; the 3 x 3 patches are the VALID ones (the interior, no zero
  padding), on the first ``lenses.alignment_images`` training images. The
  whitening bias trains for the first epochs, so each model has its own
  Sigma_x; their first and second moments are summed on the device (the
  heavy part) and turned into covariances on the host;
- the update W - W_0 besides W: airbench's convs start "dirac" (their first
  filters are identity maps; at the CPU widths every filter of this conv is a
  one-hot vector at init), and that structure dominates the trained filters'
  covariance, while Maennel et al.'s argument is about what the gradient steps
  add (their second moments follow Sigma_x under random labels). W_0 is
  recomputed from the model's init key.

Example:
  >>> moments_one = make_moments_one(model, final_variables)      # doctest: +SKIP
  >>> moments = moments_one((state,), images_u8)                  # doctest: +SKIP
  >>> moments['outer'].shape                                      # doctest: +SKIP
  (216, 216)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from varjax.analysis.variance import HIGHEST
from varjax.data import augment

PATCH = 3  # the conv's kernel size
FIRST_CONV = ('group1', 'conv1')


def patches(maps, size=PATCH):
  """All VALID size x size patches of NHWC maps, (n * h' * w', size * size * C), (row, col, c)."""
  n, h, w, c = maps.shape
  views = [maps[:, i:h - size + 1 + i, j:w - size + 1 + j] for i in range(size)
           for j in range(size)]
  return jnp.concatenate(views, axis=-1).reshape(-1, size * size * c)


def patch_moments(maps, size=PATCH):
  """Sums over the patches of a batch: ``count``, ``sum`` (d,) and ``outer`` (d, d) of p p'."""
  p = patches(maps.astype(jnp.float32), size)
  return {'count': jnp.float32(p.shape[0]), 'sum': p.sum(0),
          'outer': jnp.matmul(p.T, p, precision=HIGHEST)}


def first_conv_input(model, variables, images_u8):
  """The input of group1 (whitening output after GELU) as the model computes it, (b, 31, 31, C).

  Captured from the model's own forward (flax method interception), so it
  follows whatever the network does before its first trained conv.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and context.module.name == FIRST_CONV[0]:
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  x = augment.normalize(images_u8, model.dtype)
  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=False)
  return captured[0]


def first_conv_kernel(params):
  """The (3, 3, C, m) kernel of the first trained conv."""
  return params[FIRST_CONV[0]][FIRST_CONV[1]]


def make_moments_one(model, final_variables):
  """Returns moments_one(per_model=(state,), images_u8) -> the batch's patch moments.

  ``final_variables(state)`` gives the model's trained variables.
  """

  def moments_one(per_model, images_u8):
    state, = per_model
    return patch_moments(first_conv_input(model, final_variables(state), images_u8))

  return moments_one
