"""Augmentation against NumPy crops, flips and the airbench TTA recipe."""

import jax
import jax.numpy as jnp
import numpy as np

from varjax import augment
from varjax import data


def test_normalize_matches_numpy():
  x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  want = (x / 255.0 - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
  np.testing.assert_allclose(augment.normalize(x), want, rtol=1e-5, atol=1e-5)


def test_random_translate_is_a_crop_of_the_reflect_padded_image():
  x = np.random.default_rng(0).normal(size=(16, 8, 8, 2)).astype(np.float32)
  out = np.asarray(augment.random_translate(jax.random.key(3), jnp.asarray(x), 2))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
  offsets = set()
  for i in range(len(x)):
    matches = [(a, b) for a in range(5) for b in range(5)
               if np.array_equal(out[i], padded[i, a:a + 8, b:b + 8])]
    assert matches, f'image {i} is not a 2-pixel translation'
    offsets.add(matches[0])
  assert len(offsets) > 3  # offsets vary across images


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
