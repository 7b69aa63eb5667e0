r"""Where an airbench94 training step's memory traffic goes, by layer and kind, against a floor.

  python benchmarks/step_traffic.py                       # h100 and tpu-v5e:1x1, 4 models
  python benchmarks/step_traffic.py --targets=tpu-v5e:1x1 --pieces --hlo_dir=/tmp/hlo
  python benchmarks/step_traffic.py --from_dir=/tmp/hlo   # tables again, no compile
  python benchmarks/step_traffic.py --set=ensemble.formulation=grad_of_sum

Compiles the ensemble's training step (varjax/aot/plan.py: the program a run executes,
from abstract shapes; 4 models in one chunk, the config's defaults otherwise)
for compile-only targets and reads its optimised HLO with
``varjax.aot.hlo_traffic``: every top-level op's bytes (``hlo_stats``' count),
attributed through the HLO metadata to a layer and a kind. Prints per target:
the totals (ours, and the TPU compiler's ``bytes accessed``), temporaries,
compile time, the floor (``floor_bytes``), then GB per model-step by layer, by
kind and pass (fwd / bwd / update / data), and the ops that move the most; on
TPU also the compiler's own per-op estimate (``estimated_cycles`` at 1.5 GHz,
v5e's clock) beside each line.

``--pieces`` (TPU) also compiles the step's three stages separately (the
augmented batch, the loss and its gradients, the optimiser update) so that the
TPU compiler's ``bytes accessed``, which it reports only as a total, can be
split by stage and set against ours. Not part of varjax.
"""

import argparse
import ast
import importlib.util
import json
import os
import pathlib
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # this host only compiles

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from varjax.aot import targets  # pylint: disable=wrong-import-position

targets.quiet_tpu_environment()  # before libtpu loads

# pylint: disable=wrong-import-position
from varjax.aot import hlo_stats
from varjax.aot import hlo_traffic

TPU_CLOCK_HZ = 1.5e9  # v5e TensorCore clock: 197 TFLOP/s / (4 MXUs x 128 x 128 x 2)
GB = 1e9


def floor_bytes(widths=(64, 256, 256), batch=1024, act_bytes=2, whiten_width=24, size=32,
                num_params=1_971_640, param_bytes=4):
  """The traffic floor of one model's training step, itemised: {item: bytes}.

  Accounting (per image unless said):
  - the augmented input: its uint8 pixels read once (size^2 x 3 bytes), with the
    crop, flip and normalisation fused into the first layer's read;
  - every activation map the network keeps (``maps``: the whitening output
    after GELU; per group the first conv's output before the pool, the pooled
    map, its BatchNorm + GELU, the second conv's output and its BatchNorm +
    GELU) written once and read once forward, read once backward, and its
    gradient written once and read once: 5 passes of ``act_bytes`` per value;
  - parameters (float32, per model-step): read by the forward, gradients
    written, then one optimiser pass reading gradients, parameters, momentum
    and the lookahead average and writing the last three: 9 passes.
  BatchNorm statistics (per channel) and the logits are negligible. The
  'fused' variant (``fused_maps``) keeps only what must cross a kernel
  boundary when the BatchNorm + GELU after a map is recomputed inside its
  consumers (conv prologues, as the TPU compiler fuses them).
  """
  maps = {'whiten': (size - 1) ** 2 * whiten_width}
  side = size - 1
  for g, width in enumerate(widths, 1):
    pooled = (side // 2) ** 2 * width
    maps[f'group{g}'] = side * side * width + 4 * pooled
    side //= 2
  items = {f'{name} maps (5 passes)': 5 * act_bytes * batch * values
           for name, values in maps.items()}
  items['input pixels (uint8, read once)'] = batch * size * size * 3
  items['parameters and optimiser (9 f32 passes)'] = 9 * param_bytes * num_params
  return items


def map_values(widths=(64, 256, 256), whiten_width=24, size=32):
  """Activation values per image of the maps ``floor_bytes`` counts (and the fused subset)."""
  side = size - 1
  total = fused = side * side * whiten_width
  for width in widths:
    pooled = (side // 2) ** 2 * width
    total += side * side * width + 4 * pooled
    fused += side * side * width + 2 * pooled  # conv1 output, pooled, conv2 output
    side //= 2
  return total, fused


def load_config(path, variant, overrides):
  spec = importlib.util.spec_from_file_location('experiment', REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  config.num_models = 4
  config.ensemble.models_per_chunk = 4
  for item in overrides:
    key, value = item.split('=', 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def compile_step(config, target_name):
  """(record, HLO text): aot/plan.py's record of the compiled train step (as JSON) and its HLO."""
  from varjax.aot import plan  # pylint: disable=import-outside-toplevel
  from varjax.ensemble import abstract  # pylint: disable=import-outside-toplevel
  target, ens = plan.build(config, target_name)
  start = time.perf_counter()
  compiled = abstract.compile(ens, 'train_step')
  seconds = time.perf_counter() - start
  record = plan.describe(target, ens, 'train_step', compiled, seconds).to_json()
  return record, compiled.as_text()


def compile_pieces(config, target_name):
  """{stage: (our bytes, the compiler's bytes accessed)} of the step's stages
  compiled alone for ``target_name`` (the chunk's models vmapped)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from varjax.aot import plan  # pylint: disable=import-outside-toplevel
  from varjax.ensemble import abstract  # pylint: disable=import-outside-toplevel
  from varjax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  _, ens = plan.build(config, target_name)
  batch_fn, loss_fn, apply_fn = step_lib.make_step_parts(ens.model, ens.recipe, True)
  rep = NamedSharding(ens.mesh, P())
  abstract = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep)
  m = ens.models_per_chunk
  state = jax.tree.map(lambda s: abstract(jax.ShapeDtypeStruct((m,) + s.shape[1:], s.dtype)),
                       abstract.state(ens))
  hparams = jax.tree.map(lambda s: abstract(jax.ShapeDtypeStruct((m,) + s.shape[1:], s.dtype)),
                         jax.eval_shape(lambda: ens.model_hparams))
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rep)
  b, n = ens.recipe.batch_size, ens.recipe.num_train
  images = ens.step_images_shape(n)
  x = sds((m, b, 32, 32, 3), ens.model.dtype)
  y = sds((m, b), jnp.int32)
  key_data = jax.random.key_data(jax.random.key(0))

  def batch(keys, orders, imgs, labels, step):
    keys = jax.vmap(jax.random.wrap_key_data)(keys)
    return jax.vmap(batch_fn, in_axes=(0, 0, None, None, None))(keys, orders, imgs, labels, step)

  def grads(params, stats, x, y, smoothing):
    return jax.vmap(jax.value_and_grad(loss_fn, has_aux=True))(params, stats, x, y, smoothing)

  def update(state, hparams, step, loss, grads, stats, logits, y):
    return jax.vmap(apply_fn, in_axes=(0, 0, None, 0, 0, 0, 0))(
        state, hparams, step, loss, (logits, stats), y, grads)

  stages = {
      'augmented batch': (batch, (sds((m,) + key_data.shape, key_data.dtype),
                                  sds((m, n), jnp.int32), sds(images, jnp.uint8),
                                  sds((n,), jnp.int32), sds((), jnp.int32))),
      'loss and gradients': (grads, (state['params'], state['batch_stats'], x, y,
                                     hparams['label_smoothing'])),
      'optimiser update': (update, (state, hparams, sds((), jnp.int32), sds((m,), jnp.float32),
                                    state['params'], state['batch_stats'],
                                    sds((m, b, 10), jnp.float32), y)),
  }
  out = {}
  for name, (fn, args) in stages.items():
    compiled = jax.jit(fn).trace(*args).lower().compile()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out[name] = (hlo_stats.analyze(compiled.as_text())['bytes_accessed'],
                 cost.get('bytes accessed'),
                 {k: v for k, v in cost.items() if k.startswith('bytes accessed') and v > 1e8})
  return out


def _gb(x, models):
  return f'{x / models / GB:7.3f}'


def report(record, hlo_text, top, pieces=None, out=sys.stdout):
  """Prints the traffic tables of one compiled step (see the module docstring)."""
  models = record['models_per_device']
  # Counted again from the HLO: a record read back may predate a fix of the count.
  stats = hlo_stats.analyze(hlo_text)
  target = targets.get(record['target'])
  record = {**record, 'bytes_accessed_per_step': stats['bytes_accessed'],
            'flops_per_step': stats['flops'],
            'roofline_step_s': max(stats['flops'] / target.peak_flops(record['compute_dtype']),
                                   stats['bytes_accessed'] / target.bandwidth)}
  rows = hlo_traffic.op_rows(hlo_text)
  total = sum(r['bytes'] for r in rows)
  tpu = record['target'].startswith('tpu')
  widths = tuple(record.get('widths', (64, 256, 256)))
  floor = floor_bytes(widths, record.get('batch_size', 1024),
                      2 if record['compute_dtype'] == 'bfloat16' else 4)
  floor_total = sum(floor.values())
  p = lambda *a: print(*a, file=out)
  p(f"\n## {record['target']} ({record['formulation']}, {record['compute_dtype']}, "
    f"{models} models in one chunk)\n")
  compiler = record.get('compiler_bytes_accessed')
  p(f"compile {record['compile_s']:.0f} s; temporaries {record['temp_bytes'] / 2**30:.2f} GiB; "
    f"ours {record['bytes_accessed_per_step'] / GB:.2f} GB per step = "
    f"{record['bytes_accessed_per_step'] / models / GB:.3f} per model-step"
    + (f"; the TPU compiler's {compiler / GB:.2f} GB ({compiler / models / GB:.3f} per model)"
       if compiler else '')
    + f"; roofline {record['roofline_step_s'] * 1e3:.1f} ms; "
      f"{record['flops_per_step'] / models / 1e12:.3f} TFLOP per model-step")
  if abs(total - record['bytes_accessed_per_step']) > 1e-6 * total + 16:
    p(f'(attributed rows add up to {total / GB:.3f} GB, hlo_stats says '
      f"{record['bytes_accessed_per_step'] / GB:.3f})")
  p(f'floor {floor_total / GB:.3f} GB per model-step: ' +
    '; '.join(f'{k} {v / GB:.3f}' for k, v in floor.items()))
  values, fused = map_values(widths)
  p(f'  ({values:,} activation values per image; {fused:,} with BatchNorm + GELU recomputed '
    f'in their consumers: fused floor '
    f'{(floor_total - 5 * 2 * 1024 * (values - fused)) / GB:.3f} GB)')
  est = (lambda c: f' {c / TPU_CLOCK_HZ * 1e3 / models:8.2f}') if tpu else (lambda c: '')
  est_head = ' | TPU est. ms/model' if tpu else ''
  p(f'\n| layer | GB / model-step | share{est_head} | top-level ops |')
  p('| --- | ---: | ---: |' + (' ---: |' if tpu else '') + ' ---: |')
  layers = hlo_traffic.summarize(rows, 'layer')
  for layer in hlo_traffic.LAYERS:
    if layer in layers:
      v = layers[layer]
      p(f"| {layer} | {_gb(v['bytes'], models)} | {100 * v['bytes'] / total:5.1f}% |"
        + (f"{est(v['cycles'])} |" if tpu else '') + f" {v['ops']} |")
  p(f"| total | {_gb(total, models)} | 100% |" + (f"{est(sum(r['cycles'] for r in rows))} |"
                                                  if tpu else '') + ' |')
  p(f'\n| kind | fwd | bwd | update | data | total GB / model-step | share{est_head} |')
  p('| --- | ---: | ---: | ---: | ---: | ---: | ---: |' + (' ---: |' if tpu else ''))
  by = hlo_traffic.summarize(rows, 'kind', 'direction')
  kinds = hlo_traffic.summarize(rows, 'kind')
  for kind in hlo_traffic.KINDS:
    if kind not in kinds:
      continue
    cells = [_gb(by.get((kind, d), {'bytes': 0})['bytes'], models)
             for d in ('fwd', 'bwd', 'update', 'data')]
    v = kinds[kind]
    p(f"| {kind} | {' | '.join(cells)} | {_gb(v['bytes'], models)} | "
      f"{100 * v['bytes'] / total:5.1f}% |" + (f"{est(v['cycles'])} |" if tpu else ''))
  p(f'\n{top} ops that move the most (GB per step, all {models} models):\n')
  for name, nbytes, row, parts in hlo_traffic.top_ops(rows, top):
    mix = '' if len(parts) < 2 else ' [' + ', '.join(
        f'{k} {v / GB:.2f}' for k, v in sorted(parts.items(), key=lambda kv: -kv[1])) + ']'
    cycles = sum(r['cycles'] for r in rows if r['name'] == name)
    p(f"  {nbytes / GB:6.3f} {name} ({row['opcode']}) {row['layer']}/{row['kind']}/"
      f"{row['direction']}{mix} {hlo_stats.arrays(row['shape'])[:3]}"
      + (f' est {cycles / TPU_CLOCK_HZ * 1e3:.2f} ms' if tpu else '')
      + f" <- {' < '.join(row['functions'][:3])}")
  if pieces:
    p('\nThe step\'s stages compiled alone (GB per step, all models): ours / the TPU '
      "compiler's bytes accessed")
    for name, (ours, theirs, *by_operand) in pieces.items():
      p(f'  {name}: {ours / GB:.3f} / ' + (f'{theirs / GB:.3f}' if theirs else '-')
        + (' (the compiler\'s by operand index, over 0.1 GB: ' + ', '.join(
            f'{k[len("bytes accessed"):]} {v / GB:.2f}' for k, v in by_operand[0].items()
            if k != 'bytes accessed') + ')' if by_operand and by_operand[0] else ''))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='experiments/airbench.py')
  parser.add_argument('--variant', default=None)
  parser.add_argument('--targets', default='h100,tpu-v5e:1x1')
  parser.add_argument('--set', action='append', default=[],
                      help='config override KEY=VALUE (repeatable)')
  parser.add_argument('--top', type=int, default=15)
  parser.add_argument('--pieces', action='store_true',
                      help='TPU: also compile the stages alone for the compiler\'s counts')
  parser.add_argument('--hlo_dir', default=None, help='write each HLO and record here')
  parser.add_argument('--from_dir', default=None, help='read HLO and records from here')
  args = parser.parse_args(argv)
  for name in args.targets.split(','):
    stem = name.replace(':', '_')
    pieces = None
    if args.from_dir:
      with open(os.path.join(args.from_dir, f'{stem}.record.json')) as f:
        record = json.load(f)
      with open(os.path.join(args.from_dir, f'{stem}.train_step.hlo')) as f:
        text = f.read()
      pieces = record.pop('pieces', None)
    else:
      config = load_config(args.config, args.variant, args.set)
      record, text = compile_step(config, name)
      record['widths'] = list(config.model.widths)
      record['batch_size'] = config.train.batch_size
      if args.pieces and name.startswith('tpu'):
        pieces = compile_pieces(config, name)
      if args.hlo_dir:
        os.makedirs(args.hlo_dir, exist_ok=True)
        with open(os.path.join(args.hlo_dir, f'{stem}.train_step.hlo'), 'w') as f:
          f.write(text)
        with open(os.path.join(args.hlo_dir, f'{stem}.record.json'), 'w') as f:
          json.dump({**record, 'pieces': pieces}, f)
    report(record, text, args.top, pieces)
    sys.stdout.flush()


if __name__ == '__main__':
  main()
