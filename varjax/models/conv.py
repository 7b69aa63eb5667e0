"""3x3 'SAME' convolution with a choice of kernel-gradient algorithm.

XLA:CPU's kernel gradient slows down superlinearly with the batch: for
airbench's first 3x3 conv (31x31 maps, 24 -> 16 channels, 2 cores) it takes
~19 ms at batch 64 but 345-420 ms at batch 256. 'sliced' sums XLA's kernel
gradients over slices of ``slice_size`` images (42 ms for the batch of 256 in
slices of 16; BENCHMARKS.md); 'matmul' computes it as 9 matmuls (204 ms). The
forward pass and the input gradient are XLA's convolution either way.

The matmul form: pad x by 1 and flatten it to rows q over (image, row, col) of
the padded grid; put dy on the same grid (zeros in the padding). Then the tap
(i, j) of the kernel gradient is ``x_rows[q + i * (w + 2) + j]^T @ dy_rows[q]``
summed over q: one matmul of contiguous row slices per tap. The zero padding
of dy keeps the sum inside each image.

Example:
  >>> y = conv3x3(x, kernel, weight_grad='matmul')                  # doctest: +SKIP
"""

import functools

import jax
import jax.numpy as jnp

WEIGHT_GRADS = ('xla', 'matmul', 'sliced')
DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def lax_conv(x, kernel, padding='SAME'):
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), padding,
                                      dimension_numbers=DIMENSION_NUMBERS)


def kernel_grad_by_matmul(x, dy):
  """d(sum(conv3x3_same(x, k) * dy)) / dk as 9 matmuls; x (b,h,w,c), dy (b,h,w,d)."""
  b, h, w, c = x.shape
  d = dy.shape[-1]
  rows = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
  dy_rows = jnp.pad(dy, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, d)
  length = rows.shape[0] - (2 * (w + 2) + 2)
  dy_rows = dy_rows[:length]
  taps = []
  for i in range(3):
    for j in range(3):
      offset = i * (w + 2) + j
      taps.append(jnp.matmul(rows[offset:offset + length].T, dy_rows,
                             preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(3, 3, c, d)


@jax.custom_vjp
def _conv3x3_matmul_grad(x, kernel):
  return lax_conv(x, kernel)


def _forward(x, kernel):
  return lax_conv(x, kernel), (x, kernel)


def _backward(residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: lax_conv(v, kernel), x)
  dk = kernel_grad_by_matmul(x, dy).astype(kernel.dtype)
  return input_vjp(dy)[0], dk


_conv3x3_matmul_grad.defvjp(_forward, _backward)


def kernel_grad_by_slices(x, dy, kernel, slice_size):
  """XLA's kernel gradient summed over consecutive slices of ``slice_size`` images."""
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
  if weight_grad == 'matmul':
    return _conv3x3_matmul_grad(x, kernel.astype(x.dtype))
  if weight_grad == 'sliced':
    return _conv3x3_sliced_grad(x, kernel.astype(x.dtype), int(slice_size))
  raise ValueError(f'weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}')
