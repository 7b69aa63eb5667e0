"""Shared test setup: 8 fake CPU devices (set before JAX starts), data, config loading.

Tests that need the real CIFAR-10 binary files find them through VARJAX_DATA_DIR
(as a user's run does; .ci/run sets it). For a developer's convenience, an unset
VARJAX_DATA_DIR is pointed at ../shared/data beside the checkout when that exists.
"""

import os
import pathlib
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# The suite runs on CPU devices; with the compiler plugins installed ('.[aot]')
# JAX would otherwise try to start CUDA and TPU backends too.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The commands the tests launch share one compilation cache for the session
# (programs they compile alike load from it), not the user's own.
os.environ.setdefault('VARJAX_COMPILATION_CACHE', tempfile.mkdtemp(prefix='varjax_jit_cache_'))

from varjax.aot import targets  # noqa: E402  (imports no JAX)

targets.quiet_tpu_environment()  # before libtpu loads

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from varjax.config import files as config_files  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
_WORKSPACE_CIFAR10 = REPO.parent / 'shared' / 'data' / 'cifar10' / 'cifar-10-batches-bin'
if not os.environ.get('VARJAX_DATA_DIR') and _WORKSPACE_CIFAR10.is_dir():
  os.environ['VARJAX_DATA_DIR'] = str(_WORKSPACE_CIFAR10)
# The CIFAR-10 binary files (data_batch_1.bin ...), or None.
CIFAR10_BINARY = (pathlib.Path(os.environ['VARJAX_DATA_DIR'])
                  if os.environ.get('VARJAX_DATA_DIR') else None)


def load_experiment(name='airbench', variant='smoke'):
  return config_files.load_config(f"{REPO / 'experiments' / name}.py:{variant}")


def experiment_data_config(**overrides):
  """The smoke experiment's data section with ``overrides``: every data key the product
  reads is there with its default, so a new key cannot go missing in a test's config."""
  c = load_experiment().data
  c.unlock()
  c.update(overrides)
  return c


def tiny_config(**overrides):
  """A smoke config shrunk further for unit tests; dotted keys override."""
  c = load_experiment('airbench', 'smoke')
  c.model.widths = (4, 8, 8)
  c.model.whiten_num_images = 32
  c.train.batch_size = 16
  c.train.epochs = 1.5
  c.lookahead.every_steps = 2
  c.eval.tta_level = 2
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def random_images(n, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (n,)).astype(np.int32)
  return images, labels


needs_shared_data = pytest.mark.skipif(
    CIFAR10_BINARY is None or not (CIFAR10_BINARY / 'data_batch_1.bin').exists(),
    reason='needs the CIFAR-10 binary files: set VARJAX_DATA_DIR to the directory of '
           'data_batch_1.bin ... data_batch_5.bin')
