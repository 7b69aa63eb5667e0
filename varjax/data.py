"""CIFAR-10 on the host: loading, checking and splitting, before it goes to the device.

Where the data comes from (``config.data.source='auto'``, the default), first
that applies:

1. ``--config.data.dir=DIR``: the official binary files (``data_batch_{1..5}.bin``,
   ``test_batch.bin``; records of 1 label byte and 3,072 pixel bytes, planes R,
   G, B) if DIR holds them, else DIR is a TFDS data dir;
2. the environment variable ``VARJAX_DATA_DIR``: a directory of the binary files;
3. tensorflow-datasets, which downloads and prepares ``cifar10`` on first use
   (170 MB, once; into ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

``source='cifar10_binary'`` or ``'tfds'`` forces one kind. TFDS data is read as
ArrayRecord through ``tfds`` data sources, in the original file order (tfds
stores examples shuffled; their ``id`` restores the order), so both sources give
the same arrays.

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
import socket
import urllib.parse

import numpy as np
from absl import logging

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                   'horse', 'ship', 'truck')
# Normalisation of airbench (per channel, on [0, 1] pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# The environment variable naming a directory of CIFAR-10 binary files.
DATA_DIR_ENV = 'VARJAX_DATA_DIR'
SOURCES = ('auto', 'cifar10_binary', 'tfds')

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
  if not os.path.isdir(directory):
    raise DataError(f'CIFAR-10 directory {directory!r} does not exist (cwd {os.getcwd()}).')
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


def resolve_source(data_config, environ=None):
  """(kind, directory, origin): where ``config.data`` takes CIFAR-10 from.

  ``kind`` is 'cifar10_binary' or 'tfds'; ``directory`` the binary files' or the
  TFDS data dir (None: TFDS's default); ``origin`` says which setting chose it.
  """
  environ = os.environ if environ is None else environ
  source, directory = data_config.source, data_config.dir
  env_dir = environ.get(DATA_DIR_ENV) or None
  if source not in SOURCES:
    raise DataError(f'data.source must be one of {SOURCES}, got {source!r}.')
  if source == 'tfds':
    return 'tfds', directory, '--config.data.source=tfds'
  if directory:
    if source == 'auto' and not os.path.isdir(directory):
      raise DataError(f'--config.data.dir={directory!r} does not exist (cwd {os.getcwd()}).')
    if source == 'cifar10_binary' or os.path.exists(os.path.join(directory, TRAIN_FILES[0])):
      return 'cifar10_binary', directory, '--config.data.dir'
    return 'tfds', directory, '--config.data.dir (a TFDS data dir: no data_batch_1.bin in it)'
  if env_dir:
    if not os.path.isdir(env_dir):
      raise DataError(f'{DATA_DIR_ENV}={env_dir!r} is not a directory; point it at the '
                      'directory of data_batch_1.bin ... or unset it.')
    return 'cifar10_binary', env_dir, DATA_DIR_ENV
  if source == 'cifar10_binary':
    raise DataError(f"data.source='cifar10_binary' needs the directory of data_batch_1.bin ... "
                    f'data_batch_5.bin in --config.data.dir or {DATA_DIR_ENV}.')
  return 'tfds', None, 'neither --config.data.dir nor VARJAX_DATA_DIR is set'


def no_data_message(cause):
  """The one-line error when no way to CIFAR-10 worked: names all three."""
  return (f'No CIFAR-10 data ({cause}). '
          'Give it one of three ways: --config.data.dir=DIR (the CIFAR-10 binary files '
          'data_batch_1.bin ... or a prepared TFDS data dir); the environment variable '
          f'{DATA_DIR_ENV}=DIR (the binary files); or internet access, for '
          'tensorflow-datasets to download and prepare cifar10 once (170 MB, into '
          'TFDS_DATA_DIR or ~/tensorflow_datasets).')


def _one_line(error, limit=400):
  text = ' '.join(f'{type(error).__name__}: {error}'.split())
  return text if len(text) <= limit else text[:limit] + ' ...'


def _check_download_hosts(builder):
  """Fails at once when none of the dataset's download hosts resolves.

  Offline, tfds would retry each download with backoff for minutes before failing.
  Behind a proxy the client does not resolve names itself, so nothing is checked.
  """
  if any(os.environ.get(v) for v in ('https_proxy', 'HTTPS_PROXY', 'http_proxy',
                                     'HTTP_PROXY', 'all_proxy', 'ALL_PROXY')):
    return
  hosts = sorted({urllib.parse.urlparse(url).hostname for url in (builder.url_infos or {})}
                 - {None})
  for host in hosts:
    try:
      socket.getaddrinfo(host, None)
      return
    except OSError:
      continue
  if hosts:
    raise DataError(f'tensorflow-datasets cannot download {builder.name}: none of its '
                    f'download hosts ({", ".join(hosts)}) resolves (no internet?)')


def _read_tfds_split(name, split, data_dir):
  """(images, labels) of ``name/split``, downloaded and prepared first if needed."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError('data.source=tfds needs tensorflow-datasets installed.') from e
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
    if not builder.is_prepared():
      _check_download_hosts(builder)
      logging.info('Downloading and preparing %s into %s (once).', name, where)
      # A prepared copy on GCS is TFRecord, which has no random access: build here.
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    source = builder.as_data_source(split=split)
  except DataError:
    raise
  except Exception as e:  # tfds raises many types for a missing or unreadable dataset
    raise DataError(f'tensorflow-datasets could not provide {name}/{split} from {where}: '
                    f'{_one_line(e)}') from e
  n = len(source)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  ids = []
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
      ids.append(ex.get('id'))
  if n and all(isinstance(i, (bytes, str)) for i in ids):
    # cifar10's ids are 'train_00000' ... in the original order.
    order = np.argsort(np.array([i.decode() if isinstance(i, bytes) else i for i in ids]),
                       kind='stable')
    images, labels = images[order], labels[order]
  return images, labels


def num_classes(data_config):
  """K of the task: the CIFAR-10 classes kept by ``data.classes`` (all 10 when empty)."""
  return len(data_config.classes) or len(CIFAR10_CLASSES)


def select_classes(images, labels, classes):
  """The images of the given CIFAR-10 classes, labels renumbered 0.. in that order.

  Example:
    >>> x, y = select_classes(images, labels, (3, 5))   # cat -> 0, dog -> 1  # doctest: +SKIP
  """
  if not classes:
    return images, labels
  keep = np.isin(labels, classes)
  relabel = np.full(len(CIFAR10_CLASSES), -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)
  return images[keep], relabel[labels[keep]]


def load(data_config, environ=None):
  """Loads the train and evaluation sets described by ``config.data``.

  Order of selection: the holdout split (last ``holdout_size`` training images),
  then ``data.classes``, then the first ``train_size`` of what remains.
  """
  holdout = data_config.test_split == 'holdout'
  if data_config.test_split not in ('test', 'holdout'):
    raise DataError(f"data.test_split must be 'test' or 'holdout', got "
                    f'{data_config.test_split!r}.')
  kind, directory, origin = resolve_source(data_config, environ)
  logging.info('CIFAR-10: %s in %s (%s)', 'binary files' if kind == 'cifar10_binary' else 'tfds',
               directory or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets', origin)
  if kind == 'cifar10_binary':
    train_images, train_labels, test_images, test_labels = load_cifar10_binary(
        directory, with_test=not holdout, verify_checksums=data_config.verify_checksums)
  else:
    try:
      train_images, train_labels = _read_tfds_split('cifar10', 'train', directory)
      test_images = test_labels = None
      if not holdout:
        test_images, test_labels = _read_tfds_split('cifar10', 'test', directory)
    except DataError as e:
      if data_config.source == 'auto' and not directory:
        raise DataError(no_data_message(e)) from e
      raise

  test_name = 'test'
  if holdout:
    h = data_config.holdout_size
    if not 0 < h < len(train_images):
      raise DataError(f'data.holdout_size={h} must be in (0, {len(train_images)}).')
    test_images, test_labels = train_images[-h:], train_labels[-h:]
    train_images, train_labels = train_images[:-h], train_labels[:-h]
    test_name = f'holdout_last{h}'
  classes = tuple(data_config.classes)
  train_images, train_labels = select_classes(train_images, train_labels, classes)
  test_images, test_labels = select_classes(test_images, test_labels, classes)
  if classes:
    test_name += '_classes' + '-'.join(str(c) for c in classes)
  if data_config.train_size is not None:
    if not 0 < data_config.train_size <= len(train_images):
      raise DataError(f'data.train_size={data_config.train_size} must be in '
                      f'(0, {len(train_images)}].')
    train_images = train_images[:data_config.train_size]
    train_labels = train_labels[:data_config.train_size]
  return Dataset(train_images=train_images, train_labels=train_labels,
                 test_images=test_images, test_labels=test_labels, test_name=test_name,
                 num_classes=num_classes(data_config))


def load_extra_test_set(spec, data_config=None):
  """(name, images, labels) of one more evaluation set, for distribution shift.

  ``spec``: 'tfds:NAME[:SPLIT]' (e.g. 'tfds:cifar10_1' or 'tfds:cifar10_1/v6',
  split 'test' by default; the TFDS data dir is the one ``data_config``
  resolves to, else TFDS's default) or 'binary:PATH' (a file of CIFAR-10 binary
  records, or a directory holding test_batch.bin). With ``data.classes`` the
  set keeps those classes, renumbered like the training labels.
  """
  name, images, labels = _load_extra_test_set(spec, data_config)
  if data_config is not None:
    images, labels = select_classes(images, labels, tuple(data_config.classes))
  return name, images, labels


def _load_extra_test_set(spec, data_config):
  kind, _, rest = spec.partition(':')
  if kind == 'tfds' and rest:
    name, _, split = rest.partition(':')
    data_dir = None
    if data_config is not None:
      source_kind, directory, _ = resolve_source(data_config)
      data_dir = directory if source_kind == 'tfds' else None
    images, labels = _read_tfds_split(name, split or 'test', data_dir)
    name = name.replace('/', '_')
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
