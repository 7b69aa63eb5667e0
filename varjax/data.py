"""CIFAR-10 on the host: loading, checking and splitting, before it goes to the device.

Two sources, chosen by ``config.data.source``:

* ``tfds``: ``tfds.data_source('cifar10')`` (ArrayRecord, no TensorFlow needed to
  read). Needs a prepared TFDS data dir or internet.
* ``cifar10_binary``: a directory in the official binary format
  (``data_batch_{1..5}.bin``, ``test_batch.bin``; records of 1 label byte and
  3,072 pixel bytes, planes R, G, B).

``test_split='holdout'`` evaluates on the last ``holdout_size`` training images and
trains on the rest: the offline copy lacks ``test_batch.bin``.

Example:
  >>> ds = load(config.data)            # doctest: +SKIP
  >>> ds.train_images.shape, ds.train_images.dtype
  ((40000, 32, 32, 3), dtype('uint8'))
"""

import dataclasses
import hashlib
import os

import numpy as np

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                   'horse', 'ship', 'truck')
# Normalisation of airbench (per channel, on [0, 1] pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

RECORD_BYTES = 1 + 32 * 32 * 3
TRAIN_FILES = tuple(f'data_batch_{i}.bin' for i in range(1, 6))
TEST_FILE = 'test_batch.bin'
# md5 of the original files (shared/data/README.md).
KNOWN_MD5 = {
    'data_batch_1.bin': '5dd7e06a14cb22eb9f671a540d1b7c25',
    'data_batch_2.bin': '5ea93a67294ea407fff1d09f752e9692',
    'data_batch_3.bin': '942cd6a4bcdd0dd3c604fbe906cb4421',
    'data_batch_4.bin': 'ae636b3ba5c66a11e91e8cb52e771fcb',
    'data_batch_5.bin': '53f37980c15c3d472c316c40844f3f0d',
    'test_batch.bin': '803d5f7f4d78ea53de84dbe85f74fb6d',
}


class DataError(ValueError):
  """Missing, malformed or inconsistent data; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images as uint8 NHWC, labels as int32, on the host."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  test_name: str
  num_classes: int = 10

  def __post_init__(self):
    for name in ('train', 'test'):
      images = getattr(self, f'{name}_images')
      labels = getattr(self, f'{name}_labels')
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f'{name} images must be uint8 (n, 32, 32, 3), got '
                        f'{images.dtype} {images.shape}')
      if labels.shape != (len(images),):
        raise DataError(f'{name} labels {labels.shape} do not match {len(images)} images')
      if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
        raise DataError(f'{name} labels outside [0, {self.num_classes})')


def decode_cifar10_records(raw, source='buffer'):
  """Decodes CIFAR-10 binary records into (uint8 NHWC images, int32 labels)."""
  if len(raw) % RECORD_BYTES:
    raise DataError(f'{source}: {len(raw)} bytes is not a whole number of '
                    f'{RECORD_BYTES}-byte CIFAR-10 records; the file is truncated '
                    'or not in the CIFAR-10 binary format.')
  records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_BYTES)
  labels = records[:, 0].astype(np.int32)
  if labels.size and labels.max() > 9:
    raise DataError(f'{source}: label byte {labels.max()} > 9; not a CIFAR-10 file.')
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_cifar10_binary_file(path, verify_checksum=True):
  """Reads one official CIFAR-10 binary file, checking size and (if known) md5."""
  name = os.path.basename(path)
  if not os.path.exists(path):
    raise DataError(f'Missing CIFAR-10 file {path}.')
  with open(path, 'rb') as f:
    raw = f.read()
  expected_bytes = 10_000 * RECORD_BYTES
  if verify_checksum and name in KNOWN_MD5 and len(raw) != expected_bytes:
    raise DataError(f'{path} has {len(raw)} bytes, expected {expected_bytes}: the file '
                    'is truncated or corrupt. Replace it with the original file.')
  if verify_checksum and name in KNOWN_MD5:
    digest = hashlib.md5(raw).hexdigest()
    if digest != KNOWN_MD5[name]:
      raise DataError(f'{path} has md5 {digest}, expected {KNOWN_MD5[name]}: the file '
                      'is corrupt or modified. Replace it with the original file '
                      '(or set --config.data.verify_checksums=False to skip the check).')
  return decode_cifar10_records(raw, source=path)


def load_cifar10_binary(directory, with_test=True, verify_checksums=True):
  """Returns (train_images, train_labels, test_images, test_labels) from a directory.

  The test arrays are None when ``with_test`` is False.
  """
  if not directory:
    raise DataError("data.source='cifar10_binary' needs --config.data.dir=DIR, the "
                    'directory that holds data_batch_1.bin ... data_batch_5.bin.')
  if not os.path.isdir(directory):
    raise DataError(f'CIFAR-10 directory {directory!r} does not exist '
                    f'(cwd {os.getcwd()}). Set --config.data.dir.')
  missing = [f for f in TRAIN_FILES if not os.path.exists(os.path.join(directory, f))]
  if missing:
    raise DataError(f'{directory} lacks the CIFAR-10 training files {missing}.')
  parts = [read_cifar10_binary_file(os.path.join(directory, f), verify_checksums)
           for f in TRAIN_FILES]
  train_images = np.concatenate([p[0] for p in parts])
  train_labels = np.concatenate([p[1] for p in parts])
  test_images = test_labels = None
  if with_test:
    test_path = os.path.join(directory, TEST_FILE)
    if not os.path.exists(test_path):
      raise DataError(
          f'{test_path} is missing, so there is no CIFAR-10 test set. Either add the '
          'original test_batch.bin, or evaluate on the last 10,000 training images '
          'with --config.data.test_split=holdout (train on the first 40,000).')
    test_images, test_labels = read_cifar10_binary_file(test_path, verify_checksums)
  return train_images, train_labels, test_images, test_labels


def _read_tfds_split(name, split, data_dir):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError('data.source=tfds needs tensorflow-datasets installed.') from e
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # tfds raises many types for a missing dataset
    raise DataError(
        f'tensorflow-datasets could not provide {name}/{split} (data_dir={data_dir}): '
        f'{type(e).__name__}: {e}. Prepare it with internet access, point '
        '--config.data.dir (or TFDS_DATA_DIR) at a prepared data dir, or use '
        '--config.data.source=cifar10_binary --config.data.dir=DIR.') from e
  n = len(source)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  chunk = 1000
  for start in range(0, n, chunk):
    keys = list(range(start, min(n, start + chunk)))
    try:
      examples = source.__getitems__(keys)
    except TypeError:  # some data sources (and tfds' mocks) read one key at a time
      examples = [source[k] for k in keys]
    for k, ex in zip(keys, examples):
      images[k] = ex['image']
      labels[k] = ex['label']
  return images, labels


def load(data_config):
  """Loads the train and evaluation sets described by ``config.data``."""
  source = data_config.source
  holdout = data_config.test_split == 'holdout'
  if data_config.test_split not in ('test', 'holdout'):
    raise DataError(f"data.test_split must be 'test' or 'holdout', got "
                    f'{data_config.test_split!r}.')
  if source == 'cifar10_binary':
    train_images, train_labels, test_images, test_labels = load_cifar10_binary(
        data_config.dir, with_test=not holdout,
        verify_checksums=data_config.verify_checksums)
  elif source == 'tfds':
    train_images, train_labels = _read_tfds_split('cifar10', 'train', data_config.dir)
    test_images = test_labels = None
    if not holdout:
      test_images, test_labels = _read_tfds_split('cifar10', 'test', data_config.dir)
  else:
    raise DataError(f"data.source must be 'tfds' or 'cifar10_binary', got {source!r}.")

  test_name = 'test'
  if holdout:
    h = data_config.holdout_size
    if not 0 < h < len(train_images):
      raise DataError(f'data.holdout_size={h} must be in (0, {len(train_images)}).')
    test_images, test_labels = train_images[-h:], train_labels[-h:]
    train_images, train_labels = train_images[:-h], train_labels[:-h]
    test_name = f'holdout_last{h}'
  if data_config.train_size is not None:
    if not 0 < data_config.train_size <= len(train_images):
      raise DataError(f'data.train_size={data_config.train_size} must be in '
                      f'(0, {len(train_images)}].')
    train_images = train_images[:data_config.train_size]
    train_labels = train_labels[:data_config.train_size]
  return Dataset(train_images=train_images, train_labels=train_labels,
                 test_images=test_images, test_labels=test_labels, test_name=test_name)


def load_extra_test_set(spec, data_dir=None):
  """(name, images, labels) of one more evaluation set, for distribution shift.

  ``spec``: 'tfds:NAME[:SPLIT]' (e.g. 'tfds:cifar10_1', split 'test' by default;
  TFDS data_dir from ``data_dir``) or 'binary:PATH' (a file of CIFAR-10 binary
  records, or a directory holding test_batch.bin).
  """
  kind, _, rest = spec.partition(':')
  if kind == 'tfds' and rest:
    name, _, split = rest.partition(':')
    images, labels = _read_tfds_split(name, split or 'test', data_dir)
    return f'{name}_{split}' if split else name, images, labels
  if kind == 'binary' and rest:
    path = os.path.join(rest, TEST_FILE) if os.path.isdir(rest) else rest
    if not os.path.exists(path):
      raise DataError(f'Extra test set {spec!r}: {path} does not exist.')
    with open(path, 'rb') as f:
      images, labels = decode_cifar10_records(f.read(), source=path)
    name = os.path.splitext(os.path.basename(os.path.normpath(rest)))[0]
    return name, images, labels
  raise DataError(f"data.extra_test_sets entry {spec!r} must be 'tfds:NAME[:SPLIT]' or "
                  "'binary:PATH'.")
