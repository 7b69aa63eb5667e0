"""One model's function over every model of a device, ``models_per_chunk`` at a time.

Per-model arguments are pytrees stacked on a leading models axis; inside
``shard_map`` each device sees its own models and runs them in chunks:

- the chunk loop is a ``lax.scan`` (``map_models``: one dispatch per step;
  compile time independent of N) on accelerators, and a host loop over one
  jitted chunk function (``update_chunk``, ``host_loop``) on CPU, where XLA
  runs convolutions inside loops ~10x slower;
- within a chunk the models are 'unrolled' (each model's convolutions stay
  dense, bit-identical to the model run alone; ``vmap`` would make grouped
  convolutions, ~40x slower on XLA:CPU), 'vmap' (batched; TPU's default) or
  'grad_of_sum' (the forward vmapped, the gradient of the chunk's summed loss
  taken outside the vmap: batched backward kernels; GPU's default), whose
  train step is a ``chunk_fn`` computing the whole chunk at once.

Example:
  >>> double = lambda per_model, scale: per_model[0] * scale
  >>> map_models(double, models_per_chunk=2)(jnp.arange(4.), 2.)      # doctest: +SKIP
  Array([0., 2., 4., 6.], dtype=float32)
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from varjax.ensemble.mesh import MODELS


def run_chunk(fn, chunk, shared, formulation, chunk_fn=None):
  """``fn`` on each model of a chunk (per-model pytrees stacked on axis 0).

  ``chunk_fn(chunk, *shared)``, when given, computes the whole chunk at once
  (the 'grad_of_sum' train step); other programs vmap under 'grad_of_sum'.
  """
  if chunk_fn is not None:
    return chunk_fn(chunk, *shared)
  if formulation in ('vmap', 'grad_of_sum'):
    return jax.vmap(lambda m: fn(m, *shared))(chunk)
  c = jax.tree.leaves(chunk)[0].shape[0]
  outs = [fn(jax.tree.map(lambda x, i=i: x[i], chunk), *shared) for i in range(c)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def map_models(fn, models_per_chunk, num_per_model=1, formulation='unrolled', chunk_fn=None):
  """Applies ``fn(per_model_args, *shared)`` to every model of stacked pytrees.

  The first ``num_per_model`` arguments of the mapped function are stacked
  over models (passed to ``fn`` as one tuple); the rest are shared.

  Scans over chunks of ``models_per_chunk`` models; within a chunk the calls
  are unrolled ('unrolled': each model's ops stay dense, bit-identical to the
  model run alone) or vectorised ('vmap': batched/grouped ops, faster on
  accelerators, not guaranteed bit-identical to a lone model); ``chunk_fn``
  replaces both (``run_chunk``).
  """

  def mapped(*per_model_and_shared):
    per_model, shared = per_model_and_shared[:num_per_model], per_model_and_shared[num_per_model:]
    n = jax.tree.leaves(per_model)[0].shape[0]
    c = models_per_chunk
    if n % c:
      raise ValueError(f'{n} models per device is not a multiple of '
                       f'ensemble.models_per_chunk={c}.')
    chunks = jax.tree.map(lambda x: x.reshape((n // c, c) + x.shape[1:]), per_model)
    _, out = jax.lax.scan(
        lambda carry, chunk: (carry, run_chunk(fn, chunk, shared, formulation, chunk_fn)),
        None, chunks)
    return jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), out)

  return mapped


def update_chunk(fn, models_per_chunk, num_per_model=1, formulation='unrolled', chunk_fn=None):
  """The body of a host loop over chunks: ``(outputs, chunk, *args) -> outputs``.

  ``num_per_model`` counts the stacked arguments after ``outputs``.

  Runs ``fn(per_model_args, *shared)`` on models ``[chunk * c, (chunk + 1) * c)``
  of the stacked arguments and writes the results into that slice of
  ``outputs`` (a pytree stacked like ``fn``'s result; donate it to update in
  place). ``fn`` sees the chunk's current outputs as its first per-model
  argument, so a state can be updated where it lies.
  """
  c = models_per_chunk

  def body(outputs, chunk, *per_model_and_shared):
    per_model, shared = per_model_and_shared[:num_per_model], per_model_and_shared[num_per_model:]
    start = chunk * c
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, c)
    out = run_chunk(fn, jax.tree.map(take, (outputs,) + tuple(per_model)), shared, formulation,
                    chunk_fn)
    put = lambda buf, o: jax.lax.dynamic_update_slice_in_dim(buf, o.astype(buf.dtype), start, 0)
    return jax.tree.map(put, outputs, out)

  return body


def shard_map_models(fn, mesh, models_per_chunk, num_per_model, num_shared,
                     formulation='unrolled', chunk_fn=None):
  """shard_map(map_models(fn)) over ``mesh``: per-model args first (sharded), then shared ones."""
  mapped = map_models(fn, models_per_chunk, num_per_model, formulation, chunk_fn)
  specs = (P(MODELS),) * num_per_model + (P(),) * num_shared
  return jax.shard_map(mapped, mesh=mesh, in_specs=specs, out_specs=P(MODELS), check_vma=False)


def jit_chunk_update(fn, mesh, models_per_chunk, num_per_model, num_shared,
                     formulation='unrolled', chunk_fn=None, compiler_options=None):
  """shard_map(update_chunk(fn)) over ``mesh``, jitted with the outputs donated
  (and XLA ``compiler_options``, if any)."""
  body = update_chunk(fn, models_per_chunk, num_per_model, formulation, chunk_fn)
  specs = (P(MODELS), P()) + (P(MODELS),) * num_per_model + (P(),) * num_shared
  sharded = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(MODELS), check_vma=False)
  return jax.jit(sharded, donate_argnums=0, compiler_options=compiler_options)


def host_loop(fn, chunk_update, num_per_model, num_chunks, zeros):
  """run(*args) -> ``fn``'s outputs stacked over models, computed chunk by chunk on the host.

  ``chunk_update``: ``jit_chunk_update`` of ``fn`` (reading its per-model
  arguments after the outputs slice); ``num_chunks``: chunks per device;
  ``zeros(shape, dtype)``: a model-sharded (N, *shape) buffer for the loop to fill.
  """
  shapes = {}

  def one_model(*args):
    first = jax.tree.map(lambda x: x[0], args[:num_per_model])
    return fn(tuple(first), *args[num_per_model:])

  def run(*args):
    signature = tuple((x.shape, x.dtype) for x in jax.tree.leaves(args))
    if signature not in shapes:  # trace once per input shape, not per call
      shapes[signature] = jax.eval_shape(one_model, *args)
    outputs = jax.tree.map(lambda s: zeros(s.shape, s.dtype), shapes[signature])
    for chunk in range(num_chunks):
      outputs = chunk_update(outputs, jnp.int32(chunk), *args)
    return outputs

  return run
