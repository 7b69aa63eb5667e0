"""3x3 'SAME' convolution with a choice of kernel-gradient algorithm.

XLA:CPU's kernel gradient slows down superlinearly with the batch (the patch
tensors fall out of cache). 'sliced' sums XLA's kernel gradients over slices of
``slice_size`` images, each small enough to stay fast (BENCHMARKS.md). The
forward pass and the input gradient are XLA's convolution either way.

Example:
  >>> y = conv3x3(x, kernel, weight_grad='sliced', slice_size=16)   # doctest: +SKIP
"""

import functools

import jax

WEIGHT_GRADS = ('xla', 'sliced')
DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def lax_conv(x, kernel, padding='SAME'):
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), padding,
                                      dimension_numbers=DIMENSION_NUMBERS)


def kernel_grad_by_slices(x, dy, kernel, slice_size):
  """XLA's kernel gradient of ``lax_conv(x, kernel)`` for output gradient ``dy``,
  summed over consecutive slices of ``slice_size`` images."""
  total = None
  for start in range(0, x.shape[0], slice_size):
    _, vjp = jax.vjp(lambda k, s=start: lax_conv(x[s:s + slice_size], k), kernel)
    grad = vjp(dy[start:start + slice_size])[0]
    total = grad if total is None else total + grad
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3_sliced_grad(x, kernel, slice_size):
  del slice_size
  return lax_conv(x, kernel)


def _sliced_forward(x, kernel, slice_size):
  del slice_size
  return lax_conv(x, kernel), (x, kernel)


def _sliced_backward(slice_size, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: lax_conv(v, kernel), x)
  return input_vjp(dy)[0], kernel_grad_by_slices(x, dy, kernel, slice_size)


_conv3x3_sliced_grad.defvjp(_sliced_forward, _sliced_backward)


def conv3x3(x, kernel, weight_grad='xla', slice_size=16):
  """3x3 stride-1 'SAME' conv, NHWC x HWIO; ``weight_grad`` picks the kernel gradient.

  ``slice_size``: images per slice for ``weight_grad='sliced'``.
  """
  if weight_grad == 'xla':
    return lax_conv(x, kernel)
  if weight_grad == 'sliced':
    return _conv3x3_sliced_grad(x, kernel.astype(x.dtype), int(slice_size))
  raise ValueError(f'weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}')
