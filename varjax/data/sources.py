"""Where CIFAR-10 comes from: a directory of the binary files, or tensorflow-datasets.

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

``load`` applies the config's split (``cifar10.split``): ``test_split='holdout'``
evaluates on the last ``holdout_size`` training images and trains on the rest.

Example:
  >>> ds = load(config.data)            # doctest: +SKIP
  >>> ds.train_images.shape, ds.train_images.dtype
  ((40000, 32, 32, 3), dtype('uint8'))
"""

import os
import socket
import urllib.parse

import numpy as np
from absl import logging

from varjax import errors
from varjax.data import cifar10
from varjax.errors import DataError

# The environment variable naming a directory of CIFAR-10 binary files.
DATA_DIR_ENV = 'VARJAX_DATA_DIR'
SOURCES = ('auto', 'cifar10_binary', 'tfds')


def resolve_source(data_config, environ=None):
  """(kind, directory, origin): where ``config.data`` takes CIFAR-10 from.

  ``kind`` is 'cifar10_binary' or 'tfds'; ``directory`` the binary files' or the
  TFDS data dir (None: TFDS's default); ``origin`` says which setting chose it.
  """
  environ = os.environ if environ is None else environ
  source, directory = data_config.source, data_config.dir
  env_dir = environ.get(DATA_DIR_ENV) or None
  if source == 'tfds':
    return 'tfds', directory, '--config.data.source=tfds'
  if directory:
    if source == 'auto' and not os.path.isdir(directory):
      raise DataError(f'--config.data.dir={directory!r} does not exist (cwd {os.getcwd()}).')
    binary = os.path.exists(os.path.join(directory, cifar10.TRAIN_FILES[0]))
    if source == 'cifar10_binary' or binary:
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
                    f'{errors.describe(e)}') from e
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


def load(data_config, environ=None):
  """The training and evaluation sets of ``config.data`` (``cifar10.split`` of the source's arrays)."""
  holdout = data_config.test_split == 'holdout'
  kind, directory, origin = resolve_source(data_config, environ)
  logging.info('CIFAR-10: %s in %s (%s)', 'binary files' if kind == 'cifar10_binary' else 'tfds',
               directory or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets', origin)
  if kind == 'cifar10_binary':
    arrays = cifar10.load_binary(directory, with_test=not holdout,
                                 verify_checksums=data_config.verify_checksums)
  else:
    try:
      arrays = _read_tfds_split('cifar10', 'train', directory) + (
          (None, None) if holdout else _read_tfds_split('cifar10', 'test', directory))
    except DataError as e:
      if data_config.source == 'auto' and not directory:
        raise DataError(no_data_message(e)) from e
      raise
  train_images, train_labels, test_images, test_labels, test_name = cifar10.split(
      data_config, *arrays)
  return cifar10.Dataset(train_images=train_images, train_labels=train_labels,
                         test_images=test_images, test_labels=test_labels, test_name=test_name,
                         num_classes=cifar10.num_classes(data_config))


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
    images, labels = cifar10.select_classes(images, labels, tuple(data_config.classes))
  return name, images, labels


def parse_extra_test_set(spec):
  """(kind, rest) of a ``data.extra_test_sets`` entry, or None when it is malformed.

  >>> parse_extra_test_set('tfds:cifar10_1')
  ('tfds', 'cifar10_1')
  """
  kind, _, rest = spec.partition(':') if isinstance(spec, str) else ('', '', '')
  return (kind, rest) if kind in ('tfds', 'binary') and rest else None


def _load_extra_test_set(spec, data_config):
  kind, rest = parse_extra_test_set(spec)
  if kind == 'tfds':
    name, _, split = rest.partition(':')
    data_dir = None
    if data_config is not None:
      source_kind, directory, _ = resolve_source(data_config)
      data_dir = directory if source_kind == 'tfds' else None
    images, labels = _read_tfds_split(name, split or 'test', data_dir)
    name = name.replace('/', '_')
    return f'{name}_{split}' if split else name, images, labels
  path = os.path.join(rest, cifar10.TEST_FILE) if os.path.isdir(rest) else rest
  if not os.path.exists(path):
    raise DataError(f'Extra test set {spec!r}: {path} does not exist.')
  with open(path, 'rb') as f:
    images, labels = cifar10.decode_records(f.read(), source=path)
  name = os.path.splitext(os.path.basename(os.path.normpath(rest)))[0]
  return name, images, labels
