"""The platform-dependent ``ensemble.*`` options: their choices and what 'auto' picks.

The choice tuples are the allowed values (config/schema.py's rules read them
from here). ``resolve(config.ensemble, platform)`` maps the config's values and
a platform ('cpu', 'gpu', 'tpu') to the concrete options; anything but 'auto'
passes through. Why each default is what it is, measured: BENCHMARKS.md.

Example:
  >>> resolve_formulation('auto', 'gpu')
  'grad_of_sum'
  >>> resolve_compute_dtype('float32', 'tpu')
  'float32'
"""

import functools
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

FORMULATIONS = ('auto', 'unrolled', 'vmap', 'grad_of_sum')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
CHUNK_LOOPS = ('auto', 'scan', 'host')
CONV_WEIGHT_GRADS = ('auto', 'xla', 'sliced')
CPU_CONV_LIBRARIES = ('eigen', 'ynnpack')
AUGMENT_CROPS = ('auto', 'gather', 'batch_crop')
MAX_POOLS = ('auto', 'windows', 'reshape', 'reduce_window')
# XLA:CPU's YNNPACK fusion types (dots, reductions, convolutions) less convolutions.
_YNN_WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


class Options(NamedTuple):
  """The concrete ``ensemble.*`` choices of one platform."""
  formulation: str  # 'unrolled' | 'vmap' | 'grad_of_sum'
  compute_dtype: str  # 'float32' | 'bfloat16'
  chunk_loop: str  # 'scan' | 'host'
  conv_weight_grad: str  # 'xla' | 'sliced'
  conv_grad_slice: int
  augment_crop: str  # 'gather' | 'batch_crop'
  max_pool: str  # 'windows' | 'reshape' | 'reduce_window'
  step_compiler_options: Optional[dict]  # XLA options of the training steps (None: defaults)

  @property
  def dtype(self) -> Any:
    return COMPUTE_DTYPES[self.compute_dtype]


def resolve(ensemble_config, platform):
  """The ``Options`` that ``config.ensemble`` gives on ``platform``."""
  e = ensemble_config
  return Options(formulation=resolve_formulation(e.formulation, platform),
                 compute_dtype=resolve_compute_dtype(e.compute_dtype, platform),
                 chunk_loop=resolve_chunk_loop(e.chunk_loop, platform),
                 conv_weight_grad=resolve_conv_weight_grad(e.conv_weight_grad, platform),
                 conv_grad_slice=int(e.conv_grad_slice),
                 augment_crop=resolve_augment_crop(e.augment_crop, platform),
                 max_pool=resolve_max_pool(e.max_pool, platform),
                 step_compiler_options=step_compiler_options(e.cpu_conv_library, platform))


def resolve_compute_dtype(compute_dtype, platform):
  """'auto': float32 on CPU, bfloat16 on accelerators (half the compiled step's
  memory and traffic of float32 on H100 and v5e; BENCHMARKS.md)."""
  if compute_dtype == 'auto':
    return 'float32' if platform == 'cpu' else 'bfloat16'
  return compute_dtype


def resolve_formulation(formulation, platform):
  """'auto': what the compilers' output favours (BENCHMARKS.md, "Formulations").

  CPU: unrolled (vmap's grouped convs are far slower on XLA:CPU). GPU:
  grad_of_sum (cuDNN backward-filter kernels where vmap makes map-sized forward
  windows; the least memory and traffic of the three). TPU: vmap (the least
  traffic; the same memory as grad_of_sum; unrolled compiles far longer).
  """
  if formulation == 'auto':
    return {'cpu': 'unrolled', 'gpu': 'grad_of_sum'}.get(platform, 'vmap')
  return formulation


def resolve_chunk_loop(chunk_loop, platform):
  """'auto': 'host' on CPU (XLA:CPU runs convolutions inside a while loop several
  times slower), 'scan' elsewhere (one dispatch per step)."""
  if chunk_loop == 'auto':
    return 'host' if platform == 'cpu' else 'scan'
  return chunk_loop


def step_compiler_options(cpu_conv_library, platform):
  """XLA compiler options of the training step programs (None: XLA's defaults).

  On CPU, 'eigen' leaves the convolutions to XLA:CPU's own (Eigen) kernels instead
  of YNNPACK's, which run each convolution on one thread (BENCHMARKS.md). Other
  platforms ignore it, and so does a jaxlib whose XLA has no such option (then
  its defaults run, with a log line).

  >>> step_compiler_options('eigen', 'gpu') is None
  True
  """
  if platform != 'cpu' or cpu_conv_library == 'ynnpack':
    return None
  options = {'xla_cpu_experimental_ynn_fusion_type': _YNN_WITHOUT_CONVOLUTIONS}
  if not _cpu_compiler_accepts(tuple(options.items())):
    logging.warning('This jaxlib rejects the XLA:CPU options %s; its default convolution '
                    'kernels run instead.', options)
    return None
  return options


@functools.lru_cache(maxsize=None)
def _cpu_compiler_accepts(items):
  """Whether XLA:CPU compiles a trivial program with these compiler options."""
  x = jax.device_put(np.float32(0), jax.devices('cpu')[0])
  try:
    jax.jit(lambda v: v + 1, compiler_options=dict(items)).lower(x).compile()
  except Exception:  # pylint: disable=broad-except  # XLA raises its own error types
    return False
  return True


def resolve_conv_weight_grad(conv_weight_grad, platform):
  """'auto': 'sliced' on CPU (XLA:CPU's kernel gradient slows superlinearly with the
  batch; models/conv.py), XLA's own elsewhere."""
  if conv_weight_grad == 'auto':
    return 'sliced' if platform == 'cpu' else 'xla'
  return conv_weight_grad


def resolve_augment_crop(augment_crop, platform):
  """'auto': 'batch_crop' on TPU (whole images gathered from rows, then cropped by
  selects: for a per-pixel gather the TPU compiler relayouts the resident
  (N, 32, 32, 3) set every step and charges the gather far more bytes than it
  moves; BENCHMARKS.md "where the training step's bytes go"), the per-pixel
  'gather' elsewhere (GPU fuses it into the normalisation)."""
  if augment_crop == 'auto':
    return 'batch_crop' if platform == 'tpu' else 'gather'
  return augment_crop


def resolve_max_pool(max_pool, platform):
  """'auto': 'windows' everywhere (the reshape form's gradients bit for bit, in
  one fused pass). 'reduce_window' moves fewer bytes on TPU (select-and-scatter
  is one op there) but hands a tie's gradient to its first maximum instead of
  sharing it, which changes bfloat16 results: opt-in. BENCHMARKS.md "where the
  training step's bytes go"."""
  del platform
  return 'windows' if max_pool == 'auto' else max_pool


def resolve_augment_crop(augment_crop, platform):
  """'auto': 'batch_crop' on TPU (whole images gathered from rows, then cropped by
  selects: for a per-pixel gather the TPU compiler relayouts the resident
  (N, 32, 32, 3) set every step and charges the gather far more bytes than it
  moves; BENCHMARKS.md "where the training step's bytes go"), the per-pixel
  'gather' elsewhere (GPU fuses it into the normalisation)."""
  if augment_crop == 'auto':
    return 'batch_crop' if platform == 'tpu' else 'gather'
  return augment_crop


def resolve_max_pool(max_pool, platform):
  """'auto': 'windows' everywhere (the reshape form's gradients bit for bit, in
  one fused pass). 'reduce_window' moves fewer bytes on TPU (select-and-scatter
  is one op there) but hands a tie's gradient to its first maximum instead of
  sharing it, which changes bfloat16 results: opt-in. BENCHMARKS.md "where the
  training step's bytes go"."""
  del platform
  return 'windows' if max_pool == 'auto' else max_pool
