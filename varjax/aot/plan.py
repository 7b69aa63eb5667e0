"""The plan of a run on a target: its programs compiled for compile-only devices, read back.

``compile_programs(config, target)`` builds the run's Ensemble over the
target's compile-only devices (aot/targets.py), compiles each program
(ensemble/abstract.py: what the run executes, from abstract shapes only) and
yields one ``PlanRecord`` per program: memory per device and whether it fits,
FLOPs and bytes per step (aot/hlo_stats.py), the roofline with the target's
peaks, the compiler's own estimate where it has one, runs per hour, collectives
and kernels. ``varjax.aot`` prints them as JSON lines.

Example:
  >>> for record in compile_programs(config, 'tpu-v5e:2x2', ('train_step',)):  # doctest: +SKIP
  ...   print(record.fits, record.collectives, record.roofline_step_s)
"""

import dataclasses
import os
from typing import Optional

from varjax import data
from varjax import ensemble as ensemble_lib
from varjax import errors
from varjax.aot import hlo_stats
from varjax.aot import run_bound
from varjax.aot import targets
from varjax.config import schema
from varjax.ensemble import abstract
from varjax.ensemble import chunk_fit
from varjax.ensemble import mesh as mesh_lib


@dataclasses.dataclass
class PlanRecord:
  """One program of a run compiled for a target, read back (one JSON line of varjax.aot)."""
  target: str
  program: str
  device: str
  num_devices: int
  num_hosts: int
  num_models: int
  models_per_device: int
  models_per_chunk: int  # fitted to the compiled programs unless the config sets it
  models_per_chunk_formula: int  # the activation formula's first guess
  formulation: str
  compute_dtype: str
  compile_s: float
  bytes_per_device: int  # arguments + outputs + temporaries, a donated argument once
  argument_output_bytes: int
  temp_bytes: int
  device_memory_bytes: int
  fits: bool
  flops_per_step: int  # per device, counted from the optimised HLO (hlo_stats)
  bytes_accessed_per_step: int
  compiler_flops: Optional[float]  # the compiler's own cost analysis, where it has one
  compiler_bytes_accessed: Optional[float]
  roofline_step_s: float  # max(flops / peak, bytes / bandwidth)
  compiler_estimate_s: Optional[float]
  runs_per_hour_bound: Optional[float]  # training steps' rooflines over a run, all devices
  collectives: int
  collectives_by_kind: dict
  collective_bytes: int
  kernels: dict
  # Training steps only:
  flops_per_model_step: Optional[int] = None
  steps_per_run: Optional[int] = None
  frozen_roofline_step_s: Optional[float] = None  # 'train_step_frozen', after the bias froze
  whiten_bias_steps: Optional[int] = None
  chunk_trials: Optional[dict] = None  # {chunk: compiled bytes or None} of the chunk fit

  def to_json(self):
    """The record as JSON, without the fields this program does not have (None)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if v is not None or k in _ALWAYS}


# Fields printed even when None (a compiler without a cost analysis, a program
# that is not a training step).
_ALWAYS = ('compiler_flops', 'compiler_bytes_accessed', 'compiler_estimate_s',
           'runs_per_hour_bound')


def build(config, target_name):
  """The target and the Ensemble of ``config`` over its compile-only devices."""
  target = targets.get(target_name)
  mesh = mesh_lib.make_mesh(targets.devices(target_name))
  num_train, num_test = data.split_sizes(config.data)
  ens = ensemble_lib.build(config, num_train, mesh, memory_bytes=target.memory_bytes,
                           num_examples=num_test)
  return target, ens


def roofline_seconds(target, ens, stats):
  """max(flops / peak, bytes / bandwidth) of one execution, from ``hlo_stats.analyze``."""
  return max(stats['flops'] / target.peak_flops(ens.compute_dtype),
             stats['bytes_accessed'] / target.bandwidth)


def describe(target, ens, program, compiled, compile_s, frozen_roofline=None):
  """The PlanRecord of one compiled program.

  ``frozen_roofline``: the roofline of 'train_step_frozen', which runs the steps
  after the whitening bias froze; with it the training step's record bounds the
  whole run.
  """
  fixed, temp = chunk_fit.compiled_bytes(compiled)
  stats = hlo_stats.analyze(compiled.as_text())
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  roofline = roofline_seconds(target, ens, stats)
  per_device = ens.num_models // ens.mesh.devices.size
  record = PlanRecord(
      target=target.name, program=program, device=target.device,
      num_devices=int(ens.mesh.devices.size),
      num_hosts=len({d.process_index for d in ens.mesh.devices.flat}),
      num_models=ens.num_models, models_per_device=per_device,
      models_per_chunk=ens.models_per_chunk,
      models_per_chunk_formula=ens.formula_models_per_chunk,
      formulation=ens.formulation, compute_dtype=ens.compute_dtype,
      compile_s=round(compile_s, 1), bytes_per_device=int(fixed + temp),
      argument_output_bytes=int(fixed), temp_bytes=int(temp),
      device_memory_bytes=int(target.memory_bytes),
      fits=bool(fixed + temp <= target.memory_bytes),
      flops_per_step=int(stats['flops']), bytes_accessed_per_step=int(stats['bytes_accessed']),
      compiler_flops=cost.get('flops'), compiler_bytes_accessed=cost.get('bytes accessed'),
      roofline_step_s=roofline, compiler_estimate_s=cost.get('optimal_seconds'),
      runs_per_hour_bound=None, collectives=stats['collectives']['total'],
      collectives_by_kind={k: v for k, v in stats['collectives'].items()
                           if v and k != 'total'},
      collective_bytes=stats['collective_bytes'], kernels=stats['kernels'])
  if program in abstract.TRAIN_STEPS:
    steps = ens.recipe.total_steps
    live = min(ens.recipe.whiten_bias_steps, steps)
    record.flops_per_model_step = int(stats['flops'] / per_device)
    record.steps_per_run = steps
    run_seconds = roofline * steps
    if program == 'train_step' and frozen_roofline is not None:
      # The first steps train the whitening bias; the rest run the cheaper program.
      record.frozen_roofline_step_s = frozen_roofline
      record.whiten_bias_steps = live
      run_seconds = roofline * live + frozen_roofline * (steps - live)
    record.runs_per_hour_bound = round(ens.num_models * 3600 / run_seconds, 1)
    record.chunk_trials = {str(c): None if t is None else int(sum(t))
                           for c, t in ens.chunk_trials.items()}
  return record


def plan(config, target_names, names=abstract.PROGRAMS, hlo_dir=None):
  """Yields the records (JSON) of ``names`` compiled for each target, after checking every input.

  After a target's programs comes its run-level record (aot/run_bound.py:
  compiles, checkpoint bytes, the bound with the fixed costs) when ``names``
  holds every program a run executes. A bad config, program or target name
  fails (ConfigError, TargetError) before any compile.
  """
  schema.check(config)
  for program in names:
    if program not in abstract.ALL_PROGRAMS:
      raise errors.ConfigError(f'Unknown program {program!r}; choose from '
                               f'{abstract.ALL_PROGRAMS}.')
  for name in target_names:
    targets.get(name)
  _, num_test = data.split_sizes(config.data)
  for name in target_names:
    target, ens = build(config, name)
    records = []
    for record in _compile(target, ens, names, hlo_dir):
      records.append(record.to_json())
      yield records[-1]
    bound = run_bound.run_record(records, ens, target, num_test)
    if bound is not None:
      yield bound


def compile_programs(config, target_name, names=abstract.PROGRAMS, hlo_dir=None):
  """Yields the PlanRecord of every program ``names`` of ``config`` compiled for ``target_name``."""
  target, ens = build(config, target_name)
  yield from _compile(target, ens, names, hlo_dir)


def _compile(target, ens, names, hlo_dir):
  _, num_test = data.split_sizes(ens.config.data)
  for program in names:
    compiled = abstract.compile(ens, program, num_examples=num_test)
    # Its compile time, whether the chunk fit compiled it already or this did.
    seconds = abstract.program(ens, program).compile_seconds
    frozen = None
    if program == 'train_step' and ens.recipe.whiten_bias_steps < ens.recipe.total_steps:
      frozen = roofline_seconds(target, ens, hlo_stats.analyze(
          abstract.compile(ens, 'train_step_frozen').as_text()))
    if hlo_dir:
      os.makedirs(hlo_dir, exist_ok=True)
      with open(os.path.join(hlo_dir, f'{target.name}.{program}.hlo'.replace(':', '_')),
                'w') as f:
        f.write(compiled.as_text())
    yield describe(target, ens, program, compiled, seconds, frozen)
