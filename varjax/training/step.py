"""One model's training step and evaluation, as pure functions (the ensemble maps them).

A model's state is a dict of arrays:
  params, batch_stats: the Flax variables being trained;
  opt_state: the optimiser state (momentum);
  ema_params, ema_batch_stats: the lookahead average, which becomes the model.

Example:
  >>> recipe = Recipe.from_config(config, num_train=40_000)   # training/recipe.py  # doctest: +SKIP
  >>> train_step = make_train_step(model, recipe)                       # doctest: +SKIP
  >>> state, metrics = train_step(state, hparams, keys, order, images, labels, step)
"""

import jax
import jax.numpy as jnp
import optax

from varjax.data import augment
from varjax.data import label_noise as label_noise_lib
from varjax.training import optim
from varjax.models import airbench


def lr_scales(params, bias_lr_scale):
  """Per-leaf lr multipliers: BatchNorm biases x bias_lr_scale, whitening filters frozen."""

  def scale(path, _):
    names = [getattr(k, 'key', str(k)) for k in path]
    if names[-1] == 'whiten_kernel':
      return 0.0
    if any(n.startswith('norm') for n in names):
      return bias_lr_scale
    return 1.0

  return jax.tree_util.tree_map_with_path(scale, params)


def make_optimizer(params_template, hparams, recipe):
  return optim.nesterov_sgd(hparams['lr'], hparams['weight_decay'], recipe.momentum,
                            lr_scales(params_template, recipe.bias_lr_scale))


def smoothed_cross_entropy_sum(logits, labels, smoothing):
  """Summed label-smoothed CE; targets (1 - s) * onehot + s / K, as torch."""
  k = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, k), smoothing)
  return optax.softmax_cross_entropy(logits, targets).sum()


def whitening_kernel_for(train_images_u8, model_config):
  """Whitening filters from the first ``whiten_num_images`` uint8 training images."""
  images = augment.normalize_host(train_images_u8[:model_config.whiten_num_images])
  return airbench.whitening_kernel(images, model_config.whiten_kernel_size,
                                   model_config.whiten_eps)


def init_model_state(model, init_key, whiten_kernel, hparams, recipe):
  """Initial state of one model from its init key."""
  variables = airbench.init_variables(model, init_key, whiten_kernel)
  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = make_optimizer(params, hparams, recipe).init(params)
  return {'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state,
          'ema_params': params, 'ema_batch_stats': batch_stats,
          'diverged_at': jnp.int32(-1)}


def all_finite(tree):
  """True when every float in ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.stack(leaves).all()


def make_step_parts(model, recipe, whiten_bias_live=True):
  """The three stages of one model's train step: ``(batch, loss, apply)``.

  batch(augment_key, order, images, labels, step, noise_key, noise) -> (x, y): the
  augmented batch. With ``recipe.label_noise`` the whole training set's true
  ``labels`` are first corrupted with probability ``noise`` from the model's
  ``noise_key`` (label_noise.py); the loss and accuracy are against them.
  loss(params, batch_stats, x, y, smoothing) -> (summed loss, (logits, batch_stats)).
  apply(state, hparams, step, loss, aux, y, grads) -> (new_state, metrics): the
  optimiser, lookahead and divergence guard given the loss gradients.

  ``make_train_step`` composes them per model; ``make_grad_of_sum_step`` takes
  the gradient of a chunk's summed loss instead (the same gradients, since no
  model's loss depends on another's parameters).

  The whitening bias trains while ``step < recipe.whiten_bias_steps``. With
  ``whiten_bias_live=False`` the loss is for the later steps only: no gradient
  flows through the whitening layer (the costliest part of the backward pass on
  CPU: the 31x31x24 maps), with the same result as masking the bias update.
  """

  def batch(augment_key, order, images, labels, step, noise_key=None, noise=None):
    if recipe.label_noise:
      labels = label_noise_lib.corrupt(noise_key, labels, noise, model.num_classes)
    return augment.train_batch(images, labels, order, augment_key, step, recipe.steps_per_epoch,
                               recipe.batch_size, recipe.translate, recipe.flip, model.dtype,
                               recipe.crop)

  def loss(params, batch_stats, x, y, smoothing):
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                  x, train=True, whiten_bias_grad=whiten_bias_live,
                                  mutable=['batch_stats'])
    return smoothed_cross_entropy_sum(logits, y, smoothing), (logits, updates['batch_stats'])

  def apply(state, hparams, step, loss, aux, y, grads):
    logits, batch_stats = aux
    tx = make_optimizer(state['params'], hparams, recipe)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    factor = optim.lr_factor(step, recipe.total_steps, recipe.warmup_frac,
                             recipe.lr_start_factor, recipe.lr_end_factor)
    bias_live = (step < recipe.whiten_bias_steps).astype(jnp.float32)
    updates = dict(updates)
    updates['whiten_bias'] = updates['whiten_bias'] * bias_live
    updates = jax.tree.map(lambda u: u * factor, updates)
    params = optax.apply_updates(state['params'], updates)

    ema_params, ema_batch_stats = state['ema_params'], state['ema_batch_stats']
    if recipe.lookahead:
      done = step + 1
      args = (done, recipe.total_steps, recipe.lookahead_decay, recipe.lookahead_every,
              recipe.lookahead_power)
      params, ema_params = optim.lookahead(params, ema_params, *args)
      batch_stats, ema_batch_stats = optim.lookahead(batch_stats, ema_batch_stats, *args)
    new_state = {'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state,
                 'ema_params': ema_params, 'ema_batch_stats': ema_batch_stats}
    # A model whose loss or weights stop being finite is frozen at its last
    # finite state (its own updates masked; nothing else depends on it).
    finite = jnp.isfinite(loss) & all_finite((params, batch_stats))
    healthy = (state['diverged_at'] < 0) & finite
    old = {k: state[k] for k in new_state}
    new_state = jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new_state, old)
    new_state['diverged_at'] = jnp.where((state['diverged_at'] < 0) & ~finite,
                                         jnp.asarray(step, jnp.int32), state['diverged_at'])
    # Keys the step does not train (e.g. 'forgetting', updated once per epoch) pass through.
    new_state = {**state, **new_state}
    metrics = {'loss': loss / recipe.batch_size,
               'accuracy': (logits.argmax(-1) == y).mean()}
    return new_state, metrics

  return batch, loss, apply


def make_train_step(model, recipe, whiten_bias_live=True):
  """Returns train_step(state, hparams, augment_key, order, images, labels, step, noise_key).

  ``step`` is the number of steps already taken (global, the same for all models).
  Returns (new_state, metrics) with metrics {'loss': mean per example, 'accuracy'}.
  ``whiten_bias_live=False``: for steps after the whitening bias froze (see
  ``make_step_parts``).
  """
  batch, loss_fn, apply = make_step_parts(model, recipe, whiten_bias_live)

  def train_step(state, hparams, augment_key, order, images, labels, step, noise_key=None):
    x, y = batch(augment_key, order, images, labels, step, noise_key,
                 hparams.get('label_noise'))
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], state['batch_stats'], x, y, hparams['label_smoothing'])
    return apply(state, hparams, step, loss, aux, y, grads)

  return train_step


def make_grad_of_sum_step(model, recipe, whiten_bias_live=True):
  """``make_train_step`` for a chunk of models stacked on axis 0, in one gradient.

  Returns chunk_step(states, hparams, augment_keys, orders, images, labels, step,
  noise_keys) with every argument but the shared images, labels and step stacked
  over the chunk. The forward is vmapped over models and ``value_and_grad`` of the sum
  of their losses is taken outside the vmap: d(sum_j L_j)/d(params_k) =
  dL_k/d(params_k) because models share nothing, so this is the per-model step
  written so that the compiler sees batched backward convolutions (ensemble
  formulation 'grad_of_sum').
  """
  batch, loss_fn, apply = make_step_parts(model, recipe, whiten_bias_live)

  def chunk_step(states, hparams, augment_keys, orders, images, labels, step, noise_keys=None):
    noise = hparams.get('label_noise') if recipe.label_noise else None
    x, y = jax.vmap(batch, in_axes=(0, 0, None, None, None, 0, 0))(
        augment_keys, orders, images, labels, step, noise_keys, noise)

    def total(params):
      losses, aux = jax.vmap(loss_fn)(params, states['batch_stats'], x, y,
                                      hparams['label_smoothing'])
      return losses.sum(), (losses, aux)

    (_, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(states['params'])
    return jax.vmap(apply, in_axes=(0, 0, None, 0, 0, 0, 0))(
        states, hparams, step, losses, aux, y, grads)

  return chunk_step


def final_variables(state, recipe):
  """The trained model: the lookahead average when enabled (airbench's last sync)."""
  if recipe.lookahead:
    return {'params': state['ema_params'], 'batch_stats': state['ema_batch_stats']}
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


def make_eval_forward(model, tta_level):
  """Returns forward(variables, images_u8) -> (logits (b, K), embeddings).

  ``embeddings``: {'features': the head's input (b, widths[-1]), 'probes': a
  tuple of the pooled activations (b, D_l) at ``model.probes``}, each averaged
  over the TTA views with the logits' weights; the head is linear without
  bias, so the TTA logits are exactly the head applied to the features.
  """

  def forward(variables, images_u8):
    x = augment.normalize(images_u8, model.dtype)
    weights, views = zip(*augment.tta_views(x, tta_level))
    weights = jnp.asarray(weights, jnp.float32)
    # One forward over all views: bigger ops run faster than six small ones.
    logits, sown = model.apply(variables, jnp.concatenate(views), train=False,
                               mutable=['intermediates'])
    per_view = lambda a: a.astype(jnp.float32).reshape((len(views), x.shape[0]) + a.shape[1:])
    average = lambda a: jnp.tensordot(weights, per_view(a), axes=1)
    sown = sown['intermediates']
    embeddings = {'features': average(sown['features'][0]),
                  'probes': tuple(average(sown[place][0]) for place in model.probes)}
    return average(logits), embeddings

  return forward


def make_eval_logits(model, tta_level):
  """Returns eval_logits(variables, images_u8) -> float32 (b, K) TTA logits."""
  forward = make_eval_forward(model, tta_level)
  return lambda variables, images_u8: forward(variables, images_u8)[0]
