"""jax.distributed on one machine: 2 processes x 4 CPU devices equal 1 process x 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, needs_shared_data

FLAGS = ('--config=experiments/airbench.py:smoke', '--config.num_models=8',
         '--config.model.widths=(4,8,8)', '--config.model.whiten_num_images=64',
         '--config.data.train_size=256', '--config.data.holdout_size=128',
         '--config.train.batch_size=64', '--config.train.epochs=1',
         '--config.eval.batch_size=100')


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start(workdir, devices, *extra):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  return subprocess.Popen([sys.executable, '-m', 'varjax.main', f'--workdir={workdir}', *FLAGS,
                           *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


@needs_shared_data
def test_two_processes_equal_one(tmp_path):
  one = start(tmp_path / 'one', 8)
  _, err = one.communicate(timeout=600)
  assert one.returncode == 0, err[-3000:]
  port = free_port()
  procs = [start(tmp_path / 'two', 4, f'--coordinator_address=localhost:{port}',
                 '--num_processes=2', f'--process_id={i}') for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  a = json.loads((tmp_path / 'one' / 'summary.json').read_text())
  b = json.loads((tmp_path / 'two' / 'summary.json').read_text())
  assert a['num_devices'] == b['num_devices'] == 8
  assert a['models'] == b['models']  # every per-model result, bit for bit
  for ga, gb in zip(a['groups'], b['groups']):
    assert ga.keys() == gb.keys()
    for key in ga:  # pair means may sum in another order over another device layout
      if isinstance(ga[key], (str, dict)):
        assert ga[key] == gb[key], key
      else:
        np.testing.assert_allclose(np.array(gb[key], float), np.array(ga[key], float),
                                   rtol=1e-6, err_msg=key)
  pa = np.load(tmp_path / 'one' / 'per_example.npz')
  pb = np.load(tmp_path / 'two' / 'per_example.npz')
  for key in pa.files:
    np.testing.assert_allclose(pb[key], pa[key], rtol=1e-6, err_msg=key)
  # Only process 0 wrote: one metrics file with one line per epoch plus the final record.
  assert len((tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()) == 2
