"""Reading compiled programs: FLOPs, loop trips, traffic and collectives against closed forms.

CPU programs (about 2 s in all) and HLO text in the forms the GPU and TPU
compilers print.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from varjax.aot import hlo_stats
def compiled_text(fn, *shapes):
  return jax.jit(fn).trace(*shapes).lower().compile().as_text()


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_conv_and_its_gradients_count_three_times_the_forward_flops():
  x = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 5), jnp.float32)
  forward = 2 * 4 * 8 * 8 * 5 * 9 * 3  # 2 x outputs x taps x input channels
  assert hlo_stats.analyze(compiled_text(conv, x, w))['flops'] == forward
  loss = lambda w, x: jnp.sum(conv(x, w) ** 2)
  text = compiled_text(jax.grad(loss, argnums=(0, 1)), w, x)
  assert hlo_stats.analyze(text)['flops'] == 3 * forward


def test_a_loop_body_counts_once_per_trip():
  def chain(ws, x):
    return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0]

  text = compiled_text(chain, jax.ShapeDtypeStruct((7, 64, 64), jnp.float32),
                       jax.ShapeDtypeStruct((16, 64), jnp.float32))
  assert hlo_stats.analyze(text)['flops'] == 7 * 2 * 16 * 64 * 64


def test_a_slice_of_a_resident_array_reads_only_the_slice():
  big = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)  # 16 MiB
  take = lambda a, i: jax.lax.dynamic_slice_in_dim(a, i, 8) * 2.0
  stats = hlo_stats.analyze(compiled_text(take, big, jax.ShapeDtypeStruct((), jnp.int32)))
  assert 0 < stats['bytes_accessed'] <= 4 * 8 * 1024 * 4


def test_collectives_are_counted_and_independent_work_has_none():
  mesh = Mesh(np.asarray(jax.devices()[:4]), ('models',))
  x = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P('models')))
  independent = jax.shard_map(lambda a: jnp.sin(a) * 2, mesh=mesh, in_specs=P('models'),
                              out_specs=P('models'))
  summed = jax.shard_map(lambda a: jax.lax.psum(a.sum(), 'models'), mesh=mesh,
                         in_specs=P('models'), out_specs=P())
  assert hlo_stats.analyze(compiled_text(independent, x))['collectives']['total'] == 0
  stats = hlo_stats.analyze(compiled_text(summed, x))
  assert stats['collectives']['all-reduce'] == 1 and stats['collectives']['total'] == 1
  assert stats['collective_bytes'] == 4  # one float32 scalar


GPU_HLO = """
ENTRY %main (p0: f32[128,16,16,32], p1: f32[64,3,3,32], p2: f32[128,16,16,64]) -> f32[64,3,3,32] {
  %p0 = f32[128,16,16,32]{3,2,1,0} parameter(0)
  %p1 = f32[64,3,3,32]{3,2,1,0} parameter(1)
  %p2 = f32[128,16,16,64]{3,2,1,0} parameter(2)
  %fwd = (f32[128,16,16,64]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %din = (f32[128,16,16,32]{3,2,1,0}, u8[0]{0}) custom-call(%p2, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  ROOT %dw = (f32[64,3,3,32]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p2), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
}
"""

TPU_HLO = """
ENTRY %main (x: f32[128,15,15,8], w: f32[3,3,8,16], dy: f32[128,15,15,16]) -> f32[3,3,8,16] {
  %x = f32[128,15,15,8]{0,3,2,1:T(8,128)} parameter(0)
  %w = f32[3,3,8,16]{3,2,1,0:T(8,128)} parameter(1)
  %dy = f32[128,15,15,16]{0,3,2,1:T(8,128)} parameter(2)
  %y = f32[128,15,15,16]{0,3,2,1:T(8,128)} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %dx = f32[128,15,15,8]{0,3,2,1:T(8,128)} convolution(%dy, %w), window={size=3x3 pad=1_1x1_1 rhs_reversal=1x1}, dim_labels=b01f_01oi->b01f
  ROOT %dw = f32[3,3,8,16]{2,3,1,0:T(8,128)} convolution(%x, %dy), window={size=15x15 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf
}
"""


def test_convolution_kinds_as_gpu_and_tpu_compilers_print_them():
  # The same forward conv and its two gradients cost the same: 2 x outputs x taps x inputs.
  for text, c_in, c_out in ((GPU_HLO, 32, 64), (TPU_HLO, 8, 16)):
    stats = hlo_stats.analyze(text)
    kernels = stats['kernels']
    assert (kernels['conv_forward'], kernels['conv_backward_input'],
            kernels['conv_backward_filter']) == (1, 1, 1)
    size = 16 if text is GPU_HLO else 15
    assert stats['flops'] == 3 * 2 * 128 * size * size * c_out * 9 * c_in


def test_vmapped_convolution_is_one_grouped_conv_of_every_models_flops():
  x = jax.ShapeDtypeStruct((2, 4, 8, 8, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((2, 3, 3, 3, 5), jnp.float32)
  stats = hlo_stats.analyze(compiled_text(jax.vmap(conv), x, w))
  assert stats['kernels']['conv_grouped'] == 1
  assert stats['flops'] == 2 * (2 * 4 * 8 * 8 * 5 * 9 * 3)


TPU_PREFETCH_HLO = """
ENTRY %main (p: f32[1024,256]) -> f32[1024,256] {
  %p = f32[1024,256]{1,0:T(8,128)} parameter(0)
  %copy-start.1 = (f32[1024,256]{1,0:T(8,128)}, f32[1024,256]{1,0:T(8,128)S(1)}, u32[]{:S(2)}) copy-start(%p)
  %copy-done.1 = f32[1024,256]{1,0:T(8,128)S(1)} copy-done(%copy-start.1)
  ROOT %neg = f32[1024,256]{1,0:T(8,128)} negate(%copy-done.1)
}
"""


def test_an_asynchronous_copy_reads_its_operand_once_and_writes_the_copy_once():
  # The TPU compiler's prefetch into another memory space: its result tuple repeats
  # the operand (aliased) beside the copy; counting the tuple as written would add
  # the operand a second time.
  size = 1024 * 256 * 4
  assert hlo_stats.analyze(TPU_PREFETCH_HLO)['bytes_accessed'] == 2 * size + 4 + 2 * size


TPU_SLICE_HLO = """
ENTRY %main (p: bf16[1024,7,4,256]) -> bf16[1024,4,4,256] {
  %p = bf16[1024,7,4,256]{3,0,2,1:T(8,128)(2,1)} parameter(0)
  %slice-start = ((bf16[1024,7,4,256]{3,0,2,1:T(8,128)(2,1)}), bf16[1024,2,4,256]{3,0,2,1:T(8,128)(2,1)S(1)}, s32[]{:S(2)}) slice-start(%p), slice={[0:1024], [0:2], [0:4], [0:256]}
  %slice-done = bf16[1024,2,4,256]{3,0,2,1:T(8,128)(2,1)S(1)} slice-done(%slice-start)
  %slice-start.1 = ((bf16[1024,7,4,256]{3,0,2,1:T(8,128)(2,1)}), bf16[1024,2,4,256]{3,0,2,1:T(8,128)(2,1)S(1)}, s32[]{:S(2)}) slice-start(%p), slice={[0:1024], [2:4], [0:4], [0:256]}
  %slice-done.1 = bf16[1024,2,4,256]{3,0,2,1:T(8,128)(2,1)S(1)} slice-done(%slice-start.1)
  ROOT %custom-call = bf16[1024,4,4,256]{3,0,2,1:T(8,128)(2,1)S(1)} custom-call(%slice-done, %slice-done.1), custom_call_target="ConcatBitcast"
}
"""


def test_an_asynchronous_slice_counts_once_and_a_bitcast_concatenation_not_at_all():
  # slice-start reads its part of the operand and writes it; slice-done only waits
  # for it; ConcatBitcast names two adjacent buffers as one.
  piece = 1024 * 2 * 4 * 256 * 2
  assert hlo_stats.analyze(TPU_SLICE_HLO)['bytes_accessed'] == 2 * 2 * (piece + 4)
