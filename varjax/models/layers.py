"""Layers of airbench written for speed or for fewer bytes moved, with the same maths.

``gelu``: exact (erf) GELU with a hand-written derivative. ``jax.nn.gelu`` goes
through ``erfc`` and differentiates it op by op, a long elementwise chain per
activation; this form is cheaper on XLA:CPU forward and backward (BENCHMARKS.md).

``patch_conv``: a VALID stride-1 convolution with a small kernel as one matmul
over concatenated shifted views. airbench's 2x2 whitening conv has 3 input
channels, which XLA:CPU runs far slower as a convolution than as one matmul.

``max_pool``: non-overlapping max pooling whose 'windows' form has a
hand-written gradient (the reshape form's, bit for bit, in one fused pass);
``norm_act``: batch normalisation and GELU as one function whose backward reads
the conv output and the gradient twice instead of autodiff's chain of passes
(BENCHMARKS.md, "where the training step's bytes go").

Example:
  >>> y = gelu(jnp.linspace(-3., 3., 7))
  >>> y = patch_conv(images, kernel)      # doctest: +SKIP
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_SQRT_HALF = np.float32(np.sqrt(0.5))
_INV_SQRT_2PI = np.float32(1 / np.sqrt(2 * np.pi))


def _normal_cdf(x):
  return 0.5 * (1 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))


@jax.custom_jvp
def gelu(x):
  """x * Phi(x), Phi the standard normal CDF (torch.nn.GELU's default)."""
  return x * _normal_cdf(x)


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  x, = primals
  t, = tangents
  cdf = _normal_cdf(x)
  density = _INV_SQRT_2PI.astype(x.dtype) * jnp.exp(-0.5 * x * x)
  return x * cdf, t * (cdf + x * density)


def patch_conv(x, kernel):
  """VALID stride-1 conv of NHWC ``x`` with an HWIO ``kernel``, as one matmul.

  The patch vector is ordered (kh, kw, c_in), matching ``kernel.reshape(-1, c_out)``.
  """
  kh, kw, c_in, c_out = kernel.shape
  _, h, w, _ = x.shape
  ho, wo = h - kh + 1, w - kw + 1
  patches = jnp.concatenate([x[:, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)],
                            axis=-1)
  return patches @ kernel.reshape(kh * kw * c_in, c_out).astype(x.dtype)


def activation(x, approximate):
  """GELU: tanh approximation, or exact (erf) as torch.nn.GELU's default."""
  return jax.nn.gelu(x, approximate=True) if approximate else gelu(x)


MAX_POOLS = ('windows', 'reshape', 'reduce_window')


def max_pool(x, size, form='windows'):
  """Non-overlapping max pool (floor) of NHWC maps; ``form`` picks how it differentiates.

  'reshape': the max over a (size, size)-split reshape, differentiated by JAX's
  rule for reductions (cheaper backward than reduce_window on XLA:CPU). Its
  linearisation keeps window-shaped location masks and the cropped input, and
  its backward broadcasts them back to window shape (tensors of shape
  [b, h/2, 2, w/2, 2, c] written and read in full on accelerators).
  'windows': the same maths over the size*size strided views of the map with a
  hand-written gradient (``_window_max``): the forward also writes which views
  hold each window's maximum as one byte per pooled value, and the backward
  builds the input gradient from those bits and the pooled gradient alone,
  split equally among ties as JAX's rule does. Reverse mode only (a custom
  VJP): forward-mode users (``sharpness``' Hessian-vector products) take
  'reshape'.
  'reduce_window': XLA's windowed max, differentiated by select-and-scatter: the
  gradient goes to the first maximum of a window (as PyTorch's max_pool2d),
  not split among ties; the TPU compiler runs its backward as one op (it
  writes out the broadcasts of the other two forms' backward passes).
  """
  if form == 'reshape':
    n, h, w, c = x.shape
    ho, wo = h // size, w // size
    x = x[:, :ho * size, :wo * size]
    return x.reshape(n, ho, size, wo, size, c).max(axis=(2, 4))
  if form == 'reduce_window':
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                                 (1, size, size, 1), 'VALID')
  if form != 'windows':
    raise ValueError(f'max_pool form must be one of {MAX_POOLS}, got {form!r}')
  if size * size > 8:
    raise ValueError(f"max_pool form 'windows' keeps one bit per view in a byte; size {size} "
                     'has more views')
  # Cropped outside the custom gradient: the compiler can then shrink the conv
  # that makes x to the rows and columns the pool reads (the TPU's does).
  _, h, w, _ = x.shape
  return _window_max(x[:, :h // size * size, :w // size * size], size)


def _windows(x, size):
  """The size*size strided views of the cropped map, each (n, h // size, w // size, c),
  row-major over the window."""
  _, h, w, _ = x.shape
  ho, wo = h // size, w // size
  return [x[:, i:ho * size:size, j:wo * size:size] for i in range(size) for j in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x, size):
  return functools.reduce(jnp.maximum, _windows(x, size))


def _window_max_fwd(x, size):
  views = _windows(x, size)
  out = functools.reduce(jnp.maximum, views)
  hits = functools.reduce(jnp.bitwise_or, [(v == out).astype(jnp.uint8) << k
                                           for k, v in enumerate(views)])
  # Both made here, in the forward pass: left free, XLA:GPU moved the bits into
  # the backward pass, which kept the unpooled map alive to read it again there.
  out, hits = jax.lax.optimization_barrier((out, hits))
  return out, (hits, jax.ShapeDtypeStruct(x.shape, x.dtype))


def _window_max_bwd(size, residuals, dy):
  hits, like = residuals
  n, h, w, c = like.shape
  ho, wo = h // size, w // size
  # Written in window shape (n, ho, size, wo, size, c), each pixel from its
  # window's bits and pooled gradient, then reshaped: XLA:GPU fuses it into one
  # pass writing the input gradient; the TPU compiler writes the two broadcasts
  # out first (stacking the views, or padding them with interior zeros, was
  # worse on both).
  up = lambda a: a[:, :, None, :, None, :]
  view = (jax.lax.broadcasted_iota(jnp.uint8, (size, size), 0) * size
          + jax.lax.broadcasted_iota(jnp.uint8, (size, size), 1))
  view = view[None, None, :, None, :, None]  # which view of its window a pixel is
  count = functools.reduce(jnp.add, [(hits >> k) & 1 for k in range(size * size)])
  # JAX's rule for a max reduction: the gradient shared equally by the maxima.
  share = up(dy / count.astype(dy.dtype))
  dx = jnp.where((up(hits) >> view) & 1 == 1, share, jnp.zeros((), dy.dtype))
  dx = dx.reshape(n, ho * size, wo * size, c)
  return (jnp.pad(dx, ((0, 0), (0, h - ho * size), (0, w - wo * size), (0, 0))),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


NORMS = ('fused', 'autodiff')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def norm_act(x, bias, epsilon, approximate):
  """activation(batch-normalised x + bias) in x's dtype, with the batch's (mean,
  biased variance) in float32."""
  return _norm_act_fwd(x, bias, epsilon, approximate)[0]


def _batch_moments(x):
  """Per-channel mean and biased variance in float32, in two passes as autodiff's
  form computes them (one pass of shifted sums was 0.06 GB per model-step less on
  H100, but moved near-constant channels' gradients by ~1e-3 of scale in float32,
  eps being 1e-12)."""
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = xf.mean(axes)
  return mean, jnp.square(xf - mean).mean(axes)


def _norm_act_fwd(x, bias, epsilon, approximate):
  mean, var = _batch_moments(x)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = ((x.astype(jnp.float32) - mean) * rstd + bias).astype(x.dtype)
  out = (activation(y, approximate), jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var))
  return out, (x, bias, mean, rstd)


def _norm_act_bwd(epsilon, approximate, residuals, cotangents):
  del epsilon
  x, bias, mean, rstd = residuals
  d_out = cotangents[0]  # the statistics only feed the running averages (no gradient)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  xhat = (x.astype(jnp.float32) - mean) * rstd
  y = (xhat + bias).astype(x.dtype)
  # The activation's derivative at the normalised map, recomputed from the
  # conv output: nothing of the forward pass but x and two per-channel vectors
  # is kept, and the backward reads x and the gradient twice (the two sums, then
  # the input gradient) instead of the chain of passes autodiff makes.
  g = jax.vjp(lambda v: activation(v, approximate), y)[1](d_out)[0].astype(jnp.float32)
  g_sum = g.sum(axes)
  gx_sum = (g * xhat).sum(axes)
  dx = rstd * (g - g_sum / count - xhat * (gx_sum / count))
  return dx.astype(x.dtype), g_sum.astype(bias.dtype)


norm_act.defvjp(_norm_act_fwd, _norm_act_bwd)
