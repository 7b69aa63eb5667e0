"""Metric writers: JSON lines, and event files read back by TensorBoard's own reader."""

import json

from tensorboard.backend.event_processing import event_accumulator

from varjax.run import writers
def test_metric_writer_writes_jsonl_and_tensorboard_scalars(tmp_path):
  w = writers.MetricWriter(str(tmp_path))
  w.write(10, epoch=1, train_loss=0.5, note='text', nan=float('nan'), done=True)
  w.write(20, epoch=2, train_loss=0.25, per_model=[0.1, 0.2])
  w.close()

  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines[0]['step'] == 10 and lines[1]['train_loss'] == 0.25 and lines[0]['note'] == 'text'
  assert lines[1]['per_model'] == [0.1, 0.2]

  reader = event_accumulator.EventAccumulator(str(tmp_path / writers.TENSORBOARD_DIR))
  reader.Reload()
  # Text, booleans, lists and non-finite values stay in the JSON lines only.
  assert sorted(reader.Tags()['scalars']) == ['epoch', 'train_loss']
  assert [(e.step, e.value) for e in reader.Scalars('train_loss')] == [(10, 0.5), (20, 0.25)]
  assert [(e.step, e.value) for e in reader.Scalars('epoch')] == [(10, 1.0), (20, 2.0)]


def test_null_writer_writes_nothing(tmp_path):
  w = writers.NullWriter()
  w.write(1, loss=1.0)
  w.close()
  assert not list(tmp_path.iterdir())


def test_keep_records_drops_rejected_and_half_written_lines(tmp_path):
  w = writers.MetricWriter(str(tmp_path), tensorboard=False)
  for step in (4, 8, 12):
    w.write(step, epoch_seconds=1.0)
  w.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 16, "epoch_sec')  # a kill in mid-line
  writers.keep_records(str(tmp_path), lambda r: r['step'] <= 8)
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [4, 8]
  w = writers.MetricWriter(str(tmp_path), tensorboard=False)
  w.write(12, epoch_seconds=2.0)
  w.close()
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [4, 8, 12]
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 16}')  # whole, but killed before its newline
  writers.keep_records(str(tmp_path), lambda r: True)
  assert (tmp_path / 'metrics.jsonl').read_text().endswith('{"step": 16}\n')
  writers.keep_records(str(tmp_path / 'absent'), lambda r: False)  # no file: nothing to do
