"""Attributing a compiled step's traffic to layers and kinds: hand-written HLO in the forms
the TPU and GPU compilers print, a tiny network compiled on CPU, and the floor of
benchmarks/step_traffic.py. About 10 s."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from varjax.aot import hlo_stats
from varjax.aot import hlo_traffic
from varjax.models import airbench

FRAMES = '''HloModule jit_step, is_scheduled=true

FileNames
1 "/src/varjax/models/airbench.py"
2 "/src/varjax/step.py"
3 "/src/varjax/optim.py"

FunctionNames
1 "Airbench.__call__"
2 "ConvGroup.__call__"
3 "BatchNorm.__call__"
4 "make_step_parts.<locals>.apply"
5 "lookahead"
6 "max_pool"

FileLocations
1 {file_name_id=1 function_name_id=1 line=187 end_line=189 column=1 end_column=9}
2 {file_name_id=1 function_name_id=2 line=124 end_line=124 column=1 end_column=9}
3 {file_name_id=1 function_name_id=3 line=95 end_line=95 column=1 end_column=9}
4 {file_name_id=2 function_name_id=4 line=150 end_line=150 column=1 end_column=9}
5 {file_name_id=3 function_name_id=5 line=80 end_line=80 column=1 end_column=9}
6 {file_name_id=1 function_name_id=1 line=177 end_line=177 column=1 end_column=9}
7 {file_name_id=1 function_name_id=1 line=193 end_line=193 column=1 end_column=9}
8 {file_name_id=1 function_name_id=2 line=123 end_line=123 column=1 end_column=9}
9 {file_name_id=1 function_name_id=6 line=69 end_line=69 column=1 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=3}
4 {file_location_id=4 parent_frame_id=1}
5 {file_location_id=5 parent_frame_id=5}
6 {file_location_id=6 parent_frame_id=1}
7 {file_location_id=7 parent_frame_id=1}
8 {file_location_id=8 parent_frame_id=2}
9 {file_location_id=9 parent_frame_id=9}
'''

STEP_HLO = FRAMES + '''
%fused_kernel_grad (param_0: bf16[64,8,8,16], param_1: bf16[64,8,8,32], param_2: f32[3,3,16,32], param_3: f32[3,3,16,32]) -> (f32[3,3,16,32], f32[3,3,16,32]) {
  %param_0 = bf16[64,8,8,16]{0,3,2,1:T(8,128)(2,1)} parameter(0)
  %param_1 = bf16[64,8,8,32]{0,3,2,1:T(8,128)(2,1)} parameter(1)
  %conv = f32[3,3,16,32]{3,2,1,0:T(8,128)} convolution(%param_0, %param_1), window={size=8x8 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf, metadata={op_name="jit(step)/transpose(jvp(Airbench))/group1/conv_general_dilated" stack_frame_id=2}
  %param_2 = f32[3,3,16,32]{3,2,1,0:T(8,128)} parameter(2)
  %sub = f32[3,3,16,32]{3,2,1,0:T(8,128)} subtract(%param_2, %conv), metadata={op_name="jit(step)/sub" stack_frame_id=4}
  %param_3 = f32[3,3,16,32]{3,2,1,0:T(8,128)} parameter(3)
  %ema = f32[3,3,16,32]{3,2,1,0:T(8,128)} add(%param_3, %sub), metadata={op_name="jit(step)/add" stack_frame_id=5}
  ROOT %tuple = (f32[3,3,16,32]{3,2,1,0:T(8,128)}, f32[3,3,16,32]{3,2,1,0:T(8,128)}) tuple(%sub, %ema)
}

%fused_stats (param_0.1: bf16[64,8,8,32]) -> f32[32] {
  %param_0.1 = bf16[64,8,8,32]{0,3,2,1:T(8,128)(2,1)} parameter(0)
  %convert.1 = f32[64,8,8,32]{0,3,2,1:T(8,128)} convert(%param_0.1)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[32]{0:T(128)} reduce(%convert.1, %zero), dimensions={0,1,2}, to_apply=%add_f32, metadata={op_name="jit(step)/jvp(Airbench)/group1/norm1/reduce_sum" stack_frame_id=3}
}

%add_f32 (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_relayout (param_0.2: bf16[64,8,8,32]) -> bf16[64,8,8,32] {
  %param_0.2 = bf16[64,8,8,32]{0,3,2,1:T(8,128)(2,1)} parameter(0)
  ROOT %copy.1 = bf16[64,8,8,32]{3,2,1,0:T(8,128)(2,1)} copy(%param_0.2)
}

ENTRY %main (x: bf16[64,8,8,16], dy: bf16[64,8,8,32], w: f32[3,3,16,32], e: f32[3,3,16,32]) -> (f32[3,3,16,32], f32[3,3,16,32], f32[32], bf16[64,8,8,32], bf16[64,4,4,32]) {
  %x = bf16[64,8,8,16]{0,3,2,1:T(8,128)(2,1)} parameter(0)
  %dy = bf16[64,8,8,32]{0,3,2,1:T(8,128)(2,1)} parameter(1)
  %w = f32[3,3,16,32]{3,2,1,0:T(8,128)} parameter(2)
  %e = f32[3,3,16,32]{3,2,1,0:T(8,128)} parameter(3)
  %grad_and_update = (f32[3,3,16,32]{3,2,1,0:T(8,128)}, f32[3,3,16,32]{3,2,1,0:T(8,128)}) fusion(%x, %dy, %w, %e), kind=kOutput, calls=%fused_kernel_grad, metadata={op_name="jit(step)/transpose(jvp(Airbench))/group1/conv_general_dilated" stack_frame_id=2}, backend_config={"flag_configs":[],"window_config":{"estimated_cycles":"3000"}}
  %stats = f32[32]{0:T(128)} fusion(%dy), kind=kLoop, calls=%fused_stats, metadata={op_name="jit(step)/jvp(Airbench)/group1/norm1/reduce_sum" stack_frame_id=3}, backend_config={"flag_configs":[],"window_config":{"estimated_cycles":"1500"}}
  %relayout = bf16[64,8,8,32]{3,2,1,0:T(8,128)(2,1)} fusion(%dy), kind=kLoop, calls=%fused_relayout
  %pooled = bf16[64,4,4,32]{0,3,2,1:T(8,128)(2,1)} reduce-window(%dy, %zero.2), window={size=1x2x2x1 stride=1x2x2x1}, to_apply=%add_f32, metadata={op_name="jit(step)/jvp(Airbench)/group1/reduce_max" stack_frame_id=9}
  %zero.2 = bf16[] constant(0)
  %gte.0 = f32[3,3,16,32]{3,2,1,0:T(8,128)} get-tuple-element(%grad_and_update), index=0
  %gte.1 = f32[3,3,16,32]{3,2,1,0:T(8,128)} get-tuple-element(%grad_and_update), index=1
  ROOT %out = (f32[3,3,16,32]{3,2,1,0:T(8,128)}, f32[3,3,16,32]{3,2,1,0:T(8,128)}, f32[32]{0:T(128)}, bf16[64,8,8,32]{3,2,1,0:T(8,128)(2,1)}, bf16[64,4,4,32]{0,3,2,1:T(8,128)(2,1)}) tuple(%gte.0, %gte.1, %stats, %relayout, %pooled)
}
'''

X, DY, W = 64 * 8 * 8 * 16 * 2, 64 * 8 * 8 * 32 * 2, 3 * 3 * 16 * 32 * 4


def test_stack_frames_are_innermost_first_with_parents_one_off():
  frames = hlo_traffic.stack_frames(FRAMES)
  # Frame 3 (BatchNorm line 95) prints parent 3: frame 2, ConvGroup line 124,
  # whose parent 2 is frame 1, the network's line 187 (printed parent 1: none).
  assert [f for _, f, _ in frames[3]] == ['BatchNorm.__call__', 'ConvGroup.__call__',
                                          'Airbench.__call__']
  assert frames[3][0] == ('/src/varjax/models/airbench.py', 'BatchNorm.__call__', 95)
  assert [f for _, f, _ in frames[5]] == ['lookahead', 'make_step_parts.<locals>.apply']
  assert hlo_traffic._loop_lines(frames) == {187}  # pylint: disable=protected-access


def test_instructions_are_classified_by_scope_function_and_pass():
  frames = hlo_traffic.stack_frames(FRAMES)
  loops = {187}
  parse = lambda line: hlo_stats.parse(FRAMES + 'ENTRY %e () -> f32[] {\n' + line + '\n}\n')[0]['e'][0]
  classify = lambda line: hlo_traffic.classify(parse(line), frames, loops)
  meta = lambda name, frame: f', metadata={{op_name="jit(step)/{name}" stack_frame_id={frame}}}'
  assert classify('  %r = f32[8]{0} reduce(%a, %b), dimensions={0}, to_apply=%s'
                  + meta('jvp(Airbench)/group2/norm1/reduce_sum', 3)) == (
                      'group2', 'BN statistics', 'fwd')
  assert classify('  %m = bf16[8]{0} multiply(%a, %b)'
                  + meta('transpose(jvp(Airbench))/group2/norm1/mul', 3)) == (
                      'group2', 'BN normalise', 'bwd')
  assert classify('  %s = bf16[8]{0} select(%p, %a, %b)'
                  + meta('transpose(jvp(Airbench))/group1/mul', 9)) == (
                      'group1', 'pool backward', 'bwd')
  # Lines of the network's __call__ before the groups' loop are the whitening
  # layer, after it the head.
  assert classify('  %g = bf16[8]{0} multiply(%a, %b)' + meta('jvp(Airbench)/mul', 6))[0] == (
      'whiten')
  assert classify('  %h = bf16[8]{0} maximum(%a, %b)' + meta('jvp(Airbench)/max', 7))[0] == 'head'
  assert classify('  %u = f32[8]{0} add(%a, %b)' + meta('add', 5)) == (
      'optimiser', 'lookahead', 'update')
  assert classify('  %c = f32[8]{0} copy(%a)') == (None, 'layout', 'fwd')


def test_fused_parts_go_to_their_own_kinds_and_add_up_to_the_op():
  rows = hlo_traffic.op_rows(STEP_HLO)
  assert sum(r['bytes'] for r in rows) == hlo_stats.analyze(STEP_HLO)['bytes_accessed']
  grad = {r['kind']: r['bytes'] for r in rows if r['name'] == 'grad_and_update'}
  # The convolution reads x and dy; the optimiser's update fused into its
  # epilogue reads the weights and the average and writes both.
  assert grad == {'conv kernel grad': X + DY, 'optimiser': 2 * W, 'lookahead': 2 * W}
  layers = {r['name']: (r['layer'], r['kind']) for r in rows}
  assert layers['stats'] == ('group1', 'BN statistics')
  assert layers['pooled'] == ('group1', 'pool')
  # The compiler's relayout has no metadata, nor has what it copies or what reads it.
  assert layers['relayout'] == ('other', 'layout')
  cycles = hlo_traffic.summarize(rows, 'name')
  cycles = {name: v['cycles'] for name, v in cycles.items()}
  assert cycles['grad_and_update'] == 3000 and cycles['stats'] == 1500
  summary = hlo_traffic.summarize(rows, 'kind')
  assert summary['conv kernel grad']['bytes'] == X + DY and summary['conv kernel grad']['ops'] == 1
  assert [t[0] for t in hlo_traffic.top_ops(rows, 2)] == ['relayout', 'grad_and_update']


def test_a_tiny_network_compiled_on_cpu_is_attributed_layer_by_layer():
  model = airbench.Airbench(widths=(4, 8, 8))
  x = jnp.zeros((8, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))

  def loss(params, stats, x):
    logits, _ = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                            mutable=['batch_stats'])
    return logits.sum()

  text = jax.jit(jax.grad(loss)).trace(variables['params'], variables['batch_stats'],
                                       x).lower().compile().as_text()
  rows = hlo_traffic.op_rows(text)
  assert sum(r['bytes'] for r in rows) == hlo_stats.analyze(text)['bytes_accessed']
  layers = hlo_traffic.summarize(rows, 'layer')
  assert {'whiten', 'group1', 'group2', 'group3'} <= set(layers)
  # Nearly every byte is named (at these widths the 24-channel whitening maps dominate).
  named = sum(v['bytes'] for k, v in layers.items() if k != 'other')
  assert named > 0.99 * sum(r['bytes'] for r in rows)
  assert layers['whiten']['bytes'] > layers['group1']['bytes'] > layers['group2']['bytes']
  kinds = hlo_traffic.summarize(rows, 'kind')
  assert {'conv forward', 'pool', 'pool backward'} <= set(kinds)


def _load_script():
  spec = importlib.util.spec_from_file_location('step_traffic',
                                                REPO / 'benchmarks' / 'step_traffic.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_floor_counts_each_map_five_times_and_the_parameters_nine():
  step_traffic = _load_script()
  values, fused = step_traffic.map_values()
  # SPEC section 8: ~260k activation values per image (whitening 23k, group-1
  # conv 61.5k, group-2 conv 57.6k, pooled / normalised / activated maps 12-14k).
  assert values == 23_064 + (61_504 + 4 * 14_400) + (57_600 + 4 * 12_544) + (12_544 + 4 * 2_304)
  assert fused == 23_064 + (61_504 + 2 * 14_400) + (57_600 + 2 * 12_544) + (12_544 + 2 * 2_304)
  floor = step_traffic.floor_bytes()
  maps = sum(v for k, v in floor.items() if 'maps' in k)
  assert maps == 5 * 2 * 1024 * values
  assert sum(floor.values()) == pytest.approx(2.856e9, rel=1e-3)
