"""N models as one program: stacked states, the 'models' mesh, the ensemble's programs.

Every per-model array has a leading models axis sharded over all devices
(``mesh.py``); data is replicated. Inside ``shard_map`` each device runs its
own models in chunks of ``models_per_chunk`` (``chunk_loop.py``: a scan or a
host loop; 'unrolled', 'vmap' or 'grad_of_sum' within a chunk), the choices
that 'auto' makes per platform in ``options.py``.

The programs are built from the config and the mesh alone, for any devices
(real, fake CPU, or compile-only: ``abstract.py``, ``varjax.aot``); each is
compiled once and its executable reused (``programs.py``). The model ids and
hyperparameters go onto the devices only when a program first runs.

Independence: model ``first_model_id + k`` takes its init, data order and
augmentation keys from ``(seed, id)`` alone (varjax/keys.py), and nothing
couples two models, so a model's results do not depend on N, on its chunk, or
on the device count. On CPU they are bit-identical (tests/ensemble_test.py).

Example:
  >>> ens = Ensemble(config, num_train=40_000)                       # doctest: +SKIP
  >>> state = ens.init(whiten_kernel)                                # doctest: +SKIP
  >>> state, metrics = ens.train_step(state, ens.orders(0), images, labels, 0)  # doctest: +SKIP
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from varjax import analysis
from varjax import keys
from varjax.data import cifar10
from varjax.ensemble import chunk_fit
from varjax.ensemble import chunk_loop as chunk_loop_lib
from varjax.ensemble import grid
from varjax.ensemble import mesh as mesh_lib
from varjax.ensemble import options as options_lib
from varjax.ensemble import programs
from varjax.errors import ConfigError
from varjax.measures import difficulty as difficulty_lib
from varjax.models import airbench
from varjax.training import recipe as recipe_lib
from varjax.training import step as step_lib


class Ensemble:
  """The programs of an ensemble run, and the arrays that parameterise them once placed.

  ``models_per_chunk``: models per chunk of the chunk loop (default: the
  config's, else a first guess from the activation formula and ``memory_bytes``,
  the per-device memory, by default what this process's device reports;
  ensemble/build.py fits it to the compiled programs on accelerators).
  """

  def __init__(self, config, num_train, mesh=None, models_per_chunk=None, memory_bytes=None):
    self.config = config
    self.mesh = mesh_lib.make_mesh() if mesh is None else mesh
    self.num_models = config.num_models
    num_devices = self.mesh.devices.size
    if self.num_models % num_devices:  # the devices, not the config, decide this
      raise ConfigError(
          f'num_models={self.num_models} is not a multiple of the {num_devices} devices; '
          f'use a multiple of {num_devices} (e.g. '
          f'--config.num_models={-(-self.num_models // num_devices) * num_devices}).')
    self.platform = self.mesh.devices.flat[0].platform
    self.options = options_lib.resolve(config.ensemble, self.platform)
    per_device = self.num_models // num_devices
    self.formula_models_per_chunk = chunk_fit.default_models_per_chunk(
        per_device, self.platform,
        chunk_fit.local_memory_bytes(self.mesh) if memory_bytes is None else memory_bytes,
        chunk_fit.activation_bytes_per_model(
            config.model.widths, config.train.batch_size,
            dtype_bytes=2 if self.options.compute_dtype == 'bfloat16' else 4))
    self.models_per_chunk = (models_per_chunk or config.ensemble.models_per_chunk
                             or self.formula_models_per_chunk)
    if per_device % self.models_per_chunk:
      raise ConfigError(f'ensemble.models_per_chunk={self.models_per_chunk} must divide the '
                        f'{per_device} models per device.')
    difficulty = config.difficulty
    self.depth_k = difficulty.depth_k if difficulty.prediction_depth else None
    self.model = airbench.from_config(
        config.model, self.options.dtype, self.options.conv_weight_grad,
        self.options.conv_grad_slice, difficulty.depth_probes if self.depth_k else (),
        num_classes=cifar10.num_classes(config.data), max_pool=self.options.max_pool)
    self.recipe = dataclasses.replace(recipe_lib.Recipe.from_config(config, num_train),
                                      crop=self.options.augment_crop)
    # Training examples [0, num_tracked) have their forgetting recorded (0: off).
    self.num_tracked = (min(difficulty.forgetting_probe_size, num_train)
                        if difficulty.forgetting else 0)
    self.seed, self.vary = config.seed, tuple(config.randomness.vary)
    self.model_ids = np.arange(config.first_model_id,
                               config.first_model_id + self.num_models, dtype=np.int32)
    self.model_hparams = grid.model_hparams(config, self.num_models)  # host arrays
    self.groups = grid.model_groups(config, self.num_models)
    self._placed, self._zeros, self._per_model_programs = None, {}, {}
    self.analysis_update = programs.Program(
        'analysis_update', jax.jit(analysis.update, donate_argnums=0))
    self._init = programs.Program('init', jax.jit(self._sharded(self._init_one, 2, 1)))
    self._orders = programs.Program('orders', jax.jit(self._sharded(self._order_one, 1, 1)))
    # Two step programs: while the whitening bias trains, and after it froze (no
    # gradient through the whitening layer).
    self._steps = {live: self._step_program(live) for live in (True, False)}

  # Options, as the rest of the code names them.
  formulation = property(lambda self: self.options.formulation)
  compute_dtype = property(lambda self: self.options.compute_dtype)
  chunk_loop = property(lambda self: self.options.chunk_loop)

  @property
  def num_chunks(self):
    """Chunks per device: the trip count of the chunk loop."""
    return self.num_models // self.mesh.devices.size // self.models_per_chunk

  def _key(self, purpose, model_id):
    return keys.model_key(self.seed, purpose, model_id, self.vary)

  def _place(self):
    """The model ids and hyperparameters on the devices (placed once, on first use)."""
    if self._placed is None:
      shard = mesh_lib.model_sharding(self.mesh)
      self._placed = (jax.device_put(self.model_ids, shard),
                      jax.device_put(self.model_hparams, shard))
    return self._placed

  ids = property(lambda self: self._place()[0])
  hparams = property(lambda self: self._place()[1])

  def _sharded(self, fn, num_per_model, num_shared, chunk_fn=None):
    """``chunk_loop.shard_map_models`` of ``fn`` over this ensemble's mesh and chunks."""
    return chunk_loop_lib.shard_map_models(fn, self.mesh, self.models_per_chunk, num_per_model,
                                           num_shared, self.formulation, chunk_fn)

  def _sharded_chunk(self, fn, num_per_model, num_shared, chunk_fn=None, compiler_options=None):
    """``chunk_loop.jit_chunk_update`` of ``fn`` over this ensemble's mesh and chunks."""
    return chunk_loop_lib.jit_chunk_update(fn, self.mesh, self.models_per_chunk, num_per_model,
                                           num_shared, self.formulation, chunk_fn,
                                           compiler_options)

  # One model's functions: (per-model arguments, *shared) -> per-model outputs.

  def _init_one(self, per_model, whiten_kernel):
    model_id, hparams = per_model
    return step_lib.init_model_state(self.model, self._key('init', model_id), whiten_kernel,
                                     hparams, self.recipe)

  def _order_one(self, per_model, epoch):
    model_id, = per_model
    return jax.random.permutation(jax.random.fold_in(self._key('order', model_id), epoch),
                                  self.recipe.num_train).astype(jnp.int32)

  def _logits_one(self, per_model, images):
    forward = step_lib.make_eval_forward(self.model, self.recipe.tta_level)
    return forward(step_lib.final_variables(per_model[0], self.recipe), images)[0]

  def embed_one(self, state, images):
    """One model's TTA-averaged pooled embeddings (b, D_l) at each depth probe place."""
    forward = step_lib.make_eval_forward(self.model, self.recipe.tta_level)
    return forward(step_lib.final_variables(state, self.recipe), images)[1]['probes']

  def _outputs_one(self, per_model, images, labels, support_labels):
    forward = step_lib.make_eval_forward(self.model, self.recipe.tta_level)
    outputs = difficulty_lib.make_eval_outputs(
        forward, self.model.num_classes, self.model.head_scale, self.depth_k,
        self.config.difficulty.normalized_margin)
    return outputs(step_lib.final_variables(per_model[0], self.recipe), images, labels,
                   per_model[1:], support_labels)

  def _forgetting_one(self, per_model, images, labels):
    # The model as it stands after the epoch, without TTA.
    state, = per_model
    logits = step_lib.make_eval_logits(self.model, 0)(
        step_lib.final_variables(state, self.recipe), images)
    return difficulty_lib.update_forgetting(state['forgetting'], logits.argmax(-1) == labels)

  def _step_program(self, whiten_bias_live):
    """The train step of every model, as a Program (see ``train_step``)."""
    recipe, model, seed = self.recipe, self.model, self.seed
    train_step = step_lib.make_train_step(model, recipe, whiten_bias_live)

    def step_one(per_model, images, labels, step):
      state, hparams, model_id, order = per_model
      return train_step(state, hparams, self._key('augment', model_id), order, images, labels,
                        step, keys.label_noise_key(seed, model_id))

    step_chunk = None
    if self.formulation == 'grad_of_sum':
      grad_of_sum = step_lib.make_grad_of_sum_step(model, recipe, whiten_bias_live)

      def step_chunk(per_model, images, labels, step):  # a whole chunk in one gradient
        state, hparams, model_ids, orders = per_model
        augment_keys = jax.vmap(lambda i: self._key('augment', i))(model_ids)
        noise_keys = jax.vmap(lambda i: keys.label_noise_key(seed, i))(model_ids)
        return grad_of_sum(state, hparams, augment_keys, orders, images, labels, step,
                           noise_keys)

    name = 'train_step' if whiten_bias_live else 'train_step_frozen'
    compiler_options = self.options.step_compiler_options
    if self.chunk_loop == 'scan':
      # The state (first argument) is donated: updated in place, no second copy.
      return programs.Program(name, jax.jit(self._sharded(step_one, 4, 3, step_chunk),
                                            donate_argnums=0,
                                            compiler_options=compiler_options))
    # outputs = (state, metrics); the state is read from the outputs slice.
    from_outputs = lambda per_model: (per_model[0][0],) + tuple(per_model[1:])
    return programs.Program(name, self._sharded_chunk(
        lambda per_model, *shared: step_one(from_outputs(per_model), *shared), 3, 3,
        step_chunk and (lambda chunk, *shared: step_chunk(from_outputs(chunk), *shared)),
        compiler_options))

  def per_model(self, name, fn, num_per_model, num_shared):
    """``fn(per_model_args, *shared)`` on every model, built once per ``name``.

    Returns run(*args) (stacked per-model arguments first, then shared ones)
    -> fn's outputs stacked over models: one scan program, or the host chunk loop.
    """
    if name not in self._per_model_programs:
      if self.chunk_loop == 'scan':
        run = programs.Program(name, jax.jit(self._sharded(fn, num_per_model, num_shared)))
      else:
        chunk_fn = programs.Program(name, self._sharded_chunk(
            lambda per_model, *shared: fn(per_model[1:], *shared), num_per_model, num_shared))
        run = chunk_loop_lib.host_loop(fn, chunk_fn, num_per_model, self.num_chunks,
                                       self.zeros)
      self._per_model_programs[name] = run
    return self._per_model_programs[name]

  def scan_program(self, name, num_support=0):
    """The Program ``name`` (abstract.PROGRAMS) of the 'scan' chunk loop, for compiling
    from abstract arguments; ``num_support``: eval_outputs' depth support sets."""
    if self.chunk_loop != 'scan':
      raise ValueError("Programs from abstract shapes follow the 'scan' chunk loop; set "
                       "ensemble.chunk_loop='scan'.")
    if name == 'eval_outputs':
      return self.per_model('eval_outputs', self._outputs_one, 1 + num_support, 3)
    return {'init': self._init, 'train_step': self._steps[True],
            'train_step_frozen': self._steps[False],
            'analysis_update': self.analysis_update}[name]

  def compile_seconds(self):
    """Seconds spent compiling this ensemble's programs, by program name."""
    found = [self._init, self._orders, self.analysis_update, *self._steps.values(),
             *self._per_model_programs.values()]
    return {p.name: p.compile_seconds for p in found if isinstance(p, programs.Program)}

  def init(self, whiten_kernel):
    """Stacked initial states of all models."""
    kernel = jax.device_put(jnp.asarray(whiten_kernel), mesh_lib.replicated(self.mesh))
    state = self._init(self.ids, self.hparams, kernel)
    if self.num_tracked:  # checkpointed and resumed with the rest of the state
      num_models, num_tracked = self.num_models, self.num_tracked
      records = jax.jit(lambda: jax.vmap(lambda _: difficulty_lib.init_forgetting(num_tracked))(
          jnp.arange(num_models)), out_shardings=mesh_lib.model_sharding(self.mesh))
      state['forgetting'] = records()
    return state

  def orders(self, epoch):
    """(N, num_train) int32: each model's permutation of the training set for ``epoch``."""
    return self._orders(self.ids, jnp.int32(epoch))

  def zeros(self, shape, dtype=jnp.float32):
    """A model-sharded (N, *shape) buffer for the chunk loop to fill, made on the devices."""
    key = (tuple(shape), jnp.dtype(dtype))
    if key not in self._zeros:  # one compiled fill per shape: no host copy per step
      full = (self.num_models,) + key[0]
      self._zeros[key] = jax.jit(lambda: jnp.zeros(full, key[1]),
                                 out_shardings=mesh_lib.model_sharding(self.mesh))
    return self._zeros[key]()

  def step_images(self, images):
    """The training images as the step programs take them, replicated on the mesh:
    rows (N, H * W * C) under the 'batch_crop' augmentation (an image's bytes stay
    together in the TPU's layout), else (N, H, W, C). Place once, before training."""
    rep = mesh_lib.replicated(self.mesh)
    if self.recipe.crop != 'batch_crop':
      return jax.device_put(images, rep)
    if isinstance(images, np.ndarray):
      return jax.device_put(images.reshape(len(images), -1), rep)
    return jax.jit(lambda x: x.reshape(x.shape[0], -1), out_shardings=rep)(images)

  def step_images_shape(self, num_images):
    """The shape ``step_images`` gives ``num_images`` CIFAR-sized images."""
    if self.recipe.crop == 'batch_crop':
      return (num_images, 32 * 32 * 3)
    return (num_images, 32, 32, 3)

  def _step_calls(self, live, state, orders, images, labels, step):
    """(program, argument tuples) of one train step: one call, or one per host-loop chunk."""
    program, step = self._steps[live], jnp.int32(step)
    if self.chunk_loop == 'scan':
      return program, [(state, self.hparams, self.ids, orders, images, labels, step)]
    outputs = (state, {'loss': self.zeros(()), 'accuracy': self.zeros(())})
    return program, [(outputs, jnp.int32(c), self.hparams, self.ids, orders, images, labels,
                      step) for c in range(self.num_chunks)]

  def train_step(self, state, orders, images, labels, step):
    """One optimiser step of every model; ``state`` is donated; ``images`` from
    ``step_images``.

    Returns (state, metrics) with metrics {'loss', 'accuracy'}, each (N,).
    """
    program, calls = self._step_calls(step < self.recipe.whiten_bias_steps, state, orders,
                                      images, labels, step)
    if self.chunk_loop == 'scan':
      return program(*calls[0])
    outputs = calls[0][0]
    for args in calls:
      outputs = program(outputs, *args[1:])
    return outputs

  def compile_steps(self, state, orders, images, labels):
    """Compiles both training-step programs for these arguments (nothing runs), so no step
    waits for a compile; returns the seconds it took."""
    seconds = 0.0
    for live in (True, False):
      program, calls = self._step_calls(live, state, orders, images, labels, 0)
      before = program.compile_seconds
      program.compile(*calls[0])
      seconds += program.compile_seconds - before
    return seconds

  def logits(self, state, images):
    """(N, b, K) float32 TTA logits of every model's final weights, left on the device."""
    return self.per_model('logits', self._logits_one, 1, 1)(state, images)

  def embeddings(self, state, images):
    """The TTA-averaged pooled embeddings at each depth probe place: a tuple of (N, b, D_l)."""
    return self.per_model('embeddings', lambda p, x: self.embed_one(p[0], x), 1, 1)(
        state, images)

  def eval_outputs(self, state, images, labels, support=(), support_labels=None):
    """Logits and the difficulty probes the config asks for (difficulty.make_eval_outputs).

    ``support``: a tuple of (N, S, width) embeddings from ``embeddings`` (with
    ``difficulty.prediction_depth``), ``support_labels`` (S,) their labels.
    """
    if support_labels is None:
      support_labels = jnp.zeros((1,), jnp.int32)  # unused without depth probes
    run = self.per_model('eval_outputs', self._outputs_one, 1 + len(support), 3)
    return run(state, *support, images, labels, support_labels)

  def record_forgetting(self, state, images, labels):
    """``state`` with each model's forgetting record updated by one epoch's correctness."""
    records = self.per_model('forgetting', self._forgetting_one, 1, 2)(state, images, labels)
    return {**state, 'forgetting': records}

  def analysis_init(self, num_examples, num_classes, groups=None, analysis_config=None):
    """Empty analysis accumulators (host-built) for evaluating every model on
    ``num_examples`` examples; ``groups`` defaults to ``self.groups``."""
    a = self.config.analysis if analysis_config is None else analysis_config
    return analysis.init(
        self.num_models, num_examples, num_classes, self.groups if groups is None else groups,
        num_groups=int(self.groups.max()) + 1,
        alpha_trim_resamples=a.alpha_trim_resamples, seed=a.seed,
        margin_quantiles=tuple(a.margin_quantiles), ensemble_subsets=a.ensemble_subsets,
        seeds_needed_deltas=tuple(a.seeds_needed_deltas),
        seeds_needed_power=a.seeds_needed_power, seeds_needed_alpha=a.seeds_needed_alpha,
        prediction_depth=self.depth_k is not None,
        feature_dim=self.model.widths[-1] if self.config.difficulty.normalized_margin else None)
