"""Compile-only: the smoke ensemble's programs compiled for an H100 and a TPU v5e 2x2 slice.

Needs the compiler plugins (``pip install -e '.[aot]'``, which .ci/run does);
skipped without them. 45 s wall, 23 s of CPU, on 2 shared cores.
"""

import pytest

from varjax.aot import plan
from varjax.aot import targets
from conftest import tiny_config

pytest.importorskip('jax_plugins.xla_cuda12', reason="needs pip install -e '.[aot]'")
pytest.importorskip('libtpu', reason="needs pip install -e '.[aot]'")

KEYS = {'target', 'program', 'num_devices', 'num_hosts', 'num_models', 'models_per_device',
        'models_per_chunk', 'formulation', 'compute_dtype', 'compile_s', 'bytes_per_device',
        'device_memory_bytes', 'fits', 'flops_per_step', 'bytes_accessed_per_step',
        'roofline_step_s', 'compiler_estimate_s', 'runs_per_hour_bound', 'collectives',
        'kernels'}


def train_flops_per_image(widths):
  """airbench's convs and head counted by hand: 2 x multiply-adds, forward + two
  gradients, except the frozen 2x2 whitening conv (forward only)."""
  whiten = 2 * 31 * 31 * 4 * 3 * 24
  convs, size, c_in = 0, 31, 24
  for width in widths:
    convs += 2 * size * size * 9 * c_in * width  # at the pre-pool size
    size //= 2
    convs += 2 * size * size * 9 * width * width
    c_in = width
  return whiten + 3 * (convs + 2 * widths[-1] * 10)


@pytest.mark.parametrize('target', ['h100', 'tpu-v5e:2x2'])
def test_smoke_step_fits_has_no_collective_and_real_gradient_kernels(target):
  # The smoke config, shrunk (tiny_config): the same program, compiled faster.
  config = tiny_config(num_models=4)  # 4 per GPU, 1 per v5e chip
  if target.startswith('tpu'):  # no chunk fitting: it compiles the TTA evaluation too (~40 s)
    config.ensemble.models_per_chunk = 1
  programs = ('train_step', 'analysis_update')
  records = {r['program']: r for r in plan.plan(config, [target], programs)}
  step = records['train_step']
  assert KEYS <= set(step) and step['num_devices'] == targets.get(target).num_devices
  assert step['fits'] and step['bytes_per_device'] > 0
  # The models are independent: any collective in the training step is a bug.
  assert step['collectives'] == 0
  # Real gradient kernels, not the map-sized forward windows that vmap's kernel
  # gradients become under cuDNN (BENCHMARKS.md); cuDNN runs the input
  # gradients of the default grad_of_sum as forward convs of flipped kernels.
  kernels = step['kernels']
  assert kernels['conv_forward'] > 0 and kernels['conv_backward_filter'] > 0
  if target.startswith('tpu'):
    assert kernels['conv_backward_input'] > 0
  per_model = train_flops_per_image(tuple(config.model.widths)) * config.train.batch_size
  assert step['flops_per_step'] == pytest.approx(step['models_per_device'] * per_model, rel=0.02)
  assert step['runs_per_hour_bound'] > 0
  assert records['analysis_update']['fits']


def test_plan_sizes_a_run_of_some_classes_at_their_share_of_the_test_set(monkeypatch):
  # experiments/binary.py: cat vs dog, 2,000 of the official 10,000 test images.
  seen = []
  monkeypatch.setattr(plan, '_compile',
                      lambda target, ens, names, hlo_dir: seen.append(target.name) or [])
  config = tiny_config(**{'data.classes': (3, 5), 'data.test_split': 'test'})
  assert list(plan.plan(config, ['h100'], ('eval_outputs',))) == [] and seen == ['h100']
  assert plan.data.split_sizes(config.data) == (min(10_000, config.data.train_size), 2_000)
