"""On-device batch assembly and augmentation for one model (pure functions of arrays).

Randomness is stateless and follows the image: a model's flip and crop of an
image are functions of (augment key, epoch, image index) alone. They depend
neither on which other models share the program nor on the batch slot the
image lands in, so two models that differ only in data order see every image
augmented identically in every epoch (the variance study's ablations of the
sources of randomness, App. D, rely on this).

Example:
  >>> x = normalize(images_u8)                                              # doctest: +SKIP
  >>> x = crop(x, crop_offsets(jax.random.key(0), idx, epoch=0, pad=2), pad=2)   # doctest: +SKIP
"""

import jax
import jax.numpy as jnp
import numpy as np

FLIP_MODES = ('alternating', 'random', 'none')
TTA_LEVELS = (0, 1, 2)
# airbench's normalisation, per channel, of [0, 1] pixels.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# (x/255 - mean) / std as multiplications by float32 reciprocals: what XLA's
# simplifier makes of the divisions in most fusions but not all (the per-pixel
# gather's kept them), so written out every program computes the same bits.
_INV_255 = np.float32(1) / np.float32(255)
_MEAN = np.asarray(MEAN, np.float32)
_INV_STD = np.float32(1) / np.asarray(STD, np.float32)


def normalize(images_u8, dtype=jnp.float32):
  """uint8 NHWC -> (x/255 - mean) / std, per channel (float32, then ``dtype``)."""
  x = (images_u8.astype(jnp.float32) * _INV_255 - _MEAN) * _INV_STD
  return x.astype(dtype)


def normalize_host(images_u8):
  """``normalize`` in float64 NumPy, on the host (the whitening filters' input)."""
  return (np.asarray(images_u8, np.float64) / 255.0 - np.asarray(MEAN)) / np.asarray(STD)


def reflect_pad(x, pad):
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


def crop_offsets(key, image_indices, epoch, pad):
  """(b, 2) crop offsets in [0, 2 pad] of the given images in ``epoch``: one draw
  per (key, epoch, image index)."""
  epoch_key = jax.random.fold_in(key, epoch)
  return jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(epoch_key, i), (2,), 0,
                                               2 * pad + 1))(image_indices)


def reflect_index(i, size):
  """Index into a row of ``size`` pixels of position ``i`` of its reflect padding
  (NumPy's 'reflect': the edge pixel is not repeated); |i| < 2 size - 1."""
  i = jnp.abs(i)
  return jnp.where(i >= size, 2 * (size - 1) - i, i)


def crop_indices(offsets, flips, size, pad):
  """Source rows (b, size) and columns (b, size) of each image's crop and flip.

  Row r of image n's view is row ``reflect(offsets[n, 0] + r - pad)`` of the
  image, and its column c is the crop's column c (``size - 1 - c`` if flipped).
  """
  positions = jnp.arange(size)
  rows = reflect_index(offsets[:, :1] + positions - pad, size)
  cols = jnp.where(flips[:, None], size - 1 - positions, positions)
  cols = reflect_index(offsets[:, 1:] + cols - pad, size)
  return rows, cols


def crop(x, offsets, pad):
  """Reflect-pads by ``pad`` and crops back at the given (b, 2) offsets."""
  if pad == 0:
    return x
  rows, cols = crop_indices(offsets, jnp.zeros(x.shape[:1], bool), x.shape[1], pad)
  return x[jnp.arange(x.shape[0])[:, None, None], rows[:, :, None], cols[:, None, :]]


def _select_shift(x, offsets, axis, size, pad):
  """Per image, the ``size`` entries of ``axis`` starting at its offset in [0, 2 pad]:
  one select over the 2 pad + 1 static slices (no gather)."""
  out = None
  for shift in range(2 * pad + 1):
    part = jax.lax.slice_in_dim(x, shift, shift + size, axis=axis)
    chosen = (offsets == shift).reshape((-1,) + (1,) * (x.ndim - 1))
    out = part if out is None else jnp.where(chosen, part, out)
  return out


def batch_crop(x, offsets, flips, pad):
  """``crop`` of a batch at (b, 2) offsets, then each flipped image mirrored, by selects
  over static shifts of the reflect-padded batch (airbench's batch_crop): the same
  pixels as ``crop_indices`` names, gathered from a batch already read whole."""
  _, h, w, _ = x.shape
  if pad:
    x = reflect_pad(x, pad)
    x = _select_shift(x, offsets[:, 0], 1, h, pad)
    x = _select_shift(x, offsets[:, 1], 2, w, pad)
  return jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)


def flip_mask(key, image_indices, epoch, mode):
  """Which images of the batch to mirror this epoch.

  'alternating' (airbench): a random half in epoch 0, then every image flips
  state each epoch, so each image is seen both ways in every two epochs.
  'random': a fresh coin per (image, epoch). 'none': never.
  """
  if mode == 'none':
    return jnp.zeros(image_indices.shape, bool)
  if mode == 'alternating':
    coin = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(image_indices)
    return coin ^ (epoch % 2 == 1)
  if mode == 'random':
    epoch_key = jax.random.fold_in(key, epoch)
    return jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(epoch_key, i)))(
        image_indices)
  raise ValueError(f"aug.flip must be 'alternating', 'random' or 'none', got {mode!r}")


CROPS = ('gather', 'batch_crop')
IMAGE_SHAPE = (32, 32, 3)


def train_batch(images_u8, labels, order, augment_key, step, steps_per_epoch, batch_size,
                translate, flip_mode, dtype=jnp.float32, crop='gather'):
  """The augmented float batch of one model at global ``step``.

  ``order`` is the model's permutation of the training set for the current
  epoch; every augmentation choice is keyed by (``augment_key``, epoch, image
  index), never by the step or the batch slot.

  ``images_u8``: (N, H, W, C), or rows (N, H * W * C) of ``IMAGE_SHAPE`` images.
  ``crop`` (the same pixels either way): 'gather' reads each pixel of the
  batch's crops and flips in one gather of bytes; 'batch_crop' gathers the
  batch's whole images, then crops and flips them with selects (``batch_crop``).
  The TPU compiler relayouts an (N, 32, 32, 3) array on every step to gather
  from it (pixels or images) and charges the per-pixel gather ~16 KB per 3-byte
  pixel row; there the step takes rows and 'batch_crop'.
  """
  epoch = step // steps_per_epoch
  start = (step % steps_per_epoch) * batch_size
  idx = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
  flip_key, crop_key = jax.random.fold_in(augment_key, 0), jax.random.fold_in(augment_key, 1)
  offsets = (crop_offsets(crop_key, idx, epoch, translate) if translate
             else jnp.zeros((batch_size, 2), jnp.int32))
  flips = flip_mask(flip_key, idx, epoch, flip_mode)
  if crop == 'batch_crop':
    x = images_u8[idx].reshape((batch_size,) + (
        IMAGE_SHAPE if images_u8.ndim == 2 else images_u8.shape[1:]))
    return normalize(batch_crop(x, offsets, flips, translate), dtype), labels[idx]
  if crop != 'gather':
    raise ValueError(f'crop must be one of {CROPS}, got {crop!r}')
  if images_u8.ndim == 2:
    images_u8 = images_u8.reshape((-1,) + IMAGE_SHAPE)
  rows, cols = crop_indices(offsets, flips, images_u8.shape[1], translate)
  # One gather of bytes does the batch, the crop and the flip (4x less data than
  # moving floats; XLA:CPU's reflect pad was a tenth of a step).
  x = images_u8[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
  return normalize(x, dtype), labels[idx]


def tta_views(x, level):
  """Views of a normalised batch for test-time augmentation, with their weights.

  level 0: x. level 1: mean of x and its mirror. level 2 (airbench): 0.5 * level 1
  + 0.5 * mean over the two 1-pixel translations (up-left, down-right; reflect
  padded) of the level-1 average. Returns a list of (weight, view).
  """
  if level == 0:
    return [(1.0, x)]
  mirror = lambda v: v[:, :, ::-1]
  if level == 1:
    return [(0.5, x), (0.5, mirror(x))]
  if level == 2:
    n, h, w, _ = x.shape
    padded = reflect_pad(x, 1)
    shifted = [padded[:, 0:h, 0:w], padded[:, 2:h + 2, 2:w + 2]]
    views = [(0.25, x), (0.25, mirror(x))]
    for s in shifted:
      views += [(0.125, s), (0.125, mirror(s))]
    return views
  raise ValueError(f'eval.tta_level must be 0, 1 or 2, got {level}')
