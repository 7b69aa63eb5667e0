"""The ensemble options: 'auto' per platform, explicit values kept, and bad values named."""

import jax
import pytest

from varjax.config import schema
from varjax.ensemble import options

from conftest import tiny_config

PLATFORMS = ('cpu', 'gpu', 'tpu')
# What 'auto' picks on cpu, gpu, tpu (BENCHMARKS.md gives the measurements).
AUTO = {options.resolve_compute_dtype: ('float32', 'bfloat16', 'bfloat16'),
        options.resolve_formulation: ('unrolled', 'grad_of_sum', 'vmap'),
        options.resolve_chunk_loop: ('host', 'scan', 'scan'),
        options.resolve_conv_weight_grad: ('sliced', 'xla', 'xla'),
        options.resolve_augment_crop: ('gather', 'gather', 'batch_crop'),
        options.resolve_max_pool: ('windows', 'windows', 'windows')}
CHOICES = {options.resolve_compute_dtype: tuple(options.COMPUTE_DTYPES),
           options.resolve_formulation: options.FORMULATIONS[1:],
           options.resolve_chunk_loop: options.CHUNK_LOOPS[1:],
           options.resolve_conv_weight_grad: options.CONV_WEIGHT_GRADS[1:],
           options.resolve_augment_crop: options.AUGMENT_CROPS[1:],
           options.resolve_max_pool: options.MAX_POOLS[1:]}


@pytest.mark.parametrize('resolve', list(AUTO), ids=lambda f: f.__name__)
def test_auto_resolves_per_platform_and_explicit_values_pass_through(resolve):
  assert tuple(resolve('auto', p) for p in PLATFORMS) == AUTO[resolve]
  for value in CHOICES[resolve]:
    assert {resolve(value, p) for p in PLATFORMS} == {value}


def test_resolve_gives_every_option_of_a_platform():
  config = tiny_config(**{'ensemble.formulation': 'vmap', 'ensemble.conv_grad_slice': 8})
  got = options.resolve(config.ensemble, 'gpu')
  assert got == options.Options('vmap', 'bfloat16', 'scan', 'xla', 8, 'gather', 'windows', None)
  assert got.dtype == jax.numpy.bfloat16


@pytest.mark.parametrize('key, choices', [
    ('formulation', options.FORMULATIONS), ('chunk_loop', options.CHUNK_LOOPS),
    ('conv_weight_grad', options.CONV_WEIGHT_GRADS),
    ('cpu_conv_library', options.CPU_CONV_LIBRARIES),
    ('augment_crop', options.AUGMENT_CROPS),
    ('max_pool', options.MAX_POOLS),
    ('compute_dtype', tuple(options.COMPUTE_DTYPES) + ('auto',))])
def test_config_check_accepts_exactly_these_choices(key, choices):
  for value in choices:
    schema.check(tiny_config(**{f'ensemble.{key}': value}))
  with pytest.raises(schema.ConfigError, match=f'ensemble.{key}'):
    schema.check(tiny_config(**{f'ensemble.{key}': 'none of them'}))


def test_cpu_conv_library_sets_the_step_programs_compiler_options_on_cpu_only():
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # airbench's first 3x3 conv (YNNPACK leaves small ones to XLA anyway).
  x, k = jax.numpy.ones((8, 31, 31, 24)), jax.numpy.ones((3, 3, 24, 16))

  def ynn_fusions(compiler_options):  # the program is one convolution
    text = jax.jit(conv, compiler_options=compiler_options).lower(x, k).compile().as_text()
    return text.count('__ynn_fusion')

  assert options.step_compiler_options('ynnpack', 'cpu') is None
  assert {options.step_compiler_options('eigen', p) for p in ('gpu', 'tpu')} == {None}
  # This jaxlib accepts the options, and they take the convolution away from YNNPACK.
  assert ynn_fusions(options.step_compiler_options('eigen', 'cpu')) == 0
  assert ynn_fusions(None) > 0


def test_options_this_xla_rejects_are_detected():
  assert options._cpu_compiler_accepts((('xla_cpu_enable_fast_math', False),))
  assert not options._cpu_compiler_accepts((('xla_cpu_no_such_option', 'true'),))
