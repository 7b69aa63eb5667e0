"""Metric writers: JSON lines (for scripts) and TensorBoard event files (for eyes).

TensorBoard's format is written directly (TFRecord framing around Event
protos, a few dozen lines) because the stack has no TensorFlow.

Example:
  >>> w = MetricWriter('/tmp/run')                      # doctest: +SKIP
  >>> w.write(step=100, epoch=1, train_loss=1.2)        # doctest: +SKIP
  >>> w.close()                                         # doctest: +SKIP
"""

import json
import math
import os
import socket
import struct
import time

import numpy as np

METRICS_FILE = 'metrics.jsonl'


def _crc32c_table():
  poly = 0x82F63B78
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord framing requires."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
  return _varint((number << 3) | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars=None, file_version=None) -> bytes:
  """Serialises a tensorflow.Event proto with simple_value scalars."""
  out = _field(1, 1) + struct.pack('<d', wall_time) + _field(2, 0) + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    summary = b''
    for tag, value in scalars.items():
      v = _length_delimited(1, tag.encode()) + _field(2, 5) + struct.pack('<f', value)
      summary += _length_delimited(1, v)
    out += _length_delimited(5, summary)
  return out


def tfrecord(payload: bytes) -> bytes:
  length = struct.pack('<Q', len(payload))
  return (length + struct.pack('<I', masked_crc32c(length)) + payload
          + struct.pack('<I', masked_crc32c(payload)))


class TensorBoardWriter:
  """Appends scalar summaries to an events.out.tfevents.* file in ``logdir``."""

  def __init__(self, logdir):
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')
    self._file.write(tfrecord(encode_event(time.time(), file_version='brain.Event:2')))

  def write(self, step, scalars):
    finite = {k: float(v) for k, v in scalars.items() if math.isfinite(float(v))}
    self._file.write(tfrecord(encode_event(time.time(), step, finite)))
    self._file.flush()

  def close(self):
    self._file.close()


def _jsonable(value):
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


class MetricWriter:
  """Writes each record as one JSON line to ``metrics.jsonl`` and its scalars to TensorBoard."""

  def __init__(self, workdir, tensorboard=True):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a')
    self._tb = TensorBoardWriter(os.path.join(workdir, 'tensorboard')) if tensorboard else None

  def write(self, step, **values):
    record = {'step': int(step), **{k: _jsonable(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      scalars = {k: v for k, v in record.items()
                 if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)}
      self._tb.write(step, scalars)

  def close(self):
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """Stands in for MetricWriter on processes that do not write (all but process 0)."""

  def write(self, step, **values):
    del step, values

  def close(self):
    pass
