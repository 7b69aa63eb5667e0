"""Fast layers against independent references: the normal CDF in float64, and XLA's conv."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from varjax.models import layers


def test_gelu_and_its_derivative_match_the_normal_cdf_formula():
  x = np.linspace(-8, 8, 2001)
  cdf = 0.5 * special.erfc(-x / np.sqrt(2))           # float64 reference
  pdf = np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
  xs = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(layers.gelu(xs), x * cdf, atol=2e-6, rtol=1e-5)
  grad = jax.vmap(jax.grad(layers.gelu))(xs)
  np.testing.assert_allclose(grad, cdf + x * pdf, atol=2e-6, rtol=1e-5)


def test_gelu_second_derivative_exists():
  # The hand-written derivative is itself differentiable (Hessian-vector products).
  second = jax.grad(jax.grad(layers.gelu))(jnp.float32(0.3))
  x = 0.3
  want = (2 - x * x) * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(second, want, rtol=1e-5)


def test_patch_conv_equals_xla_valid_convolution():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 8, 3)), jnp.float32)
  for kernel_shape in ((2, 2, 3, 24), (3, 2, 3, 5)):
    kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(layers.patch_conv(x, kernel), want, atol=1e-5)
