"""Where a compiled training step's memory traffic goes, op by op, read from its optimised HLO.

Every top-level op's bytes (``hlo_stats``' count: operands read, results
written, a fusion's inner values on chip, loop bodies times their trips) are
split over its operands and results, and each part is attributed to a layer
(whiten, group1..3, head, loss, optimiser, data) and a kind (convolution
forward / input gradient / kernel gradient, BatchNorm statistics or
normalisation, GELU, pooling, augmentation, optimiser, lookahead, layout
copies, ...) through the HLO metadata: ``op_name`` carries the JAX
transformation path and the Flax module scope (``jvp(Airbench)/group1/...``;
``transpose(`` marks the backward pass), and ``stack_frame_id`` indexes the
module's stack-frame table (FileNames, FunctionNames, FileLocations,
StackFrames), the Python call stack that built the op. A fused operand is
attributed to the fused instruction that consumes it, a fused result to the
one that produces it, so a kernel-gradient convolution with the optimiser's
update fused into its epilogue (as the TPU compiler does) splits into both.

On TPU each top-level op also carries the compiler's own cost model estimate
(``estimated_cycles`` in its backend config), kept per op.

Example:
  >>> rows = op_rows(compiled.as_text())                                   # doctest: +SKIP
  >>> summarize(rows, 'kind')['conv kernel grad']                           # doctest: +SKIP
"""

import collections
import json
import re

from varjax.aot import hlo_stats

# Kinds, in the priority that names a fused op after its most important part.
KINDS = ('conv forward', 'conv input grad', 'conv kernel grad', 'pool', 'pool backward',
         'BN statistics', 'BN normalise', 'GELU', 'augmentation', 'head and loss', 'lookahead',
         'optimiser', 'divergence guard', 'layout', 'other')
LAYERS = ('data', 'whiten', 'group1', 'group2', 'group3', 'head', 'loss', 'optimiser', 'other')
# Ops that only move or reinterpret data; a kind of their own where nothing else names them.
MOVES = {'copy', 'transpose', 'bitcast', 'reshape', 'broadcast', 'slice', 'concatenate', 'pad',
         'copy-start', 'copy-done', 'bitcast-convert', 'parameter', 'constant', 'tuple',
         'get-tuple-element', 'reverse', 'dynamic-slice', 'dynamic-update-slice', 'convert'}
# Ops (and fusions made only of them) that change a layout or a dtype: always 'layout'.
LAYOUT = {'copy', 'transpose', 'bitcast', 'reshape', 'copy-start', 'copy-done',
          'bitcast-convert', 'convert', 'parameter', 'constant', 'tuple', 'get-tuple-element'}
_UNINFORMATIVE = (None, 'layout', 'other')
MATMUL_KINDS = ('conv forward', 'conv input grad', 'conv kernel grad')
UPDATE_KINDS = ('optimiser', 'lookahead', 'divergence guard')

_AUGMENT = {'train_batch', 'normalize', 'crop', 'crop_indices', 'crop_offsets', 'reflect_index',
            'flip_mask', 'reflect_pad', 'batch_crop', 'corrupt', 'gather_batch'}
_GELU = {'activation', 'gelu', '_gelu_jvp', '_normal_cdf'}
_LOSS = {'smoothed_cross_entropy_sum', 'softmax_cross_entropy', 'smooth_labels'}
_OPTIMISER = {'make_step_parts.<locals>.apply', 'nesterov_sgd', 'coupled_weight_decay',
              'apply_updates', 'lr_factor', 'make_optimizer', 'fused_update'}


def _section_lines(hlo_text):
  """{section name: [lines]} of the stack-frame tables printed before the computations."""
  sections, current = {}, None
  for line in hlo_text.splitlines():
    if line in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      current = sections.setdefault(line, [])
    elif current is not None and re.match(r'^[0-9]+ ', line):
      current.append(line)
    elif line.startswith('%') or line.startswith('ENTRY') or line.startswith('}'):
      current = None
  return sections


def stack_frames(hlo_text):
  """{stack_frame_id: [(file, function, line), ...]} innermost frame first.

  XLA prints each frame's parent as one more than the parent frame's id
  (``parent_frame_id=1`` for a frame with none), as jax 0.10.2's HLO shows.
  """
  sections = _section_lines(hlo_text)
  names = lambda key: {int(l.split(' ', 1)[0]): l.split(' ', 1)[1].strip('"')
                       for l in sections.get(key, ())}
  files, functions = names('FileNames'), names('FunctionNames')
  locations, parents = {}, {}
  for line in sections.get('FileLocations', ()):
    fields = dict(re.findall(r'(\w+)=([0-9]+)', line))
    locations[int(line.split(' ', 1)[0])] = (files.get(int(fields['file_name_id']), '?'),
                                             functions.get(int(fields['function_name_id']), '?'),
                                             int(fields.get('line', 0)))
  frame_location = {}
  for line in sections.get('StackFrames', ()):
    fields = dict(re.findall(r'(\w+)=([0-9]+)', line))
    frame = int(line.split(' ', 1)[0])
    frame_location[frame] = int(fields['file_location_id'])
    parents[frame] = int(fields['parent_frame_id']) - 1
  stacks = {}
  for frame in frame_location:
    stack, seen, current = [], set(), frame
    while current in frame_location and current not in seen:
      seen.add(current)
      stack.append(locations.get(frame_location[current], ('?', '?', 0)))
      current = parents.get(current, 0)
    stacks[frame] = stack
  return stacks


def _loop_lines(frames):
  """Lines of the network's __call__ that call a conv group: whitening ops come
  before the first, the head's after."""
  lines = set()
  for stack in frames.values():
    for inner, outer in zip(stack, stack[1:]):
      if inner[1] == 'ConvGroup.__call__' and outer[1] == 'Airbench.__call__':
        lines.add(outer[2])
  return lines


def op_name(inst):
  found = re.search(r'op_name="([^"]*)"', inst.attrs)
  return found.group(1) if found else ''


def frames_of(inst, frames):
  found = re.search(r'stack_frame_id=([0-9]+)', inst.attrs)
  return frames.get(int(found.group(1)), []) if found else []


def classify(inst, frames, loop_lines=frozenset()):
  """(layer, kind, direction) of one HLO instruction from its opcode and metadata;
  kind None when the instruction says nothing (no metadata, a bare data move)."""
  name = op_name(inst)
  stack = frames_of(inst, frames)
  functions = {f for _, f, _ in stack}
  backward = 'transpose(' in name
  group = re.search(r'/(group[0-9]+)/', name)
  layer = group.group(1) if group else None
  network_lines = [line for _, f, line in stack if f == 'Airbench.__call__']
  if layer is None and network_lines:
    first_group = min(loop_lines) if loop_lines else None
    layer = ('head' if first_group is not None and network_lines[0] > first_group
             else 'whiten')
  if layer is None and 'patch_conv' in functions:
    layer = 'whiten'
  kind = None
  is_conv = inst.opcode == 'convolution' or (
      inst.opcode == 'custom-call' and inst.attr('custom_call_target') in hlo_stats.CUDNN_KINDS)
  if is_conv:
    kind = {'forward': 'conv forward', 'backward_input': 'conv input grad',
            'backward_filter': 'conv kernel grad'}[hlo_stats.conv_kind(inst)]
    if kind == 'conv forward' and backward:
      # A gradient written as a forward convolution (cuDNN runs input gradients
      # as forward convolutions of the flipped kernel; vmap's kernel gradients
      # become forward convolutions with map-sized windows).
      kind = 'conv kernel grad' if hlo_stats._taps(inst) > 9 else 'conv input grad'  # pylint: disable=protected-access
  elif inst.opcode == 'dot' or 'gemm' in (inst.attr('custom_call_target') or ''):
    kind = 'conv forward' if 'patch_conv' in functions else 'head and loss'
  elif functions & _AUGMENT or inst.opcode == 'gather':
    kind, layer = 'augmentation', 'data'
  elif functions & {'max_pool', '_window_max', '_window_max_fwd', '_window_max_bwd', '_windows'}:
    kind = 'pool backward' if backward else 'pool'
  elif 'BatchNorm.__call__' in functions:
    kind = 'BN statistics' if inst.opcode in ('reduce', 'reduce-window') else 'BN normalise'
  elif functions & _GELU:
    kind = 'GELU'
  elif functions & _LOSS:
    kind, layer = 'head and loss', layer or 'loss'
  elif 'lookahead' in functions:
    kind, layer = 'lookahead', 'optimiser'
  elif 'all_finite' in functions or ('jit(_where)' in name and functions & _OPTIMISER):
    kind, layer = 'divergence guard', 'optimiser'
  elif functions & _OPTIMISER or any('optax' in f for f, _, _ in stack):
    kind, layer = 'optimiser', 'optimiser'
  elif layer == 'head' and inst.opcode in ('reduce', 'reduce-window'):
    kind = 'pool backward' if backward else 'pool'
  elif inst.opcode in MOVES:
    kind = 'layout'
  elif stack or name:
    kind = 'other'
  if layer is None and kind is not None and stack:
    layer = 'other'
  direction = ('update' if layer == 'optimiser' else 'data' if layer == 'data'
               else 'bwd' if backward else 'fwd')
  return layer, kind, direction


def _first_informative(start, step, labels):
  """Breadth-first from ``start`` along ``step`` (users or operands) to the first
  instruction with an informative kind; None if there is none."""
  queue, seen = collections.deque([start]), {start}
  while queue:
    name = queue.popleft()
    label = labels.get(name)
    if label is not None and label[1] not in _UNINFORMATIVE:
      return label
    for nxt in step(name):
      if nxt not in seen:
        seen.add(nxt)
        queue.append(nxt)
  return None


def _reaching(starts, step):
  """Every instruction reachable from ``starts`` (included) along ``step``."""
  seen, stack = set(starts), list(starts)
  while stack:
    for nxt in step(stack.pop()):
      if nxt not in seen:
        seen.add(nxt)
        stack.append(nxt)
  return seen


def _operand_and_result_bytes(inst, shapes, computations):
  """([(operand index, bytes read)], [(result index, bytes written)]) of a top-level
  op; they add up to ``hlo_stats.op_traffic``."""
  results = hlo_stats.arrays(inst.shape)
  per_result = [(i, hlo_stats.DTYPE_BYTES[t] * _prod(d)) for i, (t, d) in enumerate(results)]
  if inst.opcode in hlo_stats.ASYNC_COPIES:  # (operand, copy, context): one read, one write
    operand = sum(hlo_stats.nbytes(shapes.get(o, '')) for o in inst.operands)
    copy = hlo_stats.nbytes(inst.shape) - operand
    return [(0, operand if inst.opcode == 'copy-start' else copy)], [(0, copy)]
  if inst.opcode in hlo_stats.SLICING:
    written = hlo_stats.nbytes(inst.shape)
    return [(0, written)], [(0, written)]
  if inst.opcode == 'dynamic-update-slice':
    update = hlo_stats.nbytes(shapes.get(inst.operands[1], ''))
    return [(1, update)], [(0, update)]
  if inst.opcode != 'fusion':
    return ([(i, hlo_stats.nbytes(shapes.get(o, ''))) for i, o in enumerate(inst.operands)],
            per_result)
  body = computations.get((inst.attr('calls') or '').lstrip('%'), [])
  params = {int(re.sub(r'[^0-9]', '', i.args) or 0): i.name
            for i in body if i.opcode == 'parameter'}
  reads = []
  for index, operand in enumerate(inst.operands):
    full = hlo_stats.nbytes(shapes.get(operand, ''))
    if index in params:
      full = min(hlo_stats._read_bytes(body, params[index], shapes), full)  # pylint: disable=protected-access
    reads.append((index, full))
  if body and body[-1].opcode == 'dynamic-update-slice':
    per_result = [(0, hlo_stats.nbytes(shapes.get(body[-1].operands[1], '')))]
  return reads, per_result


def _prod(dims):
  out = 1
  for d in dims:
    out *= d
  return out


def estimated_cycles(inst):
  """The TPU compiler's cost-model cycles of one top-level op (its backend config), or None."""
  found = re.search(r'"estimated_cycles":"([0-9]+)"', inst.attrs)
  return int(found.group(1)) if found else None


def op_rows(hlo_text):
  """One row per (top-level op, attributed part): name, opcode, shape, layer, kind,
  direction, bytes (times its loop trips), trips, cycles (TPU estimate, on the op's
  first part), op_name, functions (innermost first) and fused_kinds (all kinds the
  op's parts got)."""
  computations, entry = hlo_stats.parse(hlo_text)
  shapes = {i.name: i.shape for insts in computations.values() for i in insts}
  frames = stack_frames(hlo_text)
  loops = frozenset(_loop_lines(frames))
  defined = {i.name: i for insts in computations.values() for i in insts}
  rows, collected = [], []

  def label_body(body):
    return {i.name: classify(i, frames, loops) for i in body}

  def fusion_parts(inst, reads, writes):
    body = computations.get((inst.attr('calls') or '').lstrip('%'), [])
    labels = label_body(body)
    users = collections.defaultdict(list)
    for i in body:
      for o in i.operands:
        users[o].append(i.name)
    operands = {i.name: i.operands for i in body}
    ranked = [l for l in labels.values() if l[1] not in _UNINFORMATIVE]
    if not ranked or all(i.opcode in LAYOUT for i in body):
      # A relayout or dtype copy: 'layout', in the layer its metadata names.
      own = classify(inst, frames, loops)
      named = [l for l in labels.values() if l[0] is not None] + [own]
      layer = next((l[0] for l in named if l[0] is not None), 'other')
      direction = next((l[2] for l in named if l[0] is not None), own[2])
      primary = (layer, 'layout', direction)
      return [(primary, b) for _, b in reads] + [(primary, b) for _, b in writes], primary
    backward = any(l[2] == 'bwd' for l in ranked)
    primary = min(ranked, key=lambda l: KINDS.index(l[1]))
    if backward and primary[2] == 'fwd':
      primary = (primary[0], primary[1].replace('pool', 'pool backward')
                 if primary[1] == 'pool' else primary[1], 'bwd')
    engines = [i.name for i in body if labels[i.name][1] in MATMUL_KINDS]
    if not engines:  # one label for the whole op
      return [(primary, b) for _, b in reads] + [(primary, b) for _, b in writes], primary
    # A convolution (or matmul) with fused prologue and epilogue: what feeds it or
    # comes out of it is its traffic; the optimiser's update the TPU compiler fuses
    # into a kernel gradient's epilogue is the optimiser's.
    engine = labels[engines[0]]
    feeds = _reaching(engines, lambda n: operands.get(n, ()))
    params = {int(re.sub(r'[^0-9]', '', i.args) or 0): i.name
              for i in body if i.opcode == 'parameter'}
    parts = []
    for index, nbytes in reads:
      name = params.get(index)
      label = engine if name in feeds else (
          _first_informative(name, lambda n: users.get(n, ()), labels) if name else None)
      parts.append((label or primary, nbytes))
    root = body[-1]
    outputs = root.operands if root.opcode == 'tuple' else [root.name]
    for index, nbytes in writes:
      start = outputs[index] if index < len(outputs) else None
      label = (_first_informative(start, lambda n: operands.get(n, ()), labels)
               if start else None)
      if label is None or label[1] not in UPDATE_KINDS:
        label = engine
      parts.append((label, nbytes))
    return parts, primary

  producers = {}  # top-level op name -> its primary label, for unnamed copies

  def producer_layer(name, seen=()):
    inst = defined.get(name)
    if inst is None or name in seen:
      return None
    if name in producers:
      return producers[name][0]
    for operand in inst.operands:
      layer = producer_layer(operand, seen + (name,))
      if layer not in (None, 'other'):
        return layer
    return None

  def walk(name, trips):
    for inst in computations.get(name, ()):
      if inst.opcode == 'while':
        walk((inst.attr('body') or '').lstrip('%'), trips * hlo_stats.trip_count(inst, computations))
        continue
      if inst.opcode in ('call', 'conditional'):
        for group in hlo_stats._CALLEES.findall(inst.attrs):  # pylint: disable=protected-access
          for callee in re.findall(r'[\w.\-]+', group):
            walk(callee, trips)
        continue
      if hlo_stats.no_traffic(inst):
        continue
      reads, writes = _operand_and_result_bytes(inst, shapes, computations)
      if inst.opcode == 'fusion':
        parts, primary = fusion_parts(inst, reads, writes)
      else:
        primary = classify(inst, frames, loops)
        if primary[1] is None:
          primary = (primary[0] or 'other', 'layout' if inst.opcode in MOVES else 'other',
                     primary[2])
        if inst.opcode in LAYOUT:
          primary = (primary[0] or 'other', 'layout', primary[2])
        parts = [(primary, b) for _, b in reads] + [(primary, b) for _, b in writes]
      producers[inst.name] = primary
      collected.append((inst, trips, parts, primary))

  if entry:
    walk(entry, 1)
  users = collections.defaultdict(list)
  for inst in defined.values():
    for operand in inst.operands:
      users[operand].append(inst.name)

  def user_layer(name, seen=()):
    for user in users.get(name, ()):
      if user in seen:
        continue
      layer = producers.get(user, (None,))[0]
      if layer in (None, 'other'):
        layer = user_layer(user, seen + (name,))
      if layer not in (None, 'other'):
        return layer
    return None

  for inst, trips, parts, primary in collected:
    if primary[0] in (None, 'other'):
      # An op the compiler added without metadata (a relayout, a prefetch): the
      # layer of what it copies, else of what reads it.
      layer = next((producer_layer(o) for o in inst.operands
                    if producer_layer(o) not in (None, 'other')), None) or user_layer(inst.name)
      if layer is not None:
        parts = [((layer if label[0] in (None, 'other') else label[0],) + tuple(label[1:]), b)
                 for label, b in parts]
        primary = (layer,) + tuple(primary[1:])
        producers[inst.name] = primary
    merged = collections.OrderedDict()
    for label, nbytes in parts:
      label = (label[0] or primary[0] or 'other', label[1], label[2])
      merged[label] = merged.get(label, 0) + nbytes
    stack = frames_of(inst, frames)
    fused = sorted({label[1] for label in merged}, key=KINDS.index)
    cycles = estimated_cycles(inst)
    for n, (label, nbytes) in enumerate(merged.items()):
      rows.append({'name': inst.name, 'opcode': inst.opcode, 'shape': inst.shape,
                   'layer': label[0], 'kind': label[1], 'direction': label[2],
                   'bytes': nbytes * trips, 'trips': trips,
                   'cycles': (cycles * trips if cycles is not None and n == 0 else 0),
                   'op_name': op_name(inst), 'functions': [f for _, f, _ in stack],
                   'fused_kinds': fused})
  return rows


def summarize(rows, *keys):
  """{key values: {'bytes', 'cycles', 'ops'}} of ``rows`` grouped by ``keys``."""
  out = collections.OrderedDict()
  for row in rows:
    key = tuple(row[k] for k in keys)
    key = key[0] if len(key) == 1 else key
    entry = out.setdefault(key, {'bytes': 0, 'cycles': 0, 'ops': set()})
    entry['bytes'] += row['bytes']
    entry['cycles'] += row['cycles']
    entry['ops'].add(row['name'])
  for entry in out.values():
    entry['ops'] = len(entry['ops'])
  return out


def top_ops(rows, n=20):
  """The ``n`` top-level ops that move the most bytes: [(name, bytes, row of its
  largest part, {kind: bytes})]."""
  per_op = collections.OrderedDict()
  for row in rows:
    per_op.setdefault(row['name'], []).append(row)
  ranked = sorted(per_op.items(), key=lambda kv: -sum(r['bytes'] for r in kv[1]))
  out = []
  for name, parts in ranked[:n]:
    kinds = collections.Counter()
    for r in parts:
      kinds[r['kind']] += r['bytes']
    out.append((name, sum(r['bytes'] for r in parts), max(parts, key=lambda r: r['bytes']),
                dict(kinds)))
  return out


def to_json(rows):
  return json.dumps(rows)
