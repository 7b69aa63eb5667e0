r"""Compile the ensemble's programs for accelerators that are not attached, and plan runs.

  python -m varjax.aot --config=experiments/airbench.py --targets=h100,tpu-v5e:16x16 \
      --config.num_models=1024

Builds the run's programs (init, the training step, one evaluation batch's
outputs and its analysis update: ``programs.program``, the functions train runs)
from abstract shapes only, compiles each for compile-only devices of every
target (``varjax.targets``), and prints one JSON line per (target, program):

  target, program, num_devices, num_hosts; num_models, models_per_device,
  models_per_chunk (fitted to the compiled step unless the config sets it;
  ``models_per_chunk_formula``: the activation formula's guess); formulation,
  compute_dtype, compile_s; bytes_per_device (arguments + outputs +
  temporaries, a donated argument counted once), device_memory_bytes, fits;
  flops_per_step and bytes_accessed_per_step (per device, counted from the
  optimised HLO by ``hlo_stats``: convolutions and dots; operand and result
  bytes of every top-level op; loop bodies times their trips);
  roofline_step_s = max(flops / peak, bytes / bandwidth) with the target
  table's peaks; compiler_flops, compiler_bytes_accessed and
  compiler_estimate_s (``optimal_seconds``) where the executable has a cost
  analysis (TPU; it counts a loop body once); runs_per_hour_bound (the
  training step's roofline over a whole run, all devices); collectives (count)
  and collectives_by_kind; kernels (convolutions by kind, fusions, custom calls).

Needs the compiler plugins: ``pip install -e '.[aot]'``. Nothing is placed on a
device and no data is read; the host's own JAX backend is the CPU.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # this host only compiles

from varjax import targets  # pylint: disable=g-import-not-at-top,wrong-import-position

targets.quiet_tpu_environment()  # before libtpu loads

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import config_check
from varjax import ensemble as ensemble_lib
from varjax import hlo_stats
from varjax import memory_plan
from varjax import programs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].')
_TARGETS = flags.DEFINE_list('targets', ['h100', 'tpu-v5e:16x16'],
                             f'Targets to compile for: {", ".join(targets.known_targets())}.')
_PROGRAMS = flags.DEFINE_list('programs', list(programs.PROGRAMS), 'Programs to compile.')
_HLO_DIR = flags.DEFINE_string('hlo_dir', None, 'Also write each optimised HLO module here.')
flags.mark_flags_as_required(['config'])

CIFAR10_IMAGES = 50_000  # training images; the test split has 10,000
CIFAR10_TEST = 10_000
NUM_CLASSES = 10


def dataset_sizes(data_config):
  """(training images, evaluation images) the config's CIFAR-10 split gives, without data."""
  num_train, num_test = CIFAR10_IMAGES, CIFAR10_TEST
  if data_config.test_split == 'holdout':
    num_train, num_test = CIFAR10_IMAGES - data_config.holdout_size, data_config.holdout_size
  if data_config.train_size is not None:
    num_train = min(num_train, data_config.train_size)
  return num_train, num_test


def build(config, target_name):
  """The target and the Ensemble of ``config`` over its compile-only devices."""
  target = targets.get(target_name)
  mesh = ensemble_lib.make_mesh(targets.devices(target_name))
  num_train, _ = dataset_sizes(config.data)
  return target, ensemble_lib.Ensemble(config, num_train, mesh, memory_bytes=target.memory_bytes)


def describe(target, ens, program, compiled, compile_s):
  """The JSON record of one compiled program (see the module docstring)."""
  fixed, temp = memory_plan.compiled_bytes(compiled)
  stats = hlo_stats.analyze(compiled.as_text())
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  dtype = ens.compute_dtype
  flops, bytes_accessed = stats['flops'], stats['bytes_accessed']
  roofline = max(flops / target.peak_flops(dtype), bytes_accessed / target.bandwidth)
  devices = ens.mesh.devices.flat
  per_device = ens.num_models // ens.mesh.devices.size
  record = {
      'target': target.name, 'program': program, 'device': target.device,
      'num_devices': int(ens.mesh.devices.size),
      'num_hosts': len({d.process_index for d in devices}),
      'num_models': ens.num_models, 'models_per_device': per_device,
      'models_per_chunk': ens.models_per_chunk,
      'models_per_chunk_formula': ens.formula_models_per_chunk,
      'formulation': ens.formulation, 'compute_dtype': dtype, 'compile_s': round(compile_s, 1),
      'bytes_per_device': int(fixed + temp), 'argument_output_bytes': int(fixed),
      'temp_bytes': int(temp), 'device_memory_bytes': int(target.memory_bytes),
      'fits': bool(fixed + temp <= target.memory_bytes),
      'flops_per_step': int(flops), 'bytes_accessed_per_step': int(bytes_accessed),
      'compiler_flops': cost.get('flops'),
      'compiler_bytes_accessed': cost.get('bytes accessed'), 'roofline_step_s': roofline,
      'compiler_estimate_s': cost.get('optimal_seconds'),
      'runs_per_hour_bound': None,
      'collectives': stats['collectives']['total'],
      'collectives_by_kind': {k: v for k, v in stats['collectives'].items()
                              if v and k != 'total'},
      'collective_bytes': stats['collective_bytes'], 'kernels': stats['kernels'],
  }
  if program == 'train_step':
    steps = ens.plan.total_steps
    record['flops_per_model_step'] = int(flops / per_device)
    record['steps_per_run'] = steps
    record['runs_per_hour_bound'] = round(ens.num_models * 3600 / (roofline * steps), 1)
    record['chunk_trials'] = {str(c): None if t is None else int(sum(t))
                              for c, t in ens.chunk_trials.items()}
  return record


def compile_programs(config, target_name, names=programs.PROGRAMS, hlo_dir=None):
  """Yields the record of every program ``names`` of ``config`` compiled for ``target_name``."""
  target, ens = build(config, target_name)
  _, num_test = dataset_sizes(config.data)
  for program in names:
    start = time.perf_counter()
    compiled = ens.compile(program, num_examples=num_test)
    seconds = ens.compile_seconds.get((program, ens.models_per_chunk),
                                      time.perf_counter() - start)
    if hlo_dir:
      os.makedirs(hlo_dir, exist_ok=True)
      with open(os.path.join(hlo_dir, f'{target.name}.{program}.hlo'.replace(':', '_')),
                'w') as f:
        f.write(compiled.as_text())
    yield describe(target, ens, program, compiled, seconds)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    config_check.check(config)
    for program in _PROGRAMS.value:
      if program not in programs.PROGRAMS:
        raise config_check.ConfigError(f'Unknown program {program!r}; choose from '
                                       f'{programs.PROGRAMS}.')
    for name in _TARGETS.value:
      targets.get(name)  # unknown names fail before any compile
    for name in _TARGETS.value:
      for record in compile_programs(config, name, _PROGRAMS.value, _HLO_DIR.value):
        print(json.dumps(record), flush=True)
  except (config_check.ConfigError, targets.TargetError) as e:  # bad target, config or plugin
    print(f'varjax.aot: {type(e).__name__}: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
