"""The plan of a run on a target: its programs compiled for compile-only devices, read back.

``compile_programs(config, target)`` builds the run's Ensemble over the
target's compile-only devices (``varjax.targets``), compiles each program
(``programs.program``: what train runs, from abstract shapes only) and yields
one record per program: memory per device and whether it fits, FLOPs and bytes
per step (``hlo_stats``), the roofline with the target's peaks, the compiler's
own estimate where it has one, runs per hour, collectives and kernels.
``varjax.aot`` prints them; the keys are listed there.

Example:
  >>> for record in compile_programs(config, 'tpu-v5e:2x2', ('train_step',)):  # doctest: +SKIP
  ...   print(record['fits'], record['collectives'], record['roofline_step_s'])
"""

import os
import time

from varjax.config import schema
from varjax import data
from varjax import errors
from varjax import ensemble as ensemble_lib
from varjax.aot import hlo_stats
from varjax.ensemble import chunk_fit as memory_plan
from varjax.ensemble import mesh as mesh_lib
from varjax.ensemble import programs
from varjax.aot import targets
def build(config, target_name):
  """The target and the Ensemble of ``config`` over its compile-only devices."""
  target = targets.get(target_name)
  mesh = mesh_lib.make_mesh(targets.devices(target_name))
  num_train, _ = data.split_sizes(config.data)
  return target, ensemble_lib.Ensemble(config, num_train, mesh, memory_bytes=target.memory_bytes)


def roofline_seconds(target, ens, stats):
  """max(flops / peak, bytes / bandwidth) of one execution, from ``hlo_stats.analyze``."""
  return max(stats['flops'] / target.peak_flops(ens.compute_dtype),
             stats['bytes_accessed'] / target.bandwidth)


def describe(target, ens, program, compiled, compile_s, frozen_roofline=None):
  """The JSON record of one compiled program (see the module docstring).

  ``frozen_roofline``: the roofline of 'train_step_frozen', which runs the steps
  after the whitening bias froze; with it the training step's record bounds the
  whole run.
  """
  fixed, temp = memory_plan.compiled_bytes(compiled)
  stats = hlo_stats.analyze(compiled.as_text())
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  dtype = ens.compute_dtype
  flops, bytes_accessed = stats['flops'], stats['bytes_accessed']
  roofline = roofline_seconds(target, ens, stats)
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
  if program in programs.TRAIN_STEPS:
    steps = ens.recipe.total_steps
    live = min(ens.recipe.whiten_bias_steps, steps)
    record['flops_per_model_step'] = int(flops / per_device)
    record['steps_per_run'] = steps
    run_seconds = roofline * steps
    if program == 'train_step' and frozen_roofline is not None:
      # The first steps train the whitening bias; the rest run the cheaper program.
      record['frozen_roofline_step_s'] = frozen_roofline
      record['whiten_bias_steps'] = live
      run_seconds = roofline * live + frozen_roofline * (steps - live)
    record['runs_per_hour_bound'] = round(ens.num_models * 3600 / run_seconds, 1)
    record['chunk_trials'] = {str(c): None if t is None else int(sum(t))
                              for c, t in ens.chunk_trials.items()}
  return record


def plan(config, target_names, names=programs.PROGRAMS, hlo_dir=None):
  """Yields the records of ``names`` compiled for each target, after checking every input.

  A bad config, program or target name fails (ConfigError, TargetError) before any compile.
  """
  schema.check(config)
  for program in names:
    if program not in programs.ALL_PROGRAMS:
      raise errors.ConfigError(f'Unknown program {program!r}; choose from '
                               f'{programs.ALL_PROGRAMS}.')
  for name in target_names:
    targets.get(name)
  for name in target_names:
    yield from compile_programs(config, name, names, hlo_dir)


def compile_programs(config, target_name, names=programs.PROGRAMS, hlo_dir=None):
  """Yields the record of every program ``names`` of ``config`` compiled for ``target_name``."""
  target, ens = build(config, target_name)
  _, num_test = data.split_sizes(config.data)
  for program in names:
    start = time.perf_counter()
    compiled = ens.compile(program, num_examples=num_test)
    seconds = ens.compile_seconds.get((program, ens.models_per_chunk),
                                      time.perf_counter() - start)
    frozen = None
    if program == 'train_step' and ens.recipe.whiten_bias_steps < ens.recipe.total_steps:
      frozen = roofline_seconds(target, ens, hlo_stats.analyze(
          ens.compile('train_step_frozen').as_text()))
    if hlo_dir:
      os.makedirs(hlo_dir, exist_ok=True)
      with open(os.path.join(hlo_dir, f'{target.name}.{program}.hlo'.replace(':', '_')),
                'w') as f:
        f.write(compiled.as_text())
    yield describe(target, ens, program, compiled, seconds, frozen)
