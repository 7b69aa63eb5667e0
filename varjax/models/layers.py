"""Elementwise and patch layers of airbench written for speed, with the same maths.

``gelu``: exact (erf) GELU with a hand-written derivative. ``jax.nn.gelu`` goes
through ``erfc`` and differentiates it op by op, a long elementwise chain per
activation; this form is cheaper on XLA:CPU forward and backward (BENCHMARKS.md).

``patch_conv``: a VALID stride-1 convolution with a small kernel as one matmul
over concatenated shifted views. airbench's 2x2 whitening conv has 3 input
channels, which XLA:CPU runs far slower as a convolution than as one matmul.

Example:
  >>> y = gelu(jnp.linspace(-3., 3., 7))
  >>> y = patch_conv(images, kernel)      # doctest: +SKIP
"""

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
