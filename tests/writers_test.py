"""Metric writers: JSON lines and TensorBoard records decoded by an independent reader."""

import json
import struct

from varjax import writers


def test_crc32c_check_value():
  assert writers.crc32c(b'123456789') == 0xE3069283  # the standard CRC-32C check value


def read_records(path):
  raw = open(path, 'rb').read()
  records, pos = [], 0
  while pos < len(raw):
    (length,) = struct.unpack('<Q', raw[pos:pos + 8])
    (length_crc,) = struct.unpack('<I', raw[pos + 8:pos + 12])
    assert length_crc == writers.masked_crc32c(raw[pos:pos + 8])
    payload = raw[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack('<I', raw[pos + 12 + length:pos + 16 + length])
    assert payload_crc == writers.masked_crc32c(payload)
    records.append(payload)
    pos += 16 + length
  return records


def test_metric_writer_writes_jsonl_and_tfevents(tmp_path):
  w = writers.MetricWriter(str(tmp_path))
  w.write(10, epoch=1, train_loss=0.5, note='text', nan=float('nan'))
  w.write(20, epoch=2, train_loss=0.25)
  w.close()
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines[0]['step'] == 10 and lines[1]['train_loss'] == 0.25 and lines[0]['note'] == 'text'
  (event_file,) = (tmp_path / 'tensorboard').iterdir()
  records = read_records(event_file)
  assert len(records) == 3 and b'brain.Event:2' in records[0]
  assert b'train_loss' in records[1] and struct.pack('<f', 0.25) in records[2]
  assert b'nan' not in records[1]  # non-finite scalars are skipped
