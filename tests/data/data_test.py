"""Data loading: the binary format, its checks, the holdout split, and the tfds path."""

import hashlib
import os

import numpy as np
import pytest

from varjax import data
from varjax import errors
from varjax.data import cifar10
from varjax.data import sources

from conftest import CIFAR10_BINARY, experiment_data_config, needs_shared_data


def encode_records(images, labels):
  """CIFAR-10 binary records written independently of the decoder: label, R, G, B planes."""
  out = bytearray()
  for image, label in zip(images, labels):
    out.append(int(label))
    out += image.transpose(2, 0, 1).tobytes()
  return bytes(out)


def data_config(**kw):
  return experiment_data_config(**{**dict(source='cifar10_binary', dir=None, test_split='test',
                                          holdout_size=10, train_size=None,
                                          verify_checksums=False), **kw})


def write_dir(path, per_file=6, with_test=True):
  rng = np.random.default_rng(0)
  for name in cifar10.TRAIN_FILES + ((cifar10.TEST_FILE,) if with_test else ()):
    images = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, per_file)
    (path / name).write_bytes(encode_records(images, labels))
  return path


def test_decode_records_roundtrip():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  labels = np.array([0, 9, 4])
  got_images, got_labels = cifar10.decode_records(encode_records(images, labels))
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)


def test_truncated_buffer_is_rejected():
  with pytest.raises(errors.DataError, match='not a whole number'):
    cifar10.decode_records(b'\x00' * (cifar10.RECORD_BYTES + 5))


def test_load_binary_with_test_file(tmp_path):
  ds = data.load(data_config(dir=str(write_dir(tmp_path))))
  assert ds.train_images.shape == (30, 32, 32, 3) and ds.test_images.shape == (6, 32, 32, 3)
  assert ds.test_name == 'test'


def test_missing_test_file_says_how_to_proceed(tmp_path):
  with pytest.raises(errors.DataError, match='test_split=holdout'):
    data.load(data_config(dir=str(write_dir(tmp_path, with_test=False))))


def test_holdout_is_the_last_training_images(tmp_path):
  d = write_dir(tmp_path, with_test=False)
  full = cifar10.load_binary(str(d), with_test=False, verify_checksums=False)
  ds = data.load(data_config(dir=str(d), test_split='holdout', holdout_size=10, train_size=8))
  np.testing.assert_array_equal(ds.test_images, full[0][-10:])
  np.testing.assert_array_equal(ds.train_images, full[0][:8])


def test_missing_directory_and_files(tmp_path):
  with pytest.raises(errors.DataError, match='does not exist'):
    data.load(data_config(dir=str(tmp_path / 'nope')))
  with pytest.raises(errors.DataError, match='data_batch_1.bin'):
    data.load(data_config(dir=str(tmp_path)))
  with pytest.raises(errors.DataError, match='data.dir'):
    data.load(data_config(dir=None), environ={})


def test_wrong_size_of_a_known_file(tmp_path):
  write_dir(tmp_path)
  with pytest.raises(errors.DataError, match='truncated or corrupt'):
    data.load(data_config(dir=str(tmp_path), verify_checksums=True))


def test_wrong_checksum_of_a_known_file(tmp_path):
  path = tmp_path / 'data_batch_1.bin'
  path.write_bytes(bytes(10_000 * cifar10.RECORD_BYTES))
  with pytest.raises(errors.DataError, match='md5'):
    cifar10.read_binary_file(str(path), verify_checksum=True)


@needs_shared_data
def test_shared_files_match_published_checksums():
  for name in cifar10.TRAIN_FILES:
    digest = hashlib.md5((CIFAR10_BINARY / name).read_bytes()).hexdigest()
    assert digest == cifar10.KNOWN_MD5[name]


@needs_shared_data
def test_shared_holdout_split():
  ds = data.load(data_config(dir=str(CIFAR10_BINARY), test_split='holdout',
                             holdout_size=10_000, verify_checksums=True))
  assert len(ds.train_images) == 40_000 and len(ds.test_images) == 10_000
  assert np.bincount(ds.test_labels, minlength=10).min() > 900  # roughly balanced


def test_split_sizes_of_the_official_splits_are_exact():
  # 5,000 training and 1,000 test images of each class.
  assert data.split_sizes(data_config(test_split='test')) == (50_000, 10_000)
  assert data.split_sizes(data_config(test_split='test', classes=(3, 5))) == (10_000, 2_000)
  assert data.split_sizes(data_config(test_split='holdout', holdout_size=10_000)) == (
      40_000, 10_000)
  assert data.split_sizes(data_config(test_split='test', train_size=123)) == (123, 10_000)


@needs_shared_data
@pytest.mark.parametrize('classes', [(), (3, 5), (0, 1, 2)])
def test_split_sizes_match_the_loaded_holdout(classes):
  config = data_config(dir=str(CIFAR10_BINARY), test_split='holdout', holdout_size=10_000,
                       train_size=None, classes=classes)
  ds = data.load(config)
  num_train, num_test = data.split_sizes(config)
  # A holdout of some classes holds the expected share of them, not exactly it.
  assert abs(num_test - len(ds.test_labels)) <= 0.03 * len(ds.test_labels)
  assert abs(num_train - len(ds.train_labels)) <= 0.03 * len(ds.test_labels)
  if not classes:
    assert (num_train, num_test) == (len(ds.train_labels), len(ds.test_labels))


def mock_prepared_tfds(monkeypatch, num_examples):
  """tfds' mock data, standing in for a dataset already prepared (no download)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True)
  return tfds.testing.mock_data(num_examples=num_examples)


def test_tfds_source_under_mock_data(monkeypatch):
  with mock_prepared_tfds(monkeypatch, 12):
    ds = data.load(data_config(source='tfds', test_split='test'))
  assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_labels.shape == (12,) and ds.test_name == 'test'
  assert ds.train_labels.max() < 10


def test_sources_in_order_config_dir_then_environment_then_tfds(tmp_path):
  binary, tfds_dir = tmp_path / 'binary', tmp_path / 'tfds'
  binary.mkdir()
  tfds_dir.mkdir()
  write_dir(binary)
  env = {data.DATA_DIR_ENV: str(binary)}
  resolve = lambda environ, **kw: sources.resolve_source(data_config(source='auto', **kw),
                                                      environ)[:2]
  assert resolve(env, dir=str(binary)) == ('cifar10_binary', str(binary))
  assert resolve(env, dir=str(tfds_dir)) == ('tfds', str(tfds_dir))  # the config wins
  assert resolve(env) == ('cifar10_binary', str(binary))
  assert resolve({}) == ('tfds', None)
  # Forcing a kind: the binary files still come from the config or the environment.
  assert sources.resolve_source(data_config(source='cifar10_binary'), env)[:2] == (
      'cifar10_binary', str(binary))
  assert sources.resolve_source(data_config(source='tfds', dir=str(binary)), env)[:2] == (
      'tfds', str(binary))


def test_a_missing_directory_is_named_not_downloaded_into(tmp_path):
  with pytest.raises(errors.DataError, match='nowhere.*does not exist'):
    sources.resolve_source(data_config(source='auto', dir=str(tmp_path / 'nowhere')), {})
  with pytest.raises(errors.DataError, match='VARJAX_DATA_DIR=.*gone'):
    sources.resolve_source(data_config(source='auto'), {data.DATA_DIR_ENV: str(tmp_path / 'gone')})
  with pytest.raises(errors.DataError, match='data.dir or VARJAX_DATA_DIR'):
    sources.resolve_source(data_config(source='cifar10_binary'), {})


def test_no_data_at_all_names_the_three_ways_in_one_line(monkeypatch):
  def offline(name, split, data_dir):
    raise errors.DataError(f'tensorflow-datasets cannot download {name}: no internet')

  monkeypatch.setattr(sources, '_read_tfds_split', offline)
  with pytest.raises(errors.DataError) as e:
    data.load(data_config(source='auto', test_split='holdout'), environ={})
  message = str(e.value)
  assert '\n' not in message and 'no internet' in message
  for way in ('--config.data.dir=DIR', 'VARJAX_DATA_DIR=DIR', 'internet access'):
    assert way in message, way


def test_offline_download_fails_at_once_unless_a_proxy_is_set(monkeypatch):
  class Builder:
    name = 'cifar10'
    url_infos = {'https://no-such-host.invalid/cifar-10-binary.tar.gz': None}

  for var in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'all_proxy',
              'ALL_PROXY'):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(errors.DataError, match=r'no-such-host.invalid\) resolves'):
    sources._check_download_hosts(Builder())
  Builder.url_infos['http://127.0.0.1:1/x.tar.gz'] = None  # one host that resolves is enough
  sources._check_download_hosts(Builder())
  monkeypatch.setenv('HTTPS_PROXY', 'http://proxy.invalid:3128')
  del Builder.url_infos['http://127.0.0.1:1/x.tar.gz']
  sources._check_download_hosts(Builder())  # the proxy resolves names, not this process


def test_extra_test_set_from_tfds_under_mock_data(monkeypatch):
  with mock_prepared_tfds(monkeypatch, 7):
    name, images, labels = data.load_extra_test_set('tfds:cifar10_1')
  assert name == 'cifar10_1' and images.shape == (7, 32, 32, 3) and labels.shape == (7,)


def test_extra_test_set_from_binary_records(tmp_path):
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 5)
  path = tmp_path / 'shifted.bin'
  path.write_bytes(encode_records(images, labels))
  name, got_images, got_labels = data.load_extra_test_set(f'binary:{path}')
  assert name == 'shifted'
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)
  with pytest.raises(errors.DataError, match='does not exist'):
    data.load_extra_test_set(f'binary:{tmp_path / "nope.bin"}')


def test_classes_keep_the_chosen_classes_renumbered_in_their_order(tmp_path):
  d = write_dir(tmp_path, per_file=40, with_test=False)
  images, labels, _, _ = cifar10.load_binary(str(d), with_test=False, verify_checksums=False)
  ds = data.load(data_config(dir=str(d), test_split='holdout', holdout_size=50, train_size=12,
                             classes=(5, 3)))
  assert ds.num_classes == 2 and ds.test_name == 'holdout_last50_classes5-3'
  for part, (x, y) in (('test', (images[-50:], labels[-50:])), ('train', (images[:-50], labels[:-50]))):
    keep = [i for i in range(len(y)) if y[i] in (5, 3)]
    want_x, want_y = x[keep], np.array([0 if y[i] == 5 else 1 for i in keep])
    if part == 'train':
      want_x, want_y = want_x[:12], want_y[:12]
    np.testing.assert_array_equal(getattr(ds, f'{part}_images'), want_x)
    np.testing.assert_array_equal(getattr(ds, f'{part}_labels'), want_y)
