"""How many models per chunk fit on a device: a first guess, then what the compiler says.

The rough formula (``activation_bytes_per_model``) only seeds the search. On an
accelerator ``fit_models_per_chunk`` compiles the programs for a chunk size
(ensemble/build.py measures the training step and the evaluation batch), reads
the executables' memory (arguments, outputs and temporaries per device), and
moves to the largest chunk that the measured bytes per model predict will fit,
compiling again to confirm (BENCHMARKS.md tabulates formula vs compiled).

Example:
  >>> guess = default_models_per_chunk(64, 'gpu', 80e9, 4.4e9)
  >>> guess
  8
  >>> chunk, trials = fit_models_per_chunk(64, guess, 80e9, measure)   # doctest: +SKIP
"""

import math

import jax
from absl import logging

# Share of the device memory a chunk's step may plan to use; the rest is left
# for what the program does not count (allocator fragmentation, the runtime).
MEMORY_BUDGET = 0.9


def activation_bytes_per_model(widths, batch_size, whiten_width=24, dtype_bytes=4):
  """Rough bytes one model's train step keeps for its backward pass.

  Counts the maps of every conv group (pre-pool conv output, pooled, BN, GELU;
  three tensors at the pre-pool size, four after) and doubles it for gradients
  and XLA's temporaries. About 4.4 GB for airbench94 at batch 1024 in float32.
  """
  size, floats = 31, 31 * 31 * whiten_width
  for width in widths:
    floats += 3 * size * size * width
    size //= 2
    floats += 4 * size * size * width
  return 2 * floats * batch_size * dtype_bytes


def divisors(n):
  return [d for d in range(1, n + 1) if n % d == 0]


def default_models_per_chunk(models_per_device, platform, memory_bytes=None,
                             bytes_per_model=None):
  """Largest divisor of the per-device model count not above the backend's target.

  CPU: 4 (a few models per chunk lets XLA overlap independent models' small ops).
  Accelerators: the first guess that ``fit_models_per_chunk`` starts from: as
  many models as half the device memory holds by ``activation_bytes_per_model``
  when both are known, else 16.
  """
  if platform == 'cpu':
    target = 4
  elif memory_bytes and bytes_per_model:
    target = max(1, int(0.5 * memory_bytes // bytes_per_model))
  else:
    target = 16
  return max(d for d in divisors(models_per_device) if d <= target)


def device_memory_bytes(device):
  """The device's memory limit, or None where the backend does not report it."""
  try:
    return (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except  (backends without memory_stats)
    return None


def local_memory_bytes(mesh):
  """The memory limit of one of this process's devices of ``mesh`` (a remote device
  reports nothing), or None."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return device_memory_bytes(local[0]) if local else None


def compiled_bytes(compiled):
  """(bytes that do not grow with the chunk, temporaries) of a compiled program per device.

  Arguments and outputs (the stacked states, the data) plus temporaries; a
  donated argument's aliased output is counted once.
  """
  m = compiled.memory_analysis()
  fixed = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return fixed, m.temp_size_in_bytes


def fit_models_per_chunk(models_per_device, guess, memory_bytes, measure, budget=MEMORY_BUDGET,
                         max_compiles=4):
  """The largest chunk size whose compiled programs fit ``budget * memory_bytes``.

  Args:
    models_per_device: the chunk size divides it.
    guess: where to start (``default_models_per_chunk``).
    memory_bytes: the device's memory.
    measure: measure(chunk) -> (fixed bytes, temporary bytes) of the programs
      compiled for that chunk size (``compiled_bytes`` of the largest), or None
      when the compiler refused them for lack of memory.
    budget: the share of ``memory_bytes`` the step may use.
    max_compiles: most chunk sizes to compile.

  Returns:
    (chunk, trials): the chosen size (the smallest divisor, 1, when nothing
    fits) and {chunk: (fixed, temporaries) or None} of every compiled size.
  """
  limit = budget * memory_bytes
  sizes = divisors(models_per_device)
  fits, fails = 0, models_per_device + 1  # largest size known to fit, smallest known not to
  trials, estimate = {}, None
  chunk = max(d for d in sizes if d <= max(1, guess))
  while len(trials) < max_compiles:
    trials[chunk] = measure(chunk)
    if trials[chunk] is None:
      fails = min(fails, chunk)
    else:
      fixed, temp = trials[chunk]
      if fixed + temp <= limit:
        fits = max(fits, chunk)
      else:
        fails = min(fails, chunk)
      # Temporaries grow with the chunk; the arguments (states, data) do not.
      estimate = (fixed, temp / chunk)
    between = [d for d in sizes if fits < d < fails]  # never a size already compiled
    if not between:
      break
    predicted = [d for d in between
                 if estimate and estimate[0] + d * estimate[1] <= limit]
    if predicted:
      chunk = max(predicted)
    else:  # the linear estimate is off (or unknown): bisect geometrically
      middle = math.sqrt(max(fits, 1) * min(fails, models_per_device))
      chunk = min(between, key=lambda d: (round(abs(math.log(d / middle)), 9), d))
    logging.info('models_per_chunk: trying %d after %s', chunk, trials)
  return (fits or 1), trials
