"""An Ensemble's programs compiled from abstract arguments, without data or devices to run on.

The arguments are ShapeDtypeStructs with the shardings the run passes:
per-model arrays split over the mesh's 'models' axis, data and analysis state
replicated. ``compile(ens, name)`` compiles a program for the mesh's devices,
real or compile-only (``varjax.aot``, and fitting ``models_per_chunk``), into
the program's kept executables (ensemble/programs.py).

Example:
  >>> executable = compile(ens, 'train_step')                        # doctest: +SKIP
  >>> executable.memory_analysis()                                    # doctest: +SKIP
"""

import jax
import jax.numpy as jnp

from varjax.ensemble import mesh as mesh_lib
from varjax.measures import difficulty as difficulty_lib

PROGRAMS = ('init', 'train_step', 'eval_outputs', 'analysis_update')
# The step after the whitening bias froze (no gradient through that layer);
# aot/plan.py compiles it alongside 'train_step' for the run's bound.
TRAIN_STEPS = ('train_step', 'train_step_frozen')
ALL_PROGRAMS = PROGRAMS + TRAIN_STEPS[1:]


def _models_axis(ens, shapes):
  shard = mesh_lib.model_sharding(ens.mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shard), shapes)


def _shared(ens, shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=mesh_lib.replicated(ens.mesh))


def state(ens):
  """ShapeDtypeStructs (model-sharded) of the stacked states ``ens.init`` returns."""
  ids, hparams, kernel = arguments(ens, 'init')
  shapes = jax.eval_shape(ens.scan_program('init').jitted, ids, hparams, kernel)
  if ens.num_tracked:
    shapes['forgetting'] = jax.eval_shape(jax.vmap(
        lambda _: difficulty_lib.init_forgetting(ens.num_tracked)), jnp.arange(ens.num_models))
  return _models_axis(ens, shapes)


def arguments(ens, name, num_examples=None, num_classes=None):
  """The abstract arguments of program ``name`` of ``ens`` (``Ensemble.scan_program``).

  init(ids, hparams, whitening kernel); train_step and train_step_frozen(state,
  hparams, ids, orders, training images, labels, step); eval_outputs(state,
  *support, images, labels, support labels) for one batch of ``eval.batch_size``
  test images out of ``num_examples`` (default: one batch); analysis_update(stats,
  logits, labels, example ids, probe outputs) of that batch.
  """
  if name not in ALL_PROGRAMS:
    raise ValueError(f'Unknown program {name!r}; choose from {ALL_PROGRAMS}.')
  n, config = ens.num_models, ens.config
  ids = _models_axis(ens, jax.ShapeDtypeStruct((n,), jnp.int32))
  hparams = _models_axis(ens, jax.eval_shape(lambda: ens.model_hparams))
  if name == 'init':
    k = config.model.whiten_kernel_size
    return ids, hparams, _shared(ens, (k, k, 3, ens.model.whiten_width), jnp.float32)
  stacked = state(ens)
  if name in TRAIN_STEPS:
    num_train = ens.recipe.num_train
    return (stacked, hparams, ids,
            _models_axis(ens, jax.ShapeDtypeStruct((n, num_train), jnp.int32)),
            _shared(ens, ens.step_images_shape(num_train), jnp.uint8),
            _shared(ens, (num_train,), jnp.int32), _shared(ens, (), jnp.int32))
  eval_args = _eval_arguments(ens, stacked, num_examples)
  if name == 'eval_outputs':
    return eval_args
  outputs = _models_axis(ens, jax.eval_shape(ens.scan_program('eval_outputs').jitted,
                                             *eval_args))
  logits = outputs.pop('logits')
  num_classes = num_classes or ens.model.num_classes
  stats = jax.eval_shape(lambda: ens.analysis_init(num_examples or config.eval.batch_size,
                                                   num_classes))
  stats = jax.tree.map(lambda s: _shared(ens, s.shape, s.dtype), stats)
  labels = eval_args[-2]
  ids = _shared(ens, labels.shape, jnp.int32)
  return stats, logits, labels, ids, outputs


def _eval_arguments(ens, stacked, num_examples):
  config = ens.config
  batch = min(config.eval.batch_size, num_examples or config.eval.batch_size)
  support, support_labels = (), _shared(ens, (1,), jnp.int32)
  if ens.depth_k:
    size = config.difficulty.depth_support_size
    one_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked)
    places = jax.eval_shape(ens.embed_one, one_state,
                            jax.ShapeDtypeStruct((size, 32, 32, 3), jnp.uint8))
    support = tuple(_models_axis(ens, jax.ShapeDtypeStruct((ens.num_models,) + p.shape,
                                                           jnp.float32)) for p in places)
    support_labels = _shared(ens, (size,), jnp.int32)
  return (stacked, *support, _shared(ens, (batch, 32, 32, 3), jnp.uint8),
          _shared(ens, (batch,), jnp.int32), support_labels)


def program(ens, name):
  """The Program ``name`` of ``ens`` (its scan chunk loop)."""
  support = len(ens.model.probes) if ens.depth_k and name == 'eval_outputs' else 0
  return ens.scan_program(name, num_support=support)


def compile(ens, name, num_examples=None, num_classes=None):  # pylint: disable=redefined-builtin
  """Program ``name`` of ``ens`` compiled for the mesh's devices; its executable is kept."""
  return program(ens, name).compile(*arguments(ens, name, num_examples, num_classes))
