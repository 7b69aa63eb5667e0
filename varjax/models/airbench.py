"""The airbench94 network (Jordan 2024) as a Flax module, with its data-dependent init.

Layout NHWC. 32x32 input -> 2x2 whitening conv (frozen filters, trainable bias for
the first epochs) -> GELU -> three groups [conv3x3, maxpool2, BN, GELU, conv3x3, BN,
GELU] of widths 64/256/256 (31 -> 15 -> 7 -> 3 pixels) -> global max pool ->
linear (no bias) x 1/9. BatchNorm has no scale, eps 1e-12, momentum 0.6.

Prediction-depth probes (Baldock et al. 2021 probe the input and every layer):
``probes`` names the places whose pooled activations the forward sows into
the 'intermediates' collection, in network order (PROBE_PLACES). Conv outputs
(after their pool / BN / GELU) are max-pooled over space, as the head pools;
the input and the whitening output have too few channels for that and are
pooled to a PROBE_GRID x PROBE_GRID grid of cells (input: mean, the
downsampled image; whitening: max), 48 and 384 features.

Example:
  >>> model = Airbench(widths=(16, 32, 32))
  >>> variables = init_variables(model, jax.random.key(0), whiten_kernel)  # doctest: +SKIP
  >>> logits = model.apply(variables, x, train=False)                      # doctest: +SKIP
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varjax.models import conv as conv_lib
from varjax.models import layers

WHITEN_PATCH_CHANNELS = 3
PROBE_PLACES = ('input', 'whiten', 'group1_conv1', 'group1_conv2', 'group2_conv1',
                'group2_conv2', 'group3_conv1', 'group3_conv2')
GROUP_PROBES = ('group1_conv2', 'group2_conv2', 'group3_conv2')  # each group's output
PROBE_GRID = 4


def torch_default_init(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv and linear."""
  fan_in = int(np.prod(shape[:-1]))
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def dirac_init(key, shape, dtype=jnp.float32):
  """HWIO kernel whose first C_in output filters are the identity; the rest default.

  An identity start lets the deep plain network train like a shallower one.
  """
  h, w, c_in, c_out = shape
  kernel = torch_default_init(key, shape, dtype)
  n = min(c_in, c_out)
  identity = jnp.zeros((h, w, c_in, n), dtype).at[h // 2, w // 2].set(jnp.eye(c_in, n, dtype=dtype))
  return kernel.at[..., :n].set(identity)


def grid_pool(x, cells, reduce):
  """Pools NHWC maps to (n, cells * cells * C) over a grid of near-equal cells."""
  h, w = x.shape[1:3]
  rows = np.round(np.linspace(0, h, cells + 1)).astype(int)
  cols = np.round(np.linspace(0, w, cells + 1)).astype(int)
  pooled = [reduce(x[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]], axis=(1, 2))
            for i in range(cells) for j in range(cells)]
  return jnp.stack(pooled, axis=1).reshape(x.shape[0], -1)


class BatchNorm(nn.Module):
  """BatchNorm without scale; statistics in float32; running var unbiased (as torch).

  ``gelu``: None, or the GELU to apply after it (``activation``'s ``approximate``).
  ``form`` 'fused' (training only): the normalisation and the activation as one
  function with a hand-written gradient (``_norm_act``: it keeps only x and two
  per-channel vectors, and its backward reads x and the gradient in two passes);
  'autodiff': JAX differentiates the ops; the same maths.
  """
  momentum: float
  epsilon: float
  form: str = 'fused'

  @nn.compact
  def __call__(self, x, train: bool, gelu=None):
    c = x.shape[-1]
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean_var = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    var_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if self.form not in layers.NORMS:
      raise ValueError(f'BatchNorm form must be one of {layers.NORMS}, got {self.form!r}')
    fused = train and self.form == 'fused' and gelu is not None
    xf = x.astype(jnp.float32)
    if fused:
      y, mean, var = layers.norm_act(x, bias, self.epsilon, gelu)
    elif train:
      mean = xf.mean(axis=(0, 1, 2))
      var = jnp.square(xf - mean).mean(axis=(0, 1, 2))
    else:
      mean, var = mean_var.value, var_var.value
    if train and not self.is_initializing():
      count = x.size // c
      m = self.momentum
      mean_var.value = m * mean_var.value + (1 - m) * jax.lax.stop_gradient(mean)
      unbiased = jax.lax.stop_gradient(var) * (count / max(count - 1, 1))
      var_var.value = m * var_var.value + (1 - m) * unbiased
    if fused:
      return y
    y = ((xf - mean) * jax.lax.rsqrt(var + self.epsilon) + bias).astype(x.dtype)
    return y if gelu is None else layers.activation(y, gelu)


class ConvGroup(nn.Module):
  width: int
  bn_momentum: float
  bn_eps: float
  gelu_approximate: bool
  weight_grad: str
  grad_slice: int
  pool: str = 'windows'
  norm: str = 'fused'

  @nn.compact
  def __call__(self, x, train: bool):
    """Returns (the first conv's output after pool / BN / GELU, the group's output)."""
    gelu = self.gelu_approximate  # BatchNorm applies the GELU itself
    k1 = self.param('conv1', dirac_init, (3, 3, x.shape[-1], self.width))
    x = conv_lib.conv3x3(x, k1, self.weight_grad, self.grad_slice)
    x = layers.max_pool(x, 2, self.pool)
    mid = BatchNorm(self.bn_momentum, self.bn_eps, self.norm, name='norm1')(x, train, gelu)
    k2 = self.param('conv2', dirac_init, (3, 3, self.width, self.width))
    x = conv_lib.conv3x3(mid, k2, self.weight_grad, self.grad_slice)
    x = BatchNorm(self.bn_momentum, self.bn_eps, self.norm, name='norm2')(x, train, gelu)
    return mid, x


class Airbench(nn.Module):
  """airbench94; ``widths`` of the three conv groups (64, 256, 256 in the paper)."""
  widths: Sequence[int] = (64, 256, 256)
  whiten_kernel_size: int = 2
  bn_momentum: float = 0.6
  bn_eps: float = 1e-12
  head_scale: float = 1 / 9
  gelu_approximate: bool = False
  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32  # compute dtype; BN statistics stay float32
  # Kernel-gradient algorithm of the 3x3 convs (models/conv.py) and the images
  # per slice for 'sliced'; a speed choice, the same maths.
  conv_weight_grad: str = 'xla'
  conv_grad_slice: int = 16
  # How the groups' 2x2 max pools differentiate (``max_pool``), and their
  # BatchNorm + GELU in training (``BatchNorm``); the same maths.
  max_pool: str = 'windows'
  norm: str = 'fused'
  # Prediction-depth probe places sown at evaluation (a subset of PROBE_PLACES,
  # in their order); the pooled head input is always sown as 'features'.
  probes: Sequence[str] = ()

  @property
  def whiten_width(self):
    return 2 * WHITEN_PATCH_CHANNELS * self.whiten_kernel_size ** 2

  @nn.compact
  def __call__(self, x, train: bool, whiten_bias_grad: bool = True):
    """x: normalised float images (b, 32, 32, 3). Returns float32 logits (b, K).

    ``whiten_bias_grad=False`` (the bias is frozen for the rest of training)
    stops the gradient at the whitening layer, so nothing of its backward runs.
    Sows (free unless the caller asks for the 'intermediates' collection) the
    pooled activation of each place in ``probes`` and the head's input
    'features' (b, widths[-1]).
    """
    unknown = [p for p in self.probes if p not in PROBE_PLACES]
    if unknown:
      raise ValueError(f'Unknown probe places {unknown}; choose from {PROBE_PLACES}.')

    def probe(place, value, pool):
      if place in self.probes:
        self.sow('intermediates', place, pool(value))

    spatial_max = lambda a: a.max(axis=(1, 2))
    k = self.whiten_kernel_size
    x = x.astype(self.dtype)
    probe('input', x, lambda a: grid_pool(a, PROBE_GRID, jnp.mean))
    # Placeholder init: the real filters come from data (init_variables).
    w = self.param('whiten_kernel', nn.initializers.zeros,
                   (k, k, WHITEN_PATCH_CHANNELS, self.whiten_width))
    # Zero, as airbench94 (its Conv zeroes every bias): no init randomness here.
    b = self.param('whiten_bias', nn.initializers.zeros, (self.whiten_width,))
    if not whiten_bias_grad:
      b = jax.lax.stop_gradient(b)
    # Frozen filters: no kernel gradient to compute.
    x = layers.patch_conv(x, jax.lax.stop_gradient(w)) + b.astype(self.dtype)
    x = layers.activation(x, self.gelu_approximate)
    probe('whiten', x, lambda a: grid_pool(a, PROBE_GRID, jnp.max))
    for i, width in enumerate(self.widths):
      mid, x = ConvGroup(width, self.bn_momentum, self.bn_eps, self.gelu_approximate,
                         self.conv_weight_grad, self.conv_grad_slice, self.max_pool,
                         self.norm, name=f'group{i + 1}')(x, train)
      probe(f'group{i + 1}_conv1', mid, spatial_max)
      probe(f'group{i + 1}_conv2', x, spatial_max)
    x = x.max(axis=(1, 2))  # the 3x3 map is pooled whole
    self.sow('intermediates', 'features', x)
    head = self.param('head', torch_default_init, (self.widths[-1], self.num_classes))
    logits = x @ head.astype(x.dtype)
    return logits.astype(jnp.float32) * self.head_scale


def from_config(model_config, dtype=jnp.float32, conv_weight_grad='xla', conv_grad_slice=16,
                probes=(), num_classes=10, max_pool='windows', norm='fused'):
  return Airbench(widths=tuple(model_config.widths), conv_weight_grad=conv_weight_grad,
                  max_pool=max_pool, norm=norm,
                  num_classes=num_classes,
                  conv_grad_slice=conv_grad_slice, probes=tuple(probes),
                  whiten_kernel_size=model_config.whiten_kernel_size,
                  bn_momentum=model_config.bn_momentum, bn_eps=model_config.bn_eps,
                  head_scale=model_config.head_scale,
                  gelu_approximate=model_config.gelu_approximate, dtype=dtype)


def patches(images, size):
  """All size x size patches of NHWC float images, flattened in (h, w, c) order."""
  n, h, w, c = images.shape
  cols = [images[:, i:h - size + 1 + i, j:w - size + 1 + j]
          for i in range(size) for j in range(size)]
  # (n, h', w', size*size, c) -> (n*h'*w', size*size*c) with (h, w, c) ordering.
  return np.stack(cols, axis=3).reshape(-1, size * size * c)


def whitening_kernel(images, kernel_size=2, eps=5e-4, chunk=500):
  """Patch-whitening filters from normalised float images (n, 32, 32, 3), float64.

  Eigenvectors of the (uncentred) patch second-moment matrix, scaled by
  1/sqrt(eigenvalue + eps), largest eigenvalue first, then their negations
  (GELU after the conv keeps both signs of every direction). Returns an HWIO
  kernel (k, k, 3, 2 * k * k * 3) in float32.
  """
  dim = kernel_size * kernel_size * images.shape[-1]
  cov = np.zeros((dim, dim))
  count = 0
  for start in range(0, len(images), chunk):
    p = patches(np.asarray(images[start:start + chunk], np.float64), kernel_size)
    cov += p.T @ p
    count += len(p)
  cov /= count
  eigenvalues, eigenvectors = np.linalg.eigh(cov)
  order = np.argsort(eigenvalues)[::-1]
  eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
  filters = eigenvectors / np.sqrt(eigenvalues + eps)  # columns are filters
  filters = np.concatenate([filters, -filters], axis=1)
  kernel = filters.reshape(kernel_size, kernel_size, images.shape[-1], 2 * dim)
  return kernel.astype(np.float32)


def init_variables(model, key, whiten_kernel):
  """Initial {'params', 'batch_stats'} for one model, with the given whitening filters."""
  dummy = jnp.zeros((1, 32, 32, 3), model.dtype)
  variables = model.init(key, dummy, train=False)
  variables = {k: v for k, v in variables.items() if k != 'intermediates'}
  params = dict(variables['params'])
  params['whiten_kernel'] = jnp.asarray(whiten_kernel, jnp.float32)
  return {'params': params, 'batch_stats': variables['batch_stats']}


def num_params(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
