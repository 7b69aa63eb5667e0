"""What a compiled program does, read from its optimised HLO text (``compiled.as_text()``).

- ``collectives``: cross-device ops (all-reduce, all-gather, all-to-all,
  reduce-scatter, collective-permute), each counted once, with the bytes they
  produce. An ensemble's training step should have none: its models share nothing.
- ``kernels``: convolutions by kind (forward, backward-input, backward-filter;
  cuDNN calls by their target on GPU, HLO convolutions by their dimension
  labels elsewhere), grouped convolutions, fusions, custom calls, Triton fusions.
- ``flops`` and ``bytes_accessed``: multiply-adds x 2 of every convolution and
  dot, and the operand + result bytes of every top-level op (fused ops read and
  write once), with while-loop bodies counted once per known trip; for
  backends whose executable has no ``cost_analysis`` (GPU).

Example:
  >>> stats = analyze(compiled.as_text())                               # doctest: +SKIP
  >>> stats['collectives']['total'], stats['kernels']['conv_backward_filter']  # doctest: +SKIP
"""

import collections
import math
import re

COLLECTIVES = ('all-reduce', 'all-gather', 'all-to-all', 'reduce-scatter', 'collective-permute',
               'collective-broadcast', 'ragged-all-to-all')
CUDNN_KINDS = {'__cudnn$convForward': 'forward', '__cudnn$convBiasActivationForward': 'forward',
               '__cudnn$convBackwardInput': 'backward_input',
               '__cudnn$convBackwardFilter': 'backward_filter'}
# Ops that move no data of their own (views, tuples, control flow, parameters).
NO_TRAFFIC = {'parameter', 'get-tuple-element', 'tuple', 'bitcast', 'constant', 'while',
              'conditional', 'call', 'after-all', 'partition-id', 'replica-id', 'opt-barrier',
              'add-dependency', 'async-done', 'all-reduce-done', 'all-gather-done',
              'collective-permute-done', 'copy-done', 'slice-done', 'send-done', 'recv-done'}
# Custom calls that only name memory: the TPU compiler's concatenation of
# adjacent buffers by bitcast and its buffer allocation.
NO_TRAFFIC_TARGETS = {'ConcatBitcast', 'AllocateBuffer'}
DTYPE_BYTES = {'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1,
               's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8,
               'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}

_HEADER = re.compile(r'^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$')
_ARRAY = re.compile(r'\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]')
_CALLEES = re.compile(r'\b(?:calls|to_apply|body|condition|branch_computations|'
                      r'called_computations)=(%[\w.\-]+|\{[^}]*\})')


def arrays(shape_text):
  """[(dtype, dims)] of the arrays in an HLO shape (one, or a tuple's elements)."""
  return [(t, tuple(int(d) for d in dims.split(',') if d))
          for t, dims in _ARRAY.findall(shape_text) if t in DTYPE_BYTES]


def nbytes(shape_text):
  """Logical bytes of the arrays of an HLO shape (as XLA's cost analysis counts them:
  no layout padding, whatever memory the compiler places them in)."""
  return sum(DTYPE_BYTES[t] * math.prod(dims) for t, dims in arrays(shape_text))


class Instruction:
  """One HLO op: name, result shape text, opcode, operand names, attribute text."""

  def __init__(self, name, shape, opcode, rest):
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):  # the operand list ends at its matching parenthesis
      depth += {'(': 1, ')': -1}.get(ch, 0)
      if depth == 0:
        end = i
        break
    self.name, self.shape, self.opcode = name, shape, opcode
    self.args = rest[:end]
    self.operands = re.findall(r'%([\w.\-]+)', self.args)
    self.attrs = rest[end + 1:]

  def attr(self, key):
    match = re.search(rf'\b{key}=("[^"]*"|\{{[^}}]*\}}|[^\s,]+)', self.attrs)
    return match.group(1).strip('"') if match else None


def parse(hlo_text):
  """{computation name: [Instruction]} and the entry computation's name."""
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(' '):
      current = computations.setdefault(header.group(2), [])
      entry = header.group(2) if header.group(1) else entry
      continue
    if line.startswith('}'):
      current = None
      continue
    match = _INSTRUCTION.match(line) if current is not None else None
    if match:
      current.append(Instruction(*match.groups()))
  return computations, entry


def conv_kind(inst):
  """'forward' | 'backward_input' | 'backward_filter' of a convolution or cuDNN call."""
  if inst.opcode == 'custom-call':
    return CUDNN_KINDS.get(inst.attr('custom_call_target'))
  lhs, rhs = (inst.attr('dim_labels') or 'bf_io->bf').split('->')[0].split('_')
  # JAX's transposes of a convolution: the kernel gradient contracts the batch
  # (lhs labelled f...b), the input gradient swaps the kernel's i/o.
  if lhs.index('f') < lhs.index('b'):
    return 'backward_filter'
  if rhs.index('o') < rhs.index('i') or 'rhs_reversal' in (inst.attr('window') or ''):
    return 'backward_input'
  op_name = re.search(r'op_name="([^"]*)"', inst.attrs)
  if op_name and 'transpose(' in op_name.group(1):
    # Labels canonicalised (XLA:CPU): a kernel gradient's window spans the map.
    out_labels = inst.attr('dim_labels').split('->')[1]
    out = arrays(inst.shape)[0][1]
    spatial = math.prod(d for d, label in zip(out, out_labels) if label.isdigit())
    return 'backward_filter' if _taps(inst) > spatial else 'backward_input'
  return 'forward'


def _taps(inst):
  size = re.search(r'size=([0-9x]+)', inst.attr('window') or '')
  return math.prod(int(s) for s in size.group(1).split('x')) if size else 1


def conv_flops(inst, shapes):
  """2 x forward-output elements x window taps x kernel input features."""
  kind = conv_kind(inst)
  operands = [arrays(shapes.get(o, '')) for o in inst.operands]
  result = arrays(inst.shape)
  if not result or len(operands) < 2 or not all(operands[:2]):
    return 0
  window = inst.attr('window') or ''
  taps = _taps(inst)
  # Taps that land on the zeros of a dilated input do no work (TPU writes a
  # vmapped convolution as one with the models on a dilated spatial axis).
  dilation = re.search(r'lhs_dilate=([0-9x]+)', window)
  taps /= math.prod(int(s) for s in dilation.group(1).split('x')) if dilation else 1
  _, rhs_labels = (inst.attr('dim_labels') or 'bf_io->bf').split('->')[0].split('_')
  if inst.opcode == 'custom-call':  # cuDNN: the labels describe the forward convolution
    output = {'forward': result[0], 'backward_input': operands[0][0],
              'backward_filter': operands[1][0]}[kind]
    kernel = result[0] if kind == 'backward_filter' else operands[1][0]
  else:
    output, kernel = result[0], operands[1][0]
  return int(2 * math.prod(output[1]) * taps * kernel[1][rhs_labels.index('i')])


def dot_flops(inst, shapes):
  lhs = arrays(shapes.get(inst.operands[0], '')) if inst.operands else []
  result = arrays(inst.shape)
  if not lhs or not result:
    return 0
  contracting = inst.attr('lhs_contracting_dims')
  if contracting is None:  # cuBLAS calls keep them in the backend config
    found = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', inst.attrs)
    contracting = found.group(1).replace('"', '') if found else ''
  dims = [int(d) for d in re.findall(r'[0-9]+', contracting)]
  return 2 * math.prod(result[0][1]) * math.prod(lhs[0][1][d] for d in dims)


SLICING = ('dynamic-slice', 'gather', 'slice')
# Asynchronous copies (the TPU compiler's prefetches and evictions between memory
# spaces) whose result tuple repeats their operand.
ASYNC_COPIES = ('copy-start', 'slice-start')


def _read_bytes(consumers, param, shapes):
  """Bytes of ``param`` that its consumers read: only the slices when every consumer
  slices it (a batch gathered out of the resident training set), else all of it."""
  uses = [c for c in consumers if param in c.operands]
  if uses and all(c.opcode in SLICING and c.operands[0] == param for c in uses):
    return sum(nbytes(c.shape) for c in uses)
  if uses and all(c.opcode == 'dynamic-update-slice' and c.operands[0] == param
                  for c in uses):  # updated in place: the untouched part is not read
    return 0
  return nbytes(shapes.get(param, ''))


def no_traffic(inst):
  """Whether a top-level op moves no data of its own."""
  return inst.opcode in NO_TRAFFIC or (inst.opcode == 'custom-call' and inst.attr(
      'custom_call_target') in NO_TRAFFIC_TARGETS)


def op_traffic(inst, shapes, computations):
  """Bytes one top-level op reads and writes (a fusion's inner values stay on chip)."""
  written = nbytes(inst.shape)
  if inst.opcode in ASYNC_COPIES:
    # The result tuple holds the operand itself (aliased), the copy and a context:
    # read the operand (a slice: its part) once, write the copy once.
    operands = sum(nbytes(shapes.get(o, '')) for o in inst.operands)
    return written if inst.opcode == 'copy-start' else 2 * (written - operands)
  if inst.opcode in SLICING:
    return 2 * written
  if inst.opcode == 'dynamic-update-slice':
    return 2 * nbytes(shapes.get(inst.operands[1], ''))
  if inst.opcode != 'fusion':
    return written + sum(nbytes(shapes.get(o, '')) for o in inst.operands)
  body = computations.get((inst.attr('calls') or '').lstrip('%'), [])
  params = {int(re.sub(r'[^0-9]', '', i.args) or 0): i.name
            for i in body if i.opcode == 'parameter'}
  read = 0
  for index, operand in enumerate(inst.operands):
    if index in params:
      fused = _read_bytes(body, params[index], shapes)
      read += min(fused, nbytes(shapes.get(operand, '')))
    else:
      read += nbytes(shapes.get(operand, ''))
  if body and body[-1].opcode == 'dynamic-update-slice':  # the ROOT, printed last
    written = nbytes(shapes.get(body[-1].operands[1], ''))  # in place: only the update
  return read + written


def trip_count(while_inst, computations):
  """Iterations of a while loop: XLA's known trip count (GPU), else the bound of a
  ``counter < constant`` condition (JAX's scan and fori loops count up from 0), else 1."""
  known = re.search(r'"known_trip_count":\{"n":"([0-9]+)"', while_inst.attrs)
  if known:
    return int(known.group(1))
  condition = computations.get((while_inst.attr('condition') or '').lstrip('%'), [])
  constants = {i.name: i.args for i in condition if i.opcode == 'constant'}
  for inst in condition:
    if inst.opcode == 'compare' and inst.attr('direction') == 'LT' and len(inst.operands) == 2:
      bound = constants.get(inst.operands[1], '')
      if re.fullmatch(r'-?[0-9]+', bound):
        return max(int(bound), 0)
  return 1


def analyze(hlo_text):
  """Counts and costs of one HLO module's text (see the module docstring)."""
  computations, entry = parse(hlo_text)
  shapes = {i.name: i.shape for insts in computations.values() for i in insts}
  kernels = collections.Counter(conv_forward=0, conv_backward_input=0,
                                conv_backward_filter=0, conv_grouped=0, fusions=0,
                                custom_calls=0, triton=0)
  collectives = collections.Counter({c: 0 for c in COLLECTIVES})
  collective_bytes = 0
  for insts in computations.values():  # static counts: every op of the program once
    for inst in insts:
      base = inst.opcode[:-len('-start')] if inst.opcode.endswith('-start') else inst.opcode
      if base in COLLECTIVES:
        collectives[base] += 1
        collective_bytes += nbytes(inst.shape)
      if inst.opcode == 'fusion':
        kernels['fusions'] += 1
        kernels['triton'] += '__triton' in inst.attrs
      if inst.opcode == 'custom-call':
        kernels['custom_calls'] += 1
      if inst.opcode == 'convolution' or (inst.opcode == 'custom-call'
                                          and inst.attr('custom_call_target') in CUDNN_KINDS):
        kernels['conv_' + conv_kind(inst)] += 1
        groups = [int(inst.attr(k) or 1) for k in ('feature_group_count', 'batch_group_count')]
        kernels['conv_grouped'] += max(groups) > 1

  def cost(name, top_level, seen=()):
    """(flops, bytes) of one execution of computation ``name``."""
    flops = traffic = 0
    for inst in computations.get(name, ()):
      if inst.opcode == 'convolution' or (inst.opcode == 'custom-call'
                                          and inst.attr('custom_call_target') in CUDNN_KINDS):
        flops += conv_flops(inst, shapes)
      elif inst.opcode == 'dot' or (inst.opcode == 'custom-call' and re.search(
          r'gemm|matmul', inst.attr('custom_call_target') or '')):  # cuBLAS / cuBLASLt
        flops += dot_flops(inst, shapes)
      if top_level and not no_traffic(inst):
        traffic += op_traffic(inst, shapes, computations)
      trips = trip_count(inst, computations) if inst.opcode == 'while' else 1
      for group in _CALLEES.findall(inst.attrs):
        for callee in re.findall(r'[\w.\-]+', group):
          if callee in seen or callee not in computations:
            continue
          # Loop bodies and branches are programs of their own; fusions and
          # reducers run inside the op that calls them.
          nested_top = inst.opcode in ('while', 'conditional', 'call', 'async-start')
          f, b = cost(callee, top_level and nested_top, seen + (name,))
          flops += trips * f
          traffic += trips * b
    return flops, traffic

  flops, traffic = cost(entry, True) if entry else (0, 0)
  return {'collectives': {**collectives, 'total': sum(collectives.values())},
          'collective_bytes': int(collective_bytes), 'kernels': dict(kernels),
          'flops': int(flops), 'bytes_accessed': int(traffic)}
