"""Every random key of a run, from (config.seed, purpose, model id) and nothing else.

A model's keys never depend on which other models share its program, its
chunk, its device or the number of models, so a model can be rerun alone and
get the same draws. Each purpose folds a distinct tag into the root key
``jax.random.key(seed)``:

- ``model_key``: weights at init (0), data order (1), augmentation (2); a
  purpose not in ``randomness.vary`` is shared by every model (the variance
  study's ablations of the sources of randomness);
- ``label_noise_key``: the corruption of the training labels (label noise);
- ``sharpness_key``: the random vectors of the sharpness lens (power iteration
  start and Hutchinson probes).

Example:
  >>> k = model_key(0, 'order', 7, vary=('init', 'order', 'augment'))
"""

import jax

PURPOSES = ('init', 'order', 'augment')
# Tags of the other purposes, apart from PURPOSES' indices 0, 1, 2.
_LABEL_NOISE_TAG = 0x6E6F6973
_SHARPNESS_TAG = 0x73686172


def model_key(seed, purpose, model_id, vary):
  """The key of one model for one purpose; shared by all models unless ``purpose`` varies."""
  base = jax.random.fold_in(jax.random.key(seed), PURPOSES.index(purpose))
  return jax.random.fold_in(base, model_id) if purpose in vary else base


def label_noise_key(seed, model_id):
  """The key of one model's label corruption: always its own, whatever randomness.vary says."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _LABEL_NOISE_TAG), model_id)


def sharpness_key(seed, model_id, index):
  """One model's random vector of the sharpness lens: 0 starts power iteration, 1 + p is probe p."""
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHARPNESS_TAG), model_id)
  return jax.random.fold_in(base, index)
