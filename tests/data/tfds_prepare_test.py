"""tensorflow-datasets' real download_and_prepare, offline: archives served on 127.0.0.1.

The builders' URLs are pointed at a local HTTP server and the checksums of the
archives built here are registered for the test only; everything else (download,
checksum validation, extraction, example generation, ArrayRecord writing, reading
back through varjax.data) is tfds's and varjax's own code.
"""

import contextlib
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest

from varjax import data
from varjax.data import cifar10

from conftest import CIFAR10_BINARY, experiment_data_config, needs_shared_data

tfds = pytest.importorskip('tensorflow_datasets')
from tensorflow_datasets.core.download import checksums  # noqa: E402
from tensorflow_datasets.image_classification import cifar  # noqa: E402
from tensorflow_datasets.image_classification import cifar10_1  # noqa: E402

PROXY_VARIABLES = ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'all_proxy',
                   'ALL_PROXY')


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  requests = []

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args

  def do_GET(self):
    self.requests.append(self.path)
    super().do_GET()


@contextlib.contextmanager
def serve(directory):
  """(base URL, list of requested paths) of an HTTP server of ``directory`` on 127.0.0.1."""
  handler = type('Handler', (_QuietHandler,), {'requests': []})
  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(handler, directory=str(directory)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_port}/', handler.requests
  finally:
    server.shutdown()
    server.server_close()


def url_info(path):
  return checksums.UrlInfo(size=path.stat().st_size,
                           checksum=hashlib.sha256(path.read_bytes()).hexdigest(),
                           filename=path.name)


def register(monkeypatch, builder_cls, urls_to_files):
  """Registers the checksums of the files served, on top of the builder's real ones."""
  real = builder_cls.url_infos  # tfds's own checksums.tsv, read as for a user
  monkeypatch.setattr(builder_cls, 'url_infos',
                      {**real, **{url: url_info(p) for url, p in urls_to_files.items()}})


def tfds_config(tfds_dir, **kw):
  return experiment_data_config(**{**dict(source='auto', dir=str(tfds_dir), test_split='test',
                                          holdout_size=10, train_size=None,
                                          verify_checksums=True), **kw})


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No proxy (the server is local) and an empty TFDS data dir."""
  for var in PROXY_VARIABLES:
    monkeypatch.delenv(var, raising=False)
  (tmp_path / 'tfds').mkdir()
  return tmp_path / 'tfds'


def decode_reference(raw):
  """The binary format, decoded here independently: label byte, then R, G, B planes."""
  records = np.frombuffer(raw, np.uint8).reshape(-1, 1 + 3072)
  return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


@needs_shared_data
def test_tfds_prepares_cifar10_offline(tmp_path, monkeypatch, offline):
  train_raw = b''.join((CIFAR10_BINARY / f).read_bytes() for f in cifar10.TRAIN_FILES)
  # The real test_batch.bin is not offline: the test split here is the last 1,000
  # training records (only the training split is compared with the files).
  test_raw = train_raw[-1000 * cifar10.RECORD_BYTES:]
  served = tmp_path / 'served'
  served.mkdir()
  archive = served / 'cifar-10-binary.tar.gz'
  # Stored, not compressed: a valid .tar.gz that is quick to build and extract.
  with tarfile.open(archive, 'w:gz', compresslevel=0) as tar:  # the official layout
    for name, content in [*[(f, (CIFAR10_BINARY / f).read_bytes()) for f in cifar10.TRAIN_FILES],
                          (cifar10.TEST_FILE, test_raw),
                          ('batches.meta.txt', '\n'.join(cifar10.CLASSES).encode())]:
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))

  with serve(served) as (base, requests):
    url = base + archive.name
    register(monkeypatch, cifar.Cifar10, {url: archive})
    real_info = cifar.Cifar10._cifar_info
    monkeypatch.setattr(cifar.Cifar10, '_cifar_info',
                        property(lambda self: real_info.fget(self)._replace(url=url)))
    ds = data.load(tfds_config(offline), environ={})
  assert requests == ['/' + archive.name]  # downloaded once, over HTTP
  assert tfds.builder('cifar10', data_dir=str(offline)).is_prepared()

  want_images, want_labels = decode_reference(train_raw)
  assert ds.train_images.shape == (50_000, 32, 32, 3)
  np.testing.assert_array_equal(ds.train_labels, want_labels)
  np.testing.assert_array_equal(ds.train_images, want_images)
  test_images, test_labels = decode_reference(test_raw)
  np.testing.assert_array_equal(ds.test_images, test_images)
  np.testing.assert_array_equal(ds.test_labels, test_labels)


def test_tfds_prepares_cifar10_1_offline(tmp_path, monkeypatch, offline):
  """CIFAR-10.1 v6 as an extra test set; its images are not offline, so made up here."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 200).astype(np.int32)
  served = tmp_path / 'served'
  served.mkdir()
  np.save(served / 'cifar10.1_v6_data.npy', images)
  np.save(served / 'cifar10.1_v6_labels.npy', labels)
  with serve(served) as (base, requests):
    monkeypatch.setattr(cifar10_1, '_DL_URL_IMAGES', base + 'cifar10.1_{}_data.npy')
    monkeypatch.setattr(cifar10_1, '_DL_URL_LABELS', base + 'cifar10.1_{}_labels.npy')
    register(monkeypatch, cifar10_1.Cifar10_1,
             {base + p.name: p for p in served.iterdir()})
    name, got_images, got_labels = data.load_extra_test_set('tfds:cifar10_1/v6',
                                                            tfds_config(offline))
  assert name == 'cifar10_1_v6' and len(requests) == 2
  # tfds stores the examples shuffled and CIFAR-10.1 has no ids: compare as sets.
  key = lambda ims, ls: sorted(zip(ls.tolist(), (im.tobytes() for im in ims)))
  assert key(got_images, got_labels) == key(images, labels)
