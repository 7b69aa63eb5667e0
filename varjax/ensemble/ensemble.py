"""N models as one program: stacked states, the 'models' mesh, the jitted ensemble step.

Every per-model array has a leading models axis sharded over all devices
(``mesh.py``); data is replicated. Inside ``shard_map`` each device runs its
own models in chunks of ``models_per_chunk`` (``chunk_loop.py``: a scan or a
host loop; 'unrolled', 'vmap' or 'grad_of_sum' within a chunk), the choices
that 'auto' makes per platform in ``ensemble_options.py``.

The programs are built from abstract shapes for any mesh (``programs.py``,
``varjax.aot``); arrays are placed only when a program first runs.

Independence: model ``first_model_id + k`` takes its init, data order and
augmentation keys from ``(seed, id)`` alone (``model_key``), and nothing couples
two models, so a model's results do not depend on N, on its chunk, or on the
device count. On CPU they are bit-identical (tests/ensemble_test.py).

Example:
  >>> ens = Ensemble(config, num_train=40_000)                       # doctest: +SKIP
  >>> state = ens.init(whiten_kernel)                                # doctest: +SKIP
  >>> state, metrics = ens.train_step(state, ens.orders(0), images, labels, 0)  # doctest: +SKIP
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from varjax import analysis
from varjax.ensemble import chunk_loop as chunk_loop_lib
from varjax import errors
from varjax.data import cifar10
from varjax.measures import difficulty as difficulty_lib
from varjax.ensemble import options
from varjax.data import label_noise
from varjax.ensemble import chunk_fit as memory_plan
from varjax.ensemble import mesh as mesh_lib
from varjax.ensemble import programs
from varjax.training import recipe as recipe_lib
from varjax.training import step as step_lib
from varjax.ensemble import grid as sweep
from varjax.models import airbench

PURPOSES = ('init', 'order', 'augment')


def model_key(seed, purpose, model_id, vary):
  """The key of one model for one purpose; shared by all models unless ``purpose`` varies."""
  base = jax.random.fold_in(jax.random.key(seed), PURPOSES.index(purpose))
  return jax.random.fold_in(base, model_id) if purpose in vary else base


class Ensemble:
  """The programs of an ensemble run, and the arrays that parameterise them once placed.

  The programs (init, orders, train step, evaluation outputs, analysis update)
  are built from the config and the mesh alone, for any devices: real, fake
  CPU, or compile-only (``varjax.aot``); ``programs.program(ens, name)`` gives
  each one's jitted function with its abstract arguments. The model ids and
  hyperparameters go onto the devices only when a program first runs.

  ``memory_bytes``: per-device memory for choosing ``models_per_chunk``
  (default: what the device reports). With ``ensemble.models_per_chunk`` unset
  on an accelerator the chunk is fitted to the compiled train step and
  evaluation batch (``memory_plan.fit_models_per_chunk``).
  """

  def __init__(self, config, num_train, mesh=None, memory_bytes=None):
    self.config = config
    self.mesh = mesh_lib.make_mesh() if mesh is None else mesh
    self.num_models = config.num_models
    num_devices = self.mesh.devices.size
    if self.num_models % num_devices:
      raise errors.ConfigError(
          f'num_models={self.num_models} is not a multiple of the {num_devices} devices; '
          f'use a multiple of {num_devices} (e.g. '
          f'--config.num_models={-(-self.num_models // num_devices) * num_devices}).')
    per_device = self.num_models // num_devices
    platform = self.mesh.devices.flat[0].platform
    chunk = config.ensemble.models_per_chunk
    if memory_bytes is None:
      memory_bytes = memory_plan.device_memory_bytes(self.mesh.devices.flat[0])
    self.memory_bytes = memory_bytes
    options.check_choice('ensemble.compute_dtype', config.ensemble.compute_dtype,
                         tuple(options.COMPUTE_DTYPES) + ('auto',))
    self.compute_dtype = options.resolve_compute_dtype(config.ensemble.compute_dtype, platform)
    dtype_bytes = 2 if self.compute_dtype == 'bfloat16' else 4
    # The rough formula's choice; on accelerators only the first guess.
    self.formula_models_per_chunk = memory_plan.default_models_per_chunk(
        per_device, platform, memory_bytes,
        memory_plan.activation_bytes_per_model(config.model.widths, config.train.batch_size,
                                               dtype_bytes=dtype_bytes))
    if chunk is None:
      chunk = self.formula_models_per_chunk
    if chunk < 1 or per_device % chunk:
      raise errors.ConfigError(f'ensemble.models_per_chunk={chunk} must divide the '
                                     f'{per_device} models per device.')
    self.models_per_chunk = chunk
    options.check_choice('ensemble.formulation', config.ensemble.formulation,
                         options.FORMULATIONS)
    self.formulation = options.resolve_formulation(config.ensemble.formulation, platform)
    options.check_choice('ensemble.chunk_loop', config.ensemble.chunk_loop, options.CHUNK_LOOPS)
    self.chunk_loop = options.resolve_chunk_loop(config.ensemble.chunk_loop, platform)
    dtype = options.COMPUTE_DTYPES[self.compute_dtype]
    self.vary = tuple(config.randomness.vary)
    unknown = set(self.vary) - set(PURPOSES)
    if unknown:
      raise errors.ConfigError(f'randomness.vary has unknown sources {sorted(unknown)}; '
                       f'choose from {PURPOSES}.')
    self.seed = config.seed
    options.check_choice('ensemble.conv_weight_grad', config.ensemble.conv_weight_grad,
                         options.CONV_WEIGHT_GRADS)
    options.check_choice('ensemble.cpu_conv_library', config.ensemble.cpu_conv_library,
                         options.CPU_CONV_LIBRARIES)
    self.step_compiler_options = options.step_compiler_options(
        config.ensemble.cpu_conv_library, platform)
    if config.ensemble.conv_grad_slice < 1:
      raise errors.ConfigError('ensemble.conv_grad_slice must be >= 1, got '
                                     f'{config.ensemble.conv_grad_slice}.')
    self.model = airbench.from_config(
        config.model, dtype,
        options.resolve_conv_weight_grad(config.ensemble.conv_weight_grad, platform),
        config.ensemble.conv_grad_slice,
        config.difficulty.depth_probes if config.difficulty.prediction_depth else (),
        num_classes=cifar10.num_classes(config.data))
    self.recipe = recipe_lib.Recipe.from_config(config, num_train)
    # Training examples [0, num_tracked) have their forgetting recorded (0: off).
    self.num_tracked = (min(config.difficulty.forgetting_probe_size, num_train)
                       if config.difficulty.forgetting else 0)
    self.model_ids = np.arange(config.first_model_id,
                               config.first_model_id + self.num_models, dtype=np.int32)
    self.model_hparams = sweep.model_hparams(config, self.num_models)  # host arrays
    self.groups = sweep.model_groups(config, self.num_models)
    self._placed = None
    self._zeros = {}
    self._executables, self.compile_seconds = {}, {}
    self.analysis_update = jax.jit(analysis.update, donate_argnums=0)
    self._build()
    self.chunk_trials = {}
    # Fitted by compiling the programs (scan chunk loop) where memory is the limit.
    if (config.ensemble.models_per_chunk is None and platform != 'cpu'
        and memory_bytes is not None and self.chunk_loop == 'scan'):
      self.models_per_chunk, self.chunk_trials = memory_plan.fit_models_per_chunk(
          per_device, chunk, memory_bytes, self._chunk_bytes)
      self._build()

  def _chunk_bytes(self, chunk):
    """(fixed, temporary) bytes per device of the larger of the train step and the
    evaluation batch (TTA views: more images per model than a training batch)
    compiled for ``chunk``; None when the compiler runs out of memory."""
    self.models_per_chunk = chunk
    self._build()
    try:
      return max((memory_plan.compiled_bytes(self.compile(name))
                  for name in ('train_step', 'eval_outputs')), key=sum)
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' in str(e):  # the compiler's own out-of-memory
        return None
      raise

  def _place(self):
    """The model ids and hyperparameters on the devices (placed once, on first use)."""
    if self._placed is None:
      shard = mesh_lib.model_sharding(self.mesh)
      self._placed = (jax.device_put(self.model_ids, shard),
                      jax.device_put(self.model_hparams, shard))
    return self._placed

  @property
  def ids(self):
    return self._place()[0]

  @property
  def hparams(self):
    return self._place()[1]

  def _sharded(self, fn, num_per_model, num_shared, chunk_fn=None):
    """``chunk_loop.shard_map_models`` of ``fn`` over this ensemble's mesh and chunks."""
    return chunk_loop_lib.shard_map_models(fn, self.mesh, self.models_per_chunk, num_per_model,
                                           num_shared, self.formulation, chunk_fn)

  def _sharded_chunk(self, fn, num_per_model, num_shared, chunk_fn=None, compiler_options=None):
    """``chunk_loop.jit_chunk_update`` of ``fn`` over this ensemble's mesh and chunks."""
    return chunk_loop_lib.jit_chunk_update(fn, self.mesh, self.models_per_chunk, num_per_model,
                                           num_shared, self.formulation, chunk_fn,
                                           compiler_options)

  @property
  def num_chunks(self):
    """Chunks per device: the trip count of the chunk loop."""
    return self.num_models // self.mesh.devices.size // self.models_per_chunk

  def _build(self):
    self._compiled = {}
    recipe, model, seed, vary = self.recipe, self.model, self.seed, self.vary
    key = lambda purpose, model_id: model_key(seed, purpose, model_id, vary)

    def init_one(per_model, whiten_kernel):
      model_id, hparams = per_model
      return step_lib.init_model_state(model, key('init', model_id), whiten_kernel,
                                       hparams, recipe)

    def order_one(per_model, epoch):
      model_id, = per_model
      return jax.random.permutation(jax.random.fold_in(key('order', model_id), epoch),
                                    recipe.num_train).astype(jnp.int32)

    forward = step_lib.make_eval_forward(model, recipe.tta_level)
    self._eval_one = lambda per_model, images: forward(
        step_lib.final_variables(per_model[0], recipe), images)[0]
    self._embed_one = lambda per_model, images: self.embed_one(per_model[0], images)
    difficulty = self.config.difficulty
    self.depth_k = difficulty.depth_k if difficulty.prediction_depth else None
    outputs = difficulty_lib.make_eval_outputs(forward, model.num_classes, model.head_scale,
                                               self.depth_k, difficulty.normalized_margin)
    self._outputs_one = lambda per_model, images, labels, support_labels: outputs(
        step_lib.final_variables(per_model[0], recipe), images, labels, per_model[1:],
        support_labels)
    # Forgetting probes: the model as it stands after an epoch, without TTA.
    plain = step_lib.make_eval_logits(model, 0)

    def forgetting_one(per_model, images, labels):
      state, = per_model
      correct = plain(step_lib.final_variables(state, recipe), images).argmax(-1) == labels
      return difficulty_lib.update_forgetting(state['forgetting'], correct)

    self._forgetting_one = forgetting_one
    # Init and orders are cheap and run once per run / epoch: always one scan.
    self._init = jax.jit(self._sharded(init_one, 2, 1))
    self._orders = jax.jit(self._sharded(order_one, 1, 1))
    # Two step programs: while the whitening bias trains, and after it froze (no
    # gradient through the whitening layer); each is compiled on first use.
    self._steps = {live: self._step_program(key, live) for live in (True, False)}

  def embed_one(self, state, images):
    """One model's TTA-averaged pooled embeddings (b, D_l) at each depth probe place."""
    forward = step_lib.make_eval_forward(self.model, self.recipe.tta_level)
    return forward(step_lib.final_variables(state, self.recipe), images)[1]['probes']

  def _step_program(self, key, whiten_bias_live):
    """The jitted train step of every model (see ``train_step``)."""
    recipe, model = self.recipe, self.model
    train_step = step_lib.make_train_step(model, recipe, whiten_bias_live)

    def step_one(per_model, images, labels, step):
      state, hparams, model_id, order = per_model
      return train_step(state, hparams, key('augment', model_id), order, images, labels, step,
                        label_noise.noise_key(self.seed, model_id))

    step_chunk = None
    if self.formulation == 'grad_of_sum':
      grad_of_sum = step_lib.make_grad_of_sum_step(model, recipe, whiten_bias_live)

      def step_chunk(per_model, images, labels, step):  # a whole chunk in one gradient
        state, hparams, model_ids, orders = per_model
        keys = jax.vmap(lambda i: key('augment', i))(model_ids)
        noise_keys = jax.vmap(lambda i: label_noise.noise_key(self.seed, i))(model_ids)
        return grad_of_sum(state, hparams, keys, orders, images, labels, step, noise_keys)

    if self.chunk_loop == 'scan':
      # The state (first argument) is donated: updated in place, no second copy.
      return jax.jit(self._sharded(step_one, 4, 3, step_chunk), donate_argnums=0,
                     compiler_options=self.step_compiler_options)
    # outputs = (state, metrics); the state is read from the outputs slice.
    from_outputs = lambda per_model: (per_model[0][0],) + tuple(per_model[1:])
    return self._sharded_chunk(
        lambda per_model, *shared: step_one(from_outputs(per_model), *shared), 3, 3,
        step_chunk and (lambda chunk, *shared: step_chunk(from_outputs(chunk), *shared)),
        self.step_compiler_options)

  def _per_model(self, name, fn, num_per_model, num_shared):
    """``fn(per_model_args, *shared)`` on every model, compiled once per ``name``.

    Returns run(*args) (stacked per-model arguments first, then shared ones)
    -> fn's outputs stacked over models: one scan, or the host chunk loop.
    """
    if name in self._compiled:
      return self._compiled[name]
    if self.chunk_loop == 'scan':
      run = jax.jit(self._sharded(fn, num_per_model, num_shared))
    else:
      chunk_fn = self._sharded_chunk(lambda per_model, *shared: fn(per_model[1:], *shared),
                                     num_per_model, num_shared)
      # _build drops this cache whenever models_per_chunk (so num_chunks) changes.
      run = chunk_loop_lib.host_loop(fn, chunk_fn, num_per_model, self.num_chunks, self.zeros)

    self._compiled[name] = run
    return run

  def per_model(self, name, fn, num_per_model, num_shared):
    """The per-model machinery (``_per_model``) for probes defined elsewhere (lenses.py)."""
    return self._per_model(name, fn, num_per_model, num_shared)

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

  def train_step(self, state, orders, images, labels, step):
    """One optimiser step of every model; ``state`` is donated.

    Returns (state, metrics) with metrics {'loss', 'accuracy'}, each (N,).
    """
    program = self._steps[step < self.recipe.whiten_bias_steps]
    step = jnp.int32(step)
    if self.chunk_loop == 'scan':
      return program(state, self.hparams, self.ids, orders, images, labels, step)
    outputs = (state, {'loss': self.zeros(()), 'accuracy': self.zeros(())})
    for chunk in range(self.num_chunks):
      outputs = program(outputs, jnp.int32(chunk), self.hparams, self.ids, orders, images,
                        labels, step)
    return outputs

  def logits(self, state, images):
    """(N, b, K) float32 TTA logits of every model's final weights, left on the device."""
    return self._per_model('logits', self._eval_one, 1, 1)(state, images)

  def embeddings(self, state, images):
    """The TTA-averaged pooled embeddings at each depth probe place: a tuple of (N, b, D_l)."""
    return self._per_model('embeddings', self._embed_one, 1, 1)(state, images)

  def eval_outputs(self, state, images, labels, support=(), support_labels=None):
    """Logits and the difficulty probes the config asks for (difficulty.make_eval_outputs).

    ``support``: a tuple of (N, S, width) embeddings from ``embeddings`` (with
    ``difficulty.prediction_depth``), ``support_labels`` (S,) their labels.
    """
    if support_labels is None:
      support_labels = jnp.zeros((1,), jnp.int32)  # unused without depth probes
    run = self._per_model('eval_outputs', self._outputs_one, 1 + len(support), 3)
    return run(state, *support, images, labels, support_labels)

  def record_forgetting(self, state, images, labels):
    """``state`` with each model's forgetting record updated by one epoch's probe correctness."""
    records = self._per_model('forgetting', self._forgetting_one, 1, 2)(state, images, labels)
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

  def jitted(self, name, num_support=0):
    """The jitted function of program ``name`` (``programs.PROGRAMS``; scan chunk loop).

    ``num_support``: the prediction-depth support embeddings ``eval_outputs`` takes.
    """
    if self.chunk_loop != 'scan':
      raise ValueError("Programs from abstract shapes follow the 'scan' chunk loop; set "
                       "ensemble.chunk_loop='scan'.")
    if name == 'eval_outputs':
      return self._per_model('eval_outputs', self._outputs_one, 1 + num_support, 3)
    return {'init': self._init, 'train_step': self._steps[True],
            'train_step_frozen': self._steps[False],
            'analysis_update': self.analysis_update}[name]

  def compile(self, name, **kwargs):
    """``programs.program(self, name, **kwargs)`` compiled for the mesh's devices.

    Executables are kept per chunk size (fitting the chunk compiles the train
    step); ``compile_seconds[(name, models_per_chunk)]``: its compile wall time.
    """
    # The same program whatever the kwargs that do not change it (eval: the batch).
    shape = tuple(sorted(kwargs.items())) if name == 'analysis_update' else ()
    if name == 'eval_outputs':
      shape = min(self.config.eval.batch_size,
                  kwargs.get('num_examples') or self.config.eval.batch_size)
    key = (name, self.models_per_chunk, shape)
    if key not in self._executables:
      start = time.perf_counter()
      fn, args = programs.program(self, name, **kwargs)
      self._executables[key] = fn.trace(*args).lower().compile()
      self.compile_seconds[name, self.models_per_chunk] = time.perf_counter() - start
    return self._executables[key]
