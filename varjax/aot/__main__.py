r"""Compile the ensemble's programs for accelerators that are not attached, and plan runs.

  python -m varjax.aot --config=experiments/airbench.py --targets=h100,tpu-v5e:16x16 \
      --config.num_models=1024

Builds the run's programs (init, the training step, one evaluation batch's
outputs and its analysis update: ensemble/abstract.py, the programs a run executes)
from abstract shapes only, compiles each for compile-only devices of every
target (``aot/targets.py``; ``aot/plan.py`` does the work), and prints one JSON
line per (target, program):

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
  training steps' rooflines over a whole run, all devices: the step that trains
  the whitening bias for its first ``whiten_bias_steps``, then
  ``train_step_frozen``, compiled alongside, whose roofline is
  ``frozen_roofline_step_s``); collectives (count)
  and collectives_by_kind; kernels (convolutions by kind, fusions, custom calls).

After a target's programs, when all four a run executes were compiled, one
record with program 'run' (``aot/run_bound.py``): compile seconds per program
on this machine, checkpoint bytes per save, the run-level bound (compiles +
training steps + one evaluation pass) and its runs per hour beside the
training-only one, and how many runs sharing one compile bring compiles under
10% of the time.

Needs the compiler plugins: ``pip install -e '.[aot]'``. Nothing is placed on a
device and no data is read; the host's own JAX backend is the CPU.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # this host only compiles

from varjax.aot import targets  # pylint: disable=g-import-not-at-top,wrong-import-position

targets.quiet_tpu_environment()  # before libtpu loads

# pylint: disable=g-import-not-at-top,wrong-import-position
import json

from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import errors
from varjax.aot import plan
from varjax.config import command_line
from varjax.ensemble import abstract

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].')
_TARGETS = flags.DEFINE_list('targets', ['h100', 'tpu-v5e:16x16'],
                             f'Targets to compile for: {", ".join(targets.known_targets())}.')
_PROGRAMS = flags.DEFINE_list('programs', list(abstract.PROGRAMS), 'Programs to compile.')
_HLO_DIR = flags.DEFINE_string('hlo_dir', None, 'Also write each optimised HLO module here.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  with errors.exit_on_error('varjax.aot'):
    for record in plan.plan(_CONFIG.value, _TARGETS.value, _PROGRAMS.value, _HLO_DIR.value):
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=command_line.flags_parser)
