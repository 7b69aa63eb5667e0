"""CIFAR-10 itself: the binary format, its sizes, and the splits a config asks for.

The official binary files hold records of 1 label byte and 3,072 pixel bytes
(planes R, G, B). A config's split (``config.data``) is applied in this order:
the holdout (the last ``holdout_size`` training images become the evaluation
set), then ``classes`` (relabelled 0.. in the given order), then the first
``train_size`` of what remains. ``split`` does it to arrays; ``split_sizes``
gives the sizes it yields without the data (compile-only plans, config checks).

Example:
  >>> split_sizes(ConfigDict({'test_split': 'test', 'holdout_size': 10_000,
  ...                         'train_size': None, 'classes': (3, 5)}))   # doctest: +SKIP
  (10000, 2000)
"""

import dataclasses
import hashlib
import os

import numpy as np

from varjax.errors import DataError

CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck')
TRAIN_IMAGES = 50_000  # 5,000 of each class
TEST_IMAGES = 10_000  # 1,000 of each class
SPLITS = ('test', 'holdout')

RECORD_BYTES = 1 + 32 * 32 * 3
TRAIN_FILES = tuple(f'data_batch_{i}.bin' for i in range(1, 6))
TEST_FILE = 'test_batch.bin'
# md5 of the original files (the archive's published checksums).
KNOWN_MD5 = {
    'data_batch_1.bin': '5dd7e06a14cb22eb9f671a540d1b7c25',
    'data_batch_2.bin': '5ea93a67294ea407fff1d09f752e9692',
    'data_batch_3.bin': '942cd6a4bcdd0dd3c604fbe906cb4421',
    'data_batch_4.bin': 'ae636b3ba5c66a11e91e8cb52e771fcb',
    'data_batch_5.bin': '53f37980c15c3d472c316c40844f3f0d',
    'test_batch.bin': '803d5f7f4d78ea53de84dbe85f74fb6d',
}


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


def decode_records(raw, source='buffer'):
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


def read_binary_file(path, verify_checksum=True):
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
  return decode_records(raw, source=path)


def load_binary(directory, with_test=True, verify_checksums=True):
  """Returns (train_images, train_labels, test_images, test_labels) from a directory.

  The test arrays are None when ``with_test`` is False.
  """
  if not os.path.isdir(directory):
    raise DataError(f'CIFAR-10 directory {directory!r} does not exist (cwd {os.getcwd()}).')
  missing = [f for f in TRAIN_FILES if not os.path.exists(os.path.join(directory, f))]
  if missing:
    raise DataError(f'{directory} lacks the CIFAR-10 training files {missing}.')
  parts = [read_binary_file(os.path.join(directory, f), verify_checksums) for f in TRAIN_FILES]
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
    test_images, test_labels = read_binary_file(test_path, verify_checksums)
  return train_images, train_labels, test_images, test_labels


def num_classes(data_config):
  """K of the task: the CIFAR-10 classes kept by ``data.classes`` (all 10 when empty)."""
  return len(data_config.classes) or len(CLASSES)


def select_classes(images, labels, classes):
  """The images of the given CIFAR-10 classes, labels renumbered 0.. in that order.

  Example:
    >>> x, y = select_classes(images, labels, (3, 5))   # cat -> 0, dog -> 1  # doctest: +SKIP
  """
  if not classes:
    return images, labels
  keep = np.isin(labels, classes)
  relabel = np.full(len(CLASSES), -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)
  return images[keep], relabel[labels[keep]]


def split(data_config, train_images, train_labels, test_images=None, test_labels=None):
  """The config's (train images, train labels, eval images, eval labels, eval set name).

  ``test_*``: the official test set (unused, and may be None, for the holdout split).
  """
  test_name = 'test'
  if data_config.test_split == 'holdout':
    h = data_config.holdout_size
    test_images, test_labels = train_images[-h:], train_labels[-h:]
    train_images, train_labels = train_images[:-h], train_labels[:-h]
    test_name = f'holdout_last{h}'
  classes = tuple(data_config.classes)
  train_images, train_labels = select_classes(train_images, train_labels, classes)
  test_images, test_labels = select_classes(test_images, test_labels, classes)
  if classes:
    test_name += '_classes' + '-'.join(str(c) for c in classes)
  if data_config.train_size is not None:
    if data_config.train_size > len(train_images):
      raise DataError(f'data.train_size={data_config.train_size} exceeds the '
                      f'{len(train_images)} training images of the split.')
    train_images = train_images[:data_config.train_size]
    train_labels = train_labels[:data_config.train_size]
  return train_images, train_labels, test_images, test_labels, test_name


def split_sizes(data_config):
  """(training images, evaluation images) of the config's split, without the data.

  Exact for the official test split (5,000 training and 1,000 test images of
  each class) and for a holdout of all classes. A holdout of some classes holds
  however many of them the last ``holdout_size`` images happen to have: the
  expected share, ``holdout_size * k / 10``, is given, and the training side
  gets the rest of those classes' 5,000 images each.
  """
  num_train, num_test = _before_train_size(data_config)
  if data_config.train_size is not None:
    num_train = min(num_train, data_config.train_size)
  return num_train, num_test


def available_train_images(data_config):
  """Training images of the split before ``data.train_size`` cuts them (as ``split_sizes``)."""
  return _before_train_size(data_config)[0]


def _before_train_size(data_config):
  share = len(data_config.classes) / len(CLASSES) if len(data_config.classes) else 1.0
  num_train, num_test = round(TRAIN_IMAGES * share), round(TEST_IMAGES * share)
  if data_config.test_split == 'holdout':
    num_test = round(data_config.holdout_size * share)
    num_train -= num_test
  return num_train, num_test
