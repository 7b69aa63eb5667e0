"""Validation of a run's config: every key known, every value in range, before any work.

The keys varjax reads are listed here (names only; defaults live in the config
files). A typo such as ``opt.learning_rate`` fails with the closest known key.
"""

import difflib

from ml_collections import ConfigDict

KNOWN_KEYS = frozenset("""
name variant seed num_models first_model_id overwrite
data.source data.dir data.test_split data.holdout_size data.train_size data.verify_checksums
data.extra_test_sets
model.widths model.whiten_kernel_size model.whiten_eps model.whiten_num_images model.bn_eps
model.bn_momentum model.head_scale model.gelu_approximate
train.epochs train.batch_size train.label_smoothing train.whiten_bias_epochs train.label_noise
opt.lr opt.weight_decay opt.momentum opt.bias_lr_scale opt.lr_reference_batch opt.warmup_frac
opt.lr_start_factor opt.lr_end_factor
lookahead.enabled lookahead.every_steps lookahead.decay lookahead.power
aug.translate aug.flip
eval.tta_level eval.batch_size
analysis.alpha_trim_resamples analysis.seed analysis.margin_quantiles
analysis.ensemble_subsets analysis.seeds_needed_deltas analysis.seeds_needed_power
analysis.seeds_needed_alpha
difficulty.prediction_depth difficulty.depth_k difficulty.depth_support_size
difficulty.depth_probes
difficulty.normalized_margin difficulty.forgetting difficulty.forgetting_probe_size
lenses.sharpness lenses.sharpness_images lenses.power_iterations lenses.hutchinson_probes
lenses.alignment lenses.alignment_images lenses.alignment_components lenses.batch_size
lenses.train_eval_size
randomness.vary
ensemble.models_per_chunk ensemble.formulation ensemble.compute_dtype ensemble.chunk_loop
ensemble.conv_weight_grad ensemble.conv_grad_slice
log.every_steps
checkpoint.every_steps checkpoint.keep checkpoint.async_save
sweep.lr_multipliers sweep.weight_decay_multipliers sweep.label_smoothings sweep.label_noise
sweep.seeds_per_point
""".split())


# Common names from other codebases for keys varjax spells differently.
SYNONYMS = {'learning_rate': 'lr', 'wd': 'weight_decay', 'batch': 'batch_size',
            'n_models': 'num_models', 'models': 'num_models', 'width': 'widths',
            'num_epochs': 'epochs', 'tta': 'tta_level'}


class ConfigError(ValueError):
  """A config key or value that varjax cannot run with; the message names it."""


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


def closest_key(key, known_keys):
  section, _, leaf = key.rpartition('.')
  synonym = f'{section}.{SYNONYMS[leaf]}' if section and leaf in SYNONYMS else SYNONYMS.get(leaf)
  if synonym in known_keys:
    return synonym
  close = difflib.get_close_matches(key, known_keys, n=1)
  return close[0] if close else None


def _require(ok, message):
  if not ok:
    raise ConfigError(message)


def check(config, known_keys=KNOWN_KEYS):
  """Raises ConfigError for unknown/missing keys or out-of-range values."""
  flat = flatten(config)
  for key in sorted(set(flat) - known_keys):
    close = closest_key(key, known_keys)
    hint = f' Did you mean {close!r}?' if close else ''
    raise ConfigError(f'Unknown config key {key!r}.{hint}')
  missing = sorted(known_keys - set(flat))
  _require(not missing, f'Config is missing keys {missing}.')

  c = config
  _require(isinstance(c.num_models, int) and c.num_models >= 1,
           f'num_models must be a positive int, got {c.num_models!r}.')
  _require(isinstance(c.first_model_id, int) and c.first_model_id >= 0,
           f'first_model_id must be an int >= 0, got {c.first_model_id!r}.')
  _require(len(c.model.widths) == 3 and all(int(w) >= 1 for w in c.model.widths),
           f'model.widths must be three positive ints, got {c.model.widths!r}.')
  _require(c.train.epochs > 0, f'train.epochs must be > 0, got {c.train.epochs}.')
  _require(c.train.batch_size >= 2, f'train.batch_size must be >= 2, got {c.train.batch_size}.')
  _require(c.eval.tta_level in (0, 1, 2), f'eval.tta_level must be 0, 1 or 2, got '
           f'{c.eval.tta_level!r}.')
  _require(c.eval.batch_size >= 1, f'eval.batch_size must be >= 1, got {c.eval.batch_size}.')
  _require(c.aug.flip in ('alternating', 'random', 'none'),
           f"aug.flip must be 'alternating', 'random' or 'none', got {c.aug.flip!r}.")
  _require(0 <= c.aug.translate <= 8, f'aug.translate must be in [0, 8], got {c.aug.translate}.')
  _require(0 <= c.opt.momentum < 1, f'opt.momentum must be in [0, 1), got {c.opt.momentum}.')
  _require(c.opt.lr > 0, f'opt.lr must be > 0, got {c.opt.lr}.')
  _require(c.opt.weight_decay >= 0, f'opt.weight_decay must be >= 0, got '
           f'{c.opt.weight_decay}.')
  _require(0 <= c.train.label_smoothing < 1,
           f'train.label_smoothing must be in [0, 1), got {c.train.label_smoothing}.')
  noise = (c.train.label_noise,) + tuple(c.sweep.label_noise)
  _require(all(0 <= v <= 1 for v in noise),
           f'train.label_noise and sweep.label_noise must lie in [0, 1], got {noise!r}.')
  _require(c.model.whiten_num_images >= 1, 'model.whiten_num_images must be >= 1.')
  _require(not c.lookahead.enabled or c.lookahead.every_steps >= 1,
           'lookahead.every_steps must be >= 1.')
  a = c.analysis
  _require(a.alpha_trim_resamples >= 1 and a.ensemble_subsets >= 1,
           'analysis.alpha_trim_resamples and analysis.ensemble_subsets must be >= 1.')
  deltas = tuple(a.seeds_needed_deltas)
  _require(len(deltas) >= 1 and all(0 < v < 1 for v in deltas),
           f'analysis.seeds_needed_deltas must be accuracy differences in (0, 1), got {deltas!r}.')
  _require(0 < a.seeds_needed_power < 1 and 0 < a.seeds_needed_alpha < 1,
           f'analysis.seeds_needed_power and analysis.seeds_needed_alpha must lie in (0, 1), '
           f'got {a.seeds_needed_power} and {a.seeds_needed_alpha}.')
  q = tuple(c.analysis.margin_quantiles)
  _require(len(q) >= 1 and all(0 <= v <= 1 for v in q) and list(q) == sorted(set(q)),
           f'analysis.margin_quantiles must increase within [0, 1], got {q!r}.')
  d = c.difficulty
  _require(not d.prediction_depth or 1 <= d.depth_k <= d.depth_support_size,
           f'difficulty.depth_k must be in [1, difficulty.depth_support_size], got '
           f'{d.depth_k} and {d.depth_support_size}.')
  from varjax.models import airbench  # pylint: disable=g-import-not-at-top
  places = tuple(d.depth_probes)
  _require(len(places) >= 1 and list(places) == [p for p in airbench.PROBE_PLACES
                                                  if p in places],
           f'difficulty.depth_probes must be distinct places of {airbench.PROBE_PLACES} in '
           f'that order, got {places!r}.')
  _require(not d.forgetting or d.forgetting_probe_size >= 1,
           f'difficulty.forgetting_probe_size must be >= 1, got {d.forgetting_probe_size}.')
  lens = c.lenses
  _require(lens.sharpness_images >= 1 and lens.power_iterations >= 1
           and lens.hutchinson_probes >= 2,
           'lenses.sharpness_images and lenses.power_iterations must be >= 1 and '
           'lenses.hutchinson_probes >= 2 (its standard error needs two probes), got '
           f'{lens.sharpness_images}, {lens.power_iterations}, {lens.hutchinson_probes}.')
  _require(lens.alignment_images >= 1 and lens.batch_size >= 1 and lens.train_eval_size >= 0,
           'lenses.alignment_images and lenses.batch_size must be >= 1 and '
           f'lenses.train_eval_size >= 0, got {lens.alignment_images}, {lens.batch_size}, '
           f'{lens.train_eval_size}.')
  _require(lens.alignment_components is None or lens.alignment_components >= 1,
           f'lenses.alignment_components must be None or >= 1, got '
           f'{lens.alignment_components!r}.')
  _require(c.checkpoint.every_steps >= 0 and c.checkpoint.keep >= 1,
           'checkpoint.every_steps must be >= 0 and checkpoint.keep >= 1.')
  _require(c.log.every_steps >= 0, 'log.every_steps must be >= 0.')
  from varjax import sweep  # pylint: disable=g-import-not-at-top  (sweep imports ConfigError)
  sweep.seeds_per_point(c)
