"""Augmentation against NumPy crops, flips and the airbench TTA recipe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.data import augment


def test_normalize_matches_numpy():
  x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  want = (x / 255.0 - np.array(augment.MEAN)) / np.array(augment.STD)
  np.testing.assert_allclose(augment.normalize(x), want, rtol=1e-5, atol=1e-5)


def test_crop_is_a_translation_of_the_reflect_padded_image():
  x = np.random.default_rng(0).normal(size=(16, 8, 8, 2)).astype(np.float32)
  offsets = augment.crop_offsets(jax.random.key(3), jnp.arange(16), 0, 2)
  out = np.asarray(augment.crop(jnp.asarray(x), offsets, 2))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
  for i in range(len(x)):
    a, b = np.asarray(offsets[i])
    assert 0 <= a <= 4 and 0 <= b <= 4
    np.testing.assert_array_equal(out[i], padded[i, a:a + 8, b:b + 8])
  assert len({tuple(o) for o in np.asarray(offsets)}) > 3  # offsets vary across images


def test_crop_offsets_follow_the_image_and_epoch():
  key = jax.random.key(1)
  idx = jnp.arange(500)
  first = np.asarray(augment.crop_offsets(key, idx, 0, 2))
  # The same image gets the same crop wherever it sits in a batch...
  shuffled = np.random.default_rng(0).permutation(500)
  np.testing.assert_array_equal(np.asarray(augment.crop_offsets(key, jnp.asarray(shuffled), 0, 2)),
                                first[shuffled])
  # ...and a fresh one in the next epoch or under another key.
  for other in (augment.crop_offsets(key, idx, 1, 2),
                augment.crop_offsets(jax.random.key(2), idx, 0, 2)):
    assert 0.02 < np.mean(np.all(np.asarray(other) == first, axis=1)) < 0.1  # 1/25 by chance


def epoch_views(order, augment_key, epoch, images, labels, steps, batch, translate=2,
                flip_mode='alternating'):
  """Every image's augmented view in one epoch, by image index, as train_batch makes them."""
  views = {}
  for s in range(steps):
    step = epoch * steps + s
    x, y = augment.train_batch(images, labels, order, augment_key, step, steps, batch,
                               translate, flip_mode)
    idx = np.asarray(order)[s * batch:(s + 1) * batch]
    np.testing.assert_array_equal(y, labels[idx])
    views.update({int(i): np.asarray(v) for i, v in zip(idx, x)})
  return views


def test_models_differing_only_in_order_see_identical_augmented_images():
  """randomness.vary=('order',): the augment key is shared, so every image of every
  epoch must be cropped and flipped identically though it lands in another batch slot."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(48, dtype=np.int32)
  key = jax.random.key(7)
  for epoch in (0, 1):
    orders = [jnp.asarray(rng.permutation(48), jnp.int32) for _ in range(2)]
    a, b = (epoch_views(o, key, epoch, images, labels, steps=4, batch=12) for o in orders)
    assert sorted(a) == sorted(b) == list(range(48))
    for i in range(48):
      np.testing.assert_array_equal(a[i], b[i], err_msg=f'image {i}, epoch {epoch}')
  # The views do vary: between epochs, and under another augment key.
  order = orders[0]
  views0 = epoch_views(order, key, 0, images, labels, 4, 12)
  views2 = epoch_views(order, key, 2, images, labels, 4, 12)   # same flip state as epoch 0
  other = epoch_views(order, jax.random.key(8), 0, images, labels, 4, 12)
  assert sum(not np.array_equal(views0[i], views2[i]) for i in range(48)) > 30
  assert sum(not np.array_equal(views0[i], other[i]) for i in range(48)) > 30


def test_alternating_flip_flips_every_image_in_alternate_epochs():
  key = jax.random.key(0)
  idx = jnp.arange(1000)
  masks = [np.asarray(augment.flip_mask(key, idx, e, 'alternating')) for e in range(4)]
  assert 400 < masks[0].sum() < 600  # a random half in epoch 0
  for a, b in zip(masks, masks[1:]):
    np.testing.assert_array_equal(a, ~b)


def test_random_flip_draws_anew_each_epoch():
  key = jax.random.key(0)
  a, b = (np.asarray(augment.flip_mask(key, jnp.arange(1000), e, 'random')) for e in (0, 1))
  assert 0.3 < (a == b).mean() < 0.7


def test_train_batch_takes_the_orders_slice():
  images = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3),
                                                                       np.uint8)
  labels = np.arange(20, dtype=np.int32)
  order = jnp.asarray(np.random.default_rng(0).permutation(20), jnp.int32)
  _, y = augment.train_batch(images, labels, order, jax.random.key(0), step=1,
                             steps_per_epoch=4, batch_size=5, translate=2, flip_mode='none')
  np.testing.assert_array_equal(y, np.asarray(order)[5:10])


def test_tta_level2_views_and_weights():
  x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype(np.float32)
  views = augment.tta_views(jnp.asarray(x), 2)
  assert sum(w for w, _ in views) == 1.0
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  up_left, down_right = p[:, :6, :6], p[:, 2:, 2:]
  want = [x, x[:, :, ::-1], up_left, up_left[:, :, ::-1], down_right, down_right[:, :, ::-1]]
  for (_, got), w in zip(views, want):
    np.testing.assert_array_equal(got, w)


def test_train_batch_is_numpy_pad_crop_flip_normalize():
  """The one-gather batch against the recipe spelled out in NumPy on floats."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(40, dtype=np.int32)
  order = jnp.asarray(rng.permutation(40), jnp.int32)
  key = jax.random.key(5)
  for step in (0, 3, 5):  # epochs 0 and 1 (steps of 10 images, 4 per epoch)
    x, y = augment.train_batch(images, labels, order, key, step, 4, 10, 2, 'alternating')
    epoch, idx = step // 4, np.asarray(order)[(step % 4) * 10:(step % 4 + 1) * 10]
    offsets = np.asarray(augment.crop_offsets(jax.random.fold_in(key, 1), jnp.asarray(idx),
                                              epoch, 2))
    flips = np.asarray(augment.flip_mask(jax.random.fold_in(key, 0), jnp.asarray(idx), epoch,
                                         'alternating'))
    floats = (images[idx] / 255.0 - np.array(augment.MEAN)) / np.array(augment.STD)
    padded = np.pad(floats, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
    for n in range(10):
      a, b = offsets[n]
      want = padded[n, a:a + 32, b:b + 32]
      want = want[:, ::-1] if flips[n] else want
      np.testing.assert_allclose(x[n], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, idx)
    assert 0 < flips.sum() < 10


@pytest.mark.parametrize('translate, flip_mode', [(2, 'alternating'), (2, 'random'),
                                                   (0, 'alternating'), (1, 'none')])
def test_batch_crop_from_rows_gives_the_gathers_batch_bit_for_bit(translate, flip_mode):
  """'batch_crop' (whole images gathered, then cropped and flipped by selects;
  the images as (N, 32, 32, 3) or as rows) against the one per-pixel gather."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(40, dtype=np.int32)
  order = jnp.asarray(rng.permutation(40), jnp.int32)
  key = jax.random.key(9)
  for step in (0, 3, 5, 9):  # epochs 0, 0, 1, 2
    for dtype in (jnp.float32, jnp.bfloat16):
      args = (labels, order, key, step, 4, 10, translate, flip_mode, dtype)
      want, want_y = augment.train_batch(images, *args, crop='gather')
      for source in (images, images.reshape(40, -1)):
        got, got_y = augment.train_batch(source, *args, crop='batch_crop')
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
        np.testing.assert_array_equal(got_y, want_y)
  with pytest.raises(ValueError, match='crop must be one of'):
    augment.train_batch(images, *args, crop='pad')
