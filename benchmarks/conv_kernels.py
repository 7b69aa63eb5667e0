r"""Times each 3x3 convolution of the airbench network, op by op, in XLA:CPU or PyTorch.

  python benchmarks/conv_kernels.py --framework=jax   --widths=16,32,32 --batch=128
  PYTHON_WITH_TORCH benchmarks/conv_kernels.py --framework=torch --widths=16,32,32

Prints one JSON line per convolution and pass: the forward, the input gradient and
the kernel gradient of a 3x3 'SAME' conv (NHWC / channels-last, float32) at the
shapes the network trains, best of ``--repeats`` timed calls in ms. Run under both
frameworks, it separates what the convolution kernels cost from what the rest of
the step does (BENCHMARKS.md, issue 15). Not part of varjax; needs only jax or torch.
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


def jax_ops(batch, size, c_in, c_out):
  import jax
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.normal(size=(batch, size, size, c_in)), jax.numpy.float32)
  dy = jax.numpy.asarray(rng.normal(size=(batch, size, size, c_out)), jax.numpy.float32)
  k = jax.numpy.asarray(rng.normal(size=(3, 3, c_in, c_out)), jax.numpy.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ops = {
      'forward': jax.jit(conv),
      'input_grad': jax.jit(lambda x, k, dy: jax.vjp(lambda v: conv(v, k), x)[1](dy)[0]),
      'kernel_grad': jax.jit(lambda x, k, dy: jax.vjp(lambda w: conv(x, w), k)[1](dy)[0]),
  }
  args = {'forward': (x, k), 'input_grad': (x, k, dy), 'kernel_grad': (x, k, dy)}
  return {name: (lambda f=f, a=args[name]: f(*a).block_until_ready()) for name, f in ops.items()}


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
  args = parser.parse_args()
  widths = tuple(int(w) for w in args.widths.split(','))
  make_ops = jax_ops if args.framework == 'jax' else torch_ops
  for name, size, c_in, c_out in conv_shapes(widths):
    for op, fn in make_ops(args.batch, size, c_in, c_out).items():
      print(json.dumps({'framework': args.framework, 'conv': name, 'op': op,
                        'shape': [args.batch, size, size, c_in, c_out],
                        'ms': round(best_ms(fn, args.repeats), 3)}), flush=True)


if __name__ == '__main__':
  main()
