"""Validation of a run's config: every key known, every value in range, before any work.

The keys varjax reads are the keys of ``RULES`` (defaults live in the
experiment files), each with the rule its value must satisfy; the choices come
from the modules that own them. ``RELATIONS`` check several keys at once. A mistake fails with one line naming
the key: a typo such as ``opt.learning_rate`` with the closest known key, a bad
value with what the key accepts.

Command lines get the same one-line errors for ``--config.KEY=VALUE``
(config/command_line.py).

Example:
  >>> check(config)                           # doctest: +SKIP
  ConfigError: train.batch_size must be an int >= 2, got 1.
"""

import difflib
import math
from typing import Any, Callable, NamedTuple

from ml_collections import ConfigDict

from varjax import keys
from varjax.data import augment
from varjax.data import cifar10
from varjax.data import sources
from varjax.ensemble import grid
from varjax.ensemble import options
from varjax.errors import ConfigError
from varjax.models import airbench



INT32_MAX = 2**31 - 1

# Common names from other codebases for keys varjax spells differently.
SYNONYMS = {'learning_rate': 'lr', 'wd': 'weight_decay', 'batch': 'batch_size',
            'n_models': 'num_models', 'models': 'num_models', 'width': 'widths',
            'num_epochs': 'epochs', 'tta': 'tta_level'}


class Rule(NamedTuple):
  """What one key accepts: ``ok(value)``, and ``describe`` for the error message."""
  describe: str
  ok: Callable[[Any], bool]


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo, hi, lo_open, hi_open):
  if lo is not None and hi is not None:
    return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  if lo is not None:
    return f" {'>' if lo_open else '>='} {lo:g}"
  return f" {'<' if hi_open else '<='} {hi:g}" if hi is not None else ''


def _within(v, lo, hi, lo_open, hi_open):
  return ((lo is None or (v > lo if lo_open else v >= lo))
          and (hi is None or (v < hi if hi_open else v <= hi)))


def integer(lo=None, hi=None):
  return Rule('an int' + _bounds(lo, hi, False, False),
              lambda v: _is_int(v) and _within(v, lo, hi, False, False))


def number(lo=None, hi=None, lo_open=False, hi_open=False):
  return Rule('a number' + _bounds(lo, hi, lo_open, hi_open),
              lambda v: _is_number(v) and _within(v, lo, hi, lo_open, hi_open))


def boolean():
  return Rule('True or False', lambda v: isinstance(v, bool))


def text():
  return Rule('a string', lambda v: isinstance(v, str))


def one_of(*choices):
  same = lambda v, c: type(v) is type(c) and v == c  # 1 is not True
  return Rule('one of ' + ', '.join(map(repr, choices)),
              lambda v: any(same(v, c) for c in choices))


def optional(rule):
  return Rule(f'None or {rule.describe}', lambda v: v is None or rule.ok(v))


def sequence(rule, length=None, min_length=0, distinct=False):
  """A tuple (or list) whose items all satisfy ``rule``."""
  what = (f'a tuple of {length} items' if length else
          'a non-empty tuple' if min_length else 'a tuple')
  return Rule(
      f"{what}{' without repeats' if distinct else ''}, each {rule.describe}",
      lambda v: (isinstance(v, (tuple, list)) and (length is None or len(v) == length)
                 and len(v) >= min_length and all(rule.ok(x) for x in v)
                 and (not distinct or len(set(v)) == len(v))))


def _classes(v):
  return (isinstance(v, (tuple, list)) and (len(v) == 0 or len(v) >= 2)
          and all(_is_int(k) and 0 <= k <= 9 for k in v) and len(set(v)) == len(v))


def _probe_places(v):
  return (isinstance(v, (tuple, list)) and len(v) >= 1
          and list(v) == [p for p in airbench.PROBE_PLACES if p in v])


POSITIVE = number(0, lo_open=True)
FRACTION = number(0, 1)
BELOW_ONE = number(0, 1, hi_open=True)
OPEN_FRACTION = number(0, 1, lo_open=True, hi_open=True)

# One rule per key: the keys varjax reads are exactly these (KNOWN_KEYS).
RULES = {
    'name': text(),
    'variant': text(),
    'seed': integer(0),
    'num_models': integer(1),
    'first_model_id': integer(0),
    'overwrite': boolean(),
    'data.source': one_of(*sources.SOURCES),
    'data.dir': optional(text()),
    'data.test_split': one_of(*cifar10.SPLITS),
    'data.holdout_size': integer(1, cifar10.TRAIN_IMAGES - 1),
    'data.train_size': optional(integer(1, cifar10.TRAIN_IMAGES)),
    'data.verify_checksums': boolean(),
    'data.extra_test_sets': sequence(Rule("'tfds:NAME[:SPLIT]' or 'binary:PATH'",
                                          lambda v: sources.parse_extra_test_set(v) is not None)),
    'data.classes': Rule('() or a tuple of at least two distinct CIFAR-10 class ids, each an '
                         'int in [0, 9]', _classes),
    'model.widths': sequence(integer(1), length=3),
    'model.whiten_kernel_size': integer(1, 32),
    'model.whiten_eps': POSITIVE,
    'model.whiten_num_images': integer(1),
    'model.bn_eps': POSITIVE,
    'model.bn_momentum': FRACTION,
    'model.head_scale': POSITIVE,
    'model.gelu_approximate': boolean(),
    'train.epochs': POSITIVE,
    'train.batch_size': integer(2),  # BatchNorm needs two examples
    'train.label_smoothing': BELOW_ONE,
    'train.whiten_bias_epochs': number(0),
    'train.label_noise': FRACTION,
    'opt.lr': POSITIVE,
    'opt.weight_decay': number(0),
    'opt.momentum': BELOW_ONE,
    'opt.bias_lr_scale': number(0),
    'opt.lr_reference_batch': integer(1),
    'opt.warmup_frac': FRACTION,
    'opt.lr_start_factor': number(0),
    'opt.lr_end_factor': number(0),
    'lookahead.enabled': boolean(),
    'lookahead.every_steps': integer(1),
    'lookahead.decay': FRACTION,
    'lookahead.power': number(0),
    'aug.translate': integer(0, 8),
    'aug.flip': one_of(*augment.FLIP_MODES),
    'eval.tta_level': one_of(*augment.TTA_LEVELS),
    'eval.batch_size': integer(1),
    'analysis.alpha_trim_resamples': integer(1),
    'analysis.seed': integer(0),
    'analysis.margin_quantiles': sequence(FRACTION, min_length=1),
    'analysis.ensemble_subsets': integer(1),
    'analysis.seeds_needed_deltas': sequence(OPEN_FRACTION, min_length=1),
    'analysis.seeds_needed_power': OPEN_FRACTION,
    'analysis.seeds_needed_alpha': OPEN_FRACTION,
    'difficulty.prediction_depth': boolean(),
    'difficulty.depth_k': integer(1),
    'difficulty.depth_support_size': integer(1),
    'difficulty.depth_probes': Rule('a non-empty tuple of distinct probe places in network '
                                    'order (PROBE_PLACES in varjax/models/airbench.py)',
                                    _probe_places),
    'difficulty.normalized_margin': boolean(),
    'difficulty.forgetting': boolean(),
    'difficulty.forgetting_probe_size': integer(1),
    'lenses.sharpness': boolean(),
    'lenses.sharpness_images': integer(1),
    'lenses.power_iterations': integer(1),
    'lenses.hutchinson_probes': integer(2),  # its standard error needs two probes
    'lenses.alignment': boolean(),
    'lenses.alignment_images': integer(1),
    'lenses.alignment_components': optional(integer(1)),
    'lenses.batch_size': integer(1),
    'lenses.train_eval_size': integer(0),
    'randomness.vary': sequence(one_of(*keys.PURPOSES), distinct=True),
    'ensemble.models_per_chunk': optional(integer(1)),
    'ensemble.formulation': one_of(*options.FORMULATIONS),
    'ensemble.compute_dtype': one_of('auto', *options.COMPUTE_DTYPES),
    'ensemble.chunk_loop': one_of(*options.CHUNK_LOOPS),
    'ensemble.conv_weight_grad': one_of(*options.CONV_WEIGHT_GRADS),
    'ensemble.conv_grad_slice': integer(1),
    'ensemble.cpu_conv_library': one_of(*options.CPU_CONV_LIBRARIES),
    'ensemble.augment_crop': one_of(*options.AUGMENT_CROPS),
    'ensemble.max_pool': one_of(*options.MAX_POOLS),
    'log.every_steps': integer(0),
    'checkpoint.every_minutes': number(0),
    'checkpoint.every_steps': integer(0),
    'checkpoint.at_epoch_end': boolean(),
    'checkpoint.directory': optional(text()),
    'checkpoint.keep': integer(1),
    'checkpoint.async_save': boolean(),
    'sweep.lr_multipliers': sequence(POSITIVE),
    'sweep.weight_decay_multipliers': sequence(number(0)),
    'sweep.label_smoothings': sequence(BELOW_ONE),
    'sweep.label_noise': sequence(FRACTION),
    'sweep.seeds_per_point': optional(integer(1)),
}
KNOWN_KEYS = frozenset(RULES)


def _images(c, n):
  d = c.data
  # Of some classes, a holdout leaves an expected count (cifar10.split_sizes).
  estimate = (len(d.classes) and d.test_split == 'holdout'
              and n == cifar10.available_train_images(d))
  return f"{n} training images{' (expected)' if estimate else ''}"


def _data_size(c):
  d = c.data
  available = cifar10.available_train_images(d)
  if d.train_size is not None and d.train_size > available:
    return (f'data.train_size={d.train_size} exceeds the {_images(c, available)} left after '
            f'the holdout (data.holdout_size={d.holdout_size}).')
  return None


def _batch_size(c):
  n = cifar10.split_sizes(c.data)[0]
  if c.train.batch_size > n:
    return (f'train.batch_size={c.train.batch_size} exceeds the {_images(c, n)} '
            '(data.train_size, data.holdout_size); lower it.')
  return None


def _depth_k(c):
  d = c.difficulty
  support = min(d.depth_support_size, cifar10.split_sizes(c.data)[0])
  if d.prediction_depth and d.depth_k > support:
    return (f'difficulty.depth_k={d.depth_k} exceeds the {support} support images '
            '(difficulty.depth_support_size, capped by the training set); lower it.')
  return None


def _margin_quantiles(c):
  q = list(c.analysis.margin_quantiles)
  if q != sorted(set(q)):
    return f'analysis.margin_quantiles must increase, got {tuple(q)!r}.'
  return None


def _chunk(c):
  chunk = c.ensemble.models_per_chunk
  if chunk is not None and c.num_models % chunk:
    return (f'ensemble.models_per_chunk={chunk} must divide num_models={c.num_models} '
            '(and the models per device).')
  return None


def _model_ids(c):
  if c.first_model_id + c.num_models - 1 > INT32_MAX:
    return f'first_model_id + num_models must stay below 2**31, got {c.first_model_id}.'
  return None


def _sweep(c):
  try:
    grid.seeds_per_point(c)
  except ConfigError as e:
    return str(e)
  return None


# Checks of several keys at once, run after every key passed its rule; each
# returns an error message naming the keys, or None.
RELATIONS = (_data_size, _batch_size, _depth_k, _margin_quantiles, _chunk,
             _model_ids, _sweep)


def flatten(config, prefix=''):
  """{'a.b': value} for every leaf of a (nested) ConfigDict."""
  out = {}
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ConfigDict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def closest_key(key, known_keys=KNOWN_KEYS):
  """The known key a mistyped ``key`` most likely meant (always one, if any are known).

  Tried in turn: a synonym ('opt.learning_rate' -> 'opt.lr'), the same leaf in
  another section ('train.lr' -> 'opt.lr'), a close spelling of the whole key, a
  close leaf in any section, the nearest spelling.
  """
  ordered = [k for k in RULES if k in known_keys] + sorted(set(known_keys) - set(RULES))
  section, _, leaf = key.rpartition('.')
  leaf = SYNONYMS.get(leaf, leaf)
  synonym = f'{section}.{leaf}' if section else leaf
  if synonym in known_keys:
    return synonym
  same_leaf = [k for k in ordered if k.rpartition('.')[2] == leaf]
  if same_leaf:
    return same_leaf[0]
  close = difflib.get_close_matches(key, ordered, n=1)
  if close:
    return close[0]
  leaves = {}
  for k in ordered:
    leaves.setdefault(k.rpartition('.')[2], k)
  close = difflib.get_close_matches(leaf, list(leaves), n=1)
  if close:
    return leaves[close[0]]
  close = difflib.get_close_matches(key, ordered, n=1, cutoff=0)
  return close[0] if close else None


def unknown_key_message(key, known_keys=KNOWN_KEYS, flag=None):
  close = closest_key(key, known_keys)
  where = f' (from {flag})' if flag else ''
  return f"Unknown config key {key!r}{where}." + (f' Did you mean {close!r}?' if close else '')


def check(config, known_keys=KNOWN_KEYS, rules=None):
  """Raises ConfigError (one line, naming the key) for the first mistake in ``config``."""
  rules = RULES if rules is None else rules
  flat = flatten(config)
  for key in sorted(set(flat) - known_keys):
    raise ConfigError(unknown_key_message(key, known_keys))
  missing = sorted(known_keys - set(flat))
  if missing:
    raise ConfigError(f'Config is missing keys {missing}.')
  for key in sorted(known_keys, key=lambda k: (k not in KNOWN_KEYS, k)):
    rule = rules.get(key)
    if rule is not None and not rule.ok(flat[key]):
      raise ConfigError(f'{key} must be {rule.describe}, got {flat[key]!r}.')
  for relation in RELATIONS:
    message = relation(config)
    if message:
      raise ConfigError(message)
