r"""Times each 3x3 convolution of the airbench network, op by op, in XLA:CPU or PyTorch.

  python benchmarks/conv_kernels.py --framework=jax   --widths=16,32,32 --batch=128
  PYTHON_WITH_TORCH benchmarks/conv_kernels.py --framework=torch --widths=16,32,32
  python benchmarks/conv_kernels.py --framework=jax --kernel_grad_forms

Prints one JSON line per convolution and pass: the forward, the input gradient and
the kernel gradient of a 3x3 'SAME' conv (NHWC / channels-last, float32) at the
shapes the network trains, best of ``--repeats`` timed calls in ms. Run under both
frameworks, it separates what the convolution kernels cost from what the rest of
the step does (BENCHMARKS.md, issue 15). Not part of varjax; needs only jax or torch.

``--kernel_grad_forms`` (jax) also times the kernel gradient written as matmuls
instead of XLA's autodiff of the convolution (``KERNEL_GRAD_FORMS``), each with
its largest difference from XLA's result relative to that result's largest entry.
"""

import argparse
import json
import time

import numpy as np

WHITEN_WIDTH = 24  # the 2x2 whitening conv's output channels (3 * 2 * 2 * 2)


def conv_shapes(widths, size=31):
  """(name, spatial size, c_in, c_out) of the six 3x3 convs, in network order."""
  shapes, c_in = [], WHITEN_WIDTH
  for i, width in enumerate(widths):
    shapes.append((f'group{i + 1}_conv1', size, c_in, width))
    size //= 2
    shapes.append((f'group{i + 1}_conv2', size, width, width))
    c_in = width
  return shapes


def best_ms(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * min(times)


def _jax_operands(batch, size, c_in, c_out):
  """Random float32 (x, kernel, dy) of one conv, NHWC / HWIO / NHWC."""
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(batch, size, size, c_in)), jnp.float32),
          jnp.asarray(rng.normal(size=(3, 3, c_in, c_out)), jnp.float32),
          jnp.asarray(rng.normal(size=(batch, size, size, c_out)), jnp.float32))


def _jax_conv(x, k):
  import jax
  return jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def jax_ops(batch, size, c_in, c_out):
  import jax
  x, k, dy = _jax_operands(batch, size, c_in, c_out)
  conv = _jax_conv
  ops = {
      'forward': jax.jit(conv),
      'input_grad': jax.jit(lambda x, k, dy: jax.vjp(lambda v: conv(v, k), x)[1](dy)[0]),
      'kernel_grad': jax.jit(lambda x, k, dy: jax.vjp(lambda w: conv(x, w), k)[1](dy)[0]),
  }
  args = {'forward': (x, k), 'input_grad': (x, k, dy), 'kernel_grad': (x, k, dy)}
  return {name: (lambda f=f, a=args[name]: f(*a).block_until_ready()) for name, f in ops.items()}


def _padded_taps(x):
  """The nine shifted (batch, size, size, c_in) views of ``x`` a 3x3 'SAME' conv reads."""
  import jax.numpy as jnp
  size = x.shape[1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i:i + size, j:j + size] for i in range(3) for j in range(3)]


def im2col_kernel_grad(x, dy):
  """All nine taps concatenated into (B*H*W, 9*c_in) patches, then one matmul."""
  import jax.numpy as jnp
  c_in, c_out = x.shape[-1], dy.shape[-1]
  patches = jnp.concatenate(_padded_taps(x), axis=-1).reshape(-1, 9 * c_in)
  return (patches.T @ dy.reshape(-1, c_out)).reshape(3, 3, c_in, c_out)


def shifted_matmuls_kernel_grad(x, dy):
  """One (c_in, B*H*W) @ (B*H*W, c_out) matmul per tap."""
  import jax.numpy as jnp
  taps = [jnp.einsum('bhwc,bhwd->cd', tap, dy) for tap in _padded_taps(x)]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], dy.shape[-1])


def per_image_matmuls_kernel_grad(x, dy):
  """Per tap, matmuls batched over the images, summed afterwards."""
  import jax.numpy as jnp
  taps = [jnp.einsum('bhwc,bhwd->bcd', tap, dy).sum(0) for tap in _padded_taps(x)]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], dy.shape[-1])


KERNEL_GRAD_FORMS = {
    'im2col': im2col_kernel_grad,
    'shifted_matmuls': shifted_matmuls_kernel_grad,
    'per_image_matmuls': per_image_matmuls_kernel_grad,
}


def jax_kernel_grad_forms(batch, size, c_in, c_out):
  """{form: (timed call, max relative difference from XLA's kernel gradient)}."""
  import jax
  x, k, dy = _jax_operands(batch, size, c_in, c_out)
  reference = np.asarray(jax.vjp(lambda w: _jax_conv(x, w), k)[1](dy)[0])
  out = {}
  for name, form in KERNEL_GRAD_FORMS.items():
    f = jax.jit(form)
    diff = np.abs(np.asarray(f(x, dy)) - reference).max() / np.abs(reference).max()
    out[name] = (lambda f=f: f(x, dy).block_until_ready(), float(diff))
  return out


def torch_ops(batch, size, c_in, c_out):
  import torch
  g = torch.Generator().manual_seed(0)
  cl = torch.channels_last
  x = torch.randn(batch, c_in, size, size, generator=g).contiguous(memory_format=cl)
  dy = torch.randn(batch, c_out, size, size, generator=g).contiguous(memory_format=cl)
  k = torch.randn(c_out, c_in, 3, 3, generator=g).contiguous(memory_format=cl)
  backward = lambda mask: torch.ops.aten.convolution_backward(
      dy, x, k, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
  return {
      'forward': lambda: torch.nn.functional.conv2d(x, k, padding=1),
      'input_grad': lambda: backward([True, False, False]),
      'kernel_grad': lambda: backward([False, True, False]),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--framework', choices=('jax', 'torch'), required=True)
  parser.add_argument('--widths', default='16,32,32')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--kernel_grad_forms', action='store_true',
                      help='jax: also time the kernel gradient written as matmuls')
  args = parser.parse_args()
  if args.kernel_grad_forms and args.framework != 'jax':
    parser.error('--kernel_grad_forms times JAX formulations; use it with --framework=jax.')
  widths = tuple(int(w) for w in args.widths.split(','))
  make_ops = jax_ops if args.framework == 'jax' else torch_ops
  for name, size, c_in, c_out in conv_shapes(widths):
    for op, fn in make_ops(args.batch, size, c_in, c_out).items():
      print(json.dumps({'framework': args.framework, 'conv': name, 'op': op,
                        'shape': [args.batch, size, size, c_in, c_out],
                        'ms': round(best_ms(fn, args.repeats), 3)}), flush=True)
    if args.kernel_grad_forms:
      for form, (fn, diff) in jax_kernel_grad_forms(args.batch, size, c_in, c_out).items():
        print(json.dumps({'framework': 'jax', 'conv': name, 'op': f'kernel_grad/{form}',
                          'shape': [args.batch, size, size, c_in, c_out],
                          'ms': round(best_ms(fn, args.repeats), 3),
                          'max_rel_diff': float(f'{diff:.2g}')}), flush=True)


if __name__ == '__main__':
  main()
