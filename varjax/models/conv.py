"""3x3 'SAME' convolution with a choice of kernel-gradient algorithm.

XLA:CPU computes the kernel gradient of a large-map convolution (airbench's
first 3x3 conv: 31x31 maps) about 2x slower than 9 plain matmuls (measured:
352 vs 173 ms for 256x31x31x24 -> 16 on 2 cores); on smaller maps its own
algorithm wins. 'matmul' uses the matmul form; the forward pass and the input
gradient are XLA's convolution either way.

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

WEIGHT_GRADS = ('xla', 'matmul')
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


def conv3x3(x, kernel, weight_grad='xla'):
  """3x3 stride-1 'SAME' conv, NHWC x HWIO; ``weight_grad`` picks the kernel gradient."""
  if weight_grad == 'xla':
    return lax_conv(x, kernel)
  if weight_grad == 'matmul':
    return _conv3x3_matmul_grad(x, kernel.astype(x.dtype))
  raise ValueError(f'weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}')
