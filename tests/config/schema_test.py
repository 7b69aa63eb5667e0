"""Config validation: every key's bad values fail in one line naming the key.

The table feeds each bad value as a user would, through ``--config.KEY=VALUE``
flag parsing (varjax/config/command_line.py) and then ``schema.check``. About 1 s.
"""

import pytest
from absl import flags
from ml_collections import config_flags

from varjax.config import command_line
from varjax.config import schema
from conftest import REPO, load_experiment

SMOKE = f"{REPO / 'experiments' / 'airbench.py'}:smoke"

# Keys whose every value of the right type is acceptable to the config check:
# free text (data.dir's existence is checked when the data loads).
ANY_STRING = ('name', 'variant', 'data.dir', 'checkpoint.directory')

# (key, overrides as on the command line, a fragment the one-line error must hold).
# The smoke variant trains on 1,024 images (holdout 512) with 4 models.
BAD = [
    ('seed', ('-1',), 'int >= 0'),
    ('seed', ('x',), "cannot read 'x'"),
    ('num_models', ('0',), 'int >= 1'),
    ('num_models', ('2.5',), "cannot read '2.5'"),
    ('first_model_id', ('-1',), 'int >= 0'),
    ('first_model_id', ('2147483647',), 'below 2**31'),
    ('overwrite', ('maybe',), "cannot read 'maybe'"),
    ('data.source', ('hdf5',), "one of 'auto', 'cifar10_binary', 'tfds'"),
    ('data.test_split', ('validation',), "one of 'test', 'holdout'"),
    ('data.holdout_size', ('0',), 'in [1, 49999]'),
    ('data.holdout_size', ('50000',), 'in [1, 49999]'),
    ('data.train_size', ('0',), 'in [1, 50000]'),
    ('data.train_size', ('49900',), 'exceeds the 49488 training images left'),
    ('data.verify_checksums', ('sometimes',), "cannot read 'sometimes'"),
    ('data.extra_test_sets', ('("cifar10_1",)',), "'tfds:NAME[:SPLIT]' or 'binary:PATH'"),
    ('model.widths', ('(4,8)',), 'tuple of 3 items'),
    ('model.widths', ('(4,0,8)',), 'tuple of 3 items, each an int >= 1'),
    ('model.widths', ('wide',), 'tuple of 3 items'),
    ('model.whiten_kernel_size', ('0',), 'int in [1, 32]'),
    ('model.whiten_eps', ('0',), 'number > 0'),
    ('model.whiten_num_images', ('0',), 'int >= 1'),
    ('model.bn_eps', ('-1',), 'number > 0'),
    ('model.bn_momentum', ('1.5',), 'in [0, 1]'),
    ('model.head_scale', ('0',), 'number > 0'),
    ('model.gelu_approximate', ('x',), "cannot read 'x'"),
    ('train.epochs', ('0',), 'number > 0'),
    ('train.epochs', ('nan',), 'number > 0'),
    ('train.batch_size', ('1',), 'int >= 2'),
    ('train.batch_size', ('2000',), 'exceeds the 1024 training images'),
    ('train.label_smoothing', ('1',), 'in [0, 1)'),
    ('train.whiten_bias_epochs', ('-1',), 'number >= 0'),
    ('opt.lr', ('0',), 'number > 0'),
    ('opt.lr', ('fast',), "cannot read 'fast'"),
    ('opt.weight_decay', ('-0.1',), 'number >= 0'),
    ('opt.momentum', ('1',), 'in [0, 1)'),
    ('opt.bias_lr_scale', ('-1',), 'number >= 0'),
    ('opt.lr_reference_batch', ('0',), 'int >= 1'),
    ('opt.warmup_frac', ('1.5',), 'in [0, 1]'),
    ('opt.lr_start_factor', ('-1',), 'number >= 0'),
    ('opt.lr_end_factor', ('-1',), 'number >= 0'),
    ('lookahead.enabled', ('x',), "cannot read 'x'"),
    ('lookahead.every_steps', ('0',), 'int >= 1'),
    ('lookahead.decay', ('2',), 'in [0, 1]'),
    ('lookahead.power', ('-1',), 'number >= 0'),
    ('aug.translate', ('9',), 'int in [0, 8]'),
    ('aug.flip', ('sometimes',), "one of 'alternating', 'random', 'none'"),
    ('eval.tta_level', ('3',), 'one of 0, 1, 2'),
    ('eval.batch_size', ('0',), 'int >= 1'),
    ('analysis.ensemble_subsets', ('0',), 'int >= 1'),
    ('analysis.seeds_needed_deltas', ('(0.001,0.0)',), 'each a number in (0, 1)'),
    ('analysis.seeds_needed_deltas', ('()',), 'non-empty'),
    ('analysis.seeds_needed_power', ('1.0',), 'number in (0, 1)'),
    ('analysis.seeds_needed_alpha', ('0',), 'number in (0, 1)'),
    ('analysis.alpha_trim_resamples', ('0',), 'int >= 1'),
    ('analysis.seed', ('-1',), 'int >= 0'),
    ('analysis.margin_quantiles', ('(0.5,0.1)',), 'must increase'),
    ('analysis.margin_quantiles', ('(1.5,)',), 'number in [0, 1]'),
    ('analysis.margin_quantiles', ('()',), 'non-empty'),
    ('difficulty.prediction_depth', ('x',), "cannot read 'x'"),
    ('difficulty.depth_k', ('0',), 'int >= 1'),
    ('difficulty.depth_k', ('2000', '--config.difficulty.prediction_depth=True'),
     'exceeds the 1024 support images'),
    ('difficulty.depth_support_size', ('0',), 'int >= 1'),
    ('difficulty.depth_probes', ('("whiten","input")',), 'network order'),
    ('difficulty.depth_probes', ('("input","group4_conv1")',), 'probe places'),
    ('data.classes', ('(3,)',), 'at least two distinct'),
    ('data.classes', ('(3,3)',), 'at least two distinct'),
    ('data.classes', ('(3,10)',), 'int in [0, 9]'),
    ('train.batch_size', ('2000', '--config.data.classes=(3,5)'),
     'exceeds the 1024 training images'),
    ('difficulty.normalized_margin', ('x',), "cannot read 'x'"),
    ('difficulty.forgetting', ('x',), "cannot read 'x'"),
    ('difficulty.forgetting_probe_size', ('0',), 'int >= 1'),
    ('randomness.vary', ('("init","seeds")',), "one of 'init', 'order', 'augment'"),
    ('randomness.vary', ('("init","init")',), 'without repeats'),
    ('ensemble.models_per_chunk', ('0',), 'int >= 1'),
    ('ensemble.models_per_chunk', ('3',), 'must divide num_models=4'),
    ('ensemble.formulation', ('scan',), "one of 'auto', 'unrolled', 'vmap', 'grad_of_sum'"),
    ('ensemble.compute_dtype', ('float16',), "one of 'auto', 'float32', 'bfloat16'"),
    ('ensemble.chunk_loop', ('loop',), "one of 'auto', 'scan', 'host'"),
    ('ensemble.conv_weight_grad', ('fast',), "one of 'auto', 'xla', 'sliced'"),
    ('ensemble.conv_grad_slice', ('0',), 'int >= 1'),
    ('ensemble.cpu_conv_library', ('onednn',), "one of 'eigen', 'ynnpack'"),
    ('ensemble.augment_crop', ('pad',), "one of 'auto', 'gather', 'batch_crop'"),
    ('ensemble.max_pool', ('avg',), "one of 'auto', 'windows', 'reshape', 'reduce_window'"),
    ('log.every_steps', ('-1',), 'int >= 0'),
    ('checkpoint.every_minutes', ('-1',), '>= 0'),
    ('checkpoint.every_steps', ('-1',), 'int >= 0'),
    ('checkpoint.at_epoch_end', ('x',), "cannot read 'x'"),
    ('checkpoint.keep', ('0',), 'int >= 1'),
    ('checkpoint.async_save', ('x',), "cannot read 'x'"),
    ('sweep.lr_multipliers', ('(0.5,-1.0)',), 'each a number > 0'),
    ('sweep.lr_multipliers', ('(0.5,2.0)', '--config.sweep.seeds_per_point=3'),
     'num_models=4 must equal 2 grid points x sweep.seeds_per_point=3'),
    ('sweep.lr_multipliers', ('(0.5,2.0)',), 'seeds_per_point is unset'),
    ('sweep.weight_decay_multipliers', ('(-1.0,)',), 'each a number >= 0'),
    ('sweep.label_smoothings', ('(1.0,)',), 'each a number in [0, 1)'),
    ('sweep.label_noise', ('(0.5,-0.1)',), 'each a number in [0, 1]'),
    ('train.label_noise', ('1.5',), 'number in [0, 1]'),
    ('lenses.sharpness', ('x',), "cannot read 'x'"),
    ('lenses.sharpness_images', ('0',), 'int >= 1'),
    ('lenses.power_iterations', ('0',), 'int >= 1'),
    ('lenses.hutchinson_probes', ('1',), 'int >= 2'),
    ('lenses.alignment', ('x',), "cannot read 'x'"),
    ('lenses.alignment_images', ('0',), 'int >= 1'),
    ('lenses.alignment_components', ('0',), 'int >= 1'),
    ('lenses.batch_size', ('0',), 'int >= 1'),
    ('lenses.train_eval_size', ('-1',), 'int >= 0'),
    ('sweep.seeds_per_point', ('0',), 'int >= 1'),
]


def parse_and_check(*args, config=SMOKE):
  """What the command line does with ``args``: flag parsing, then schema.check."""
  argv = ['varjax', f'--config={config}', *args]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)
  command_line.parse_flags(argv, flag_values)
  schema.check(holder.value)
  return holder.value


@pytest.mark.parametrize('key,values,fragment', BAD,
                         ids=[f'{k}={v[0]}' for k, v, _ in BAD])
def test_bad_value_is_one_line_naming_the_key(key, values, fragment):
  value, *more = values
  with pytest.raises(schema.ConfigError) as e:
    parse_and_check(f'--config.{key}={value}', *more)
  message = str(e.value)
  assert '\n' not in message and key in message and fragment in message, message


def test_every_key_has_a_rule_and_a_bad_value():
  assert set(schema.RULES) == schema.KNOWN_KEYS
  assert {key for key, _, _ in BAD} | set(ANY_STRING) == schema.KNOWN_KEYS


@pytest.mark.parametrize('variant', ['', 'cpu', 'smoke'])
def test_shipped_configs_are_valid(variant):
  schema.check(load_experiment('airbench', variant))


def test_overrides_of_the_right_type_pass():
  c = parse_and_check('--config.opt.lr=2', '--config.model.widths=(4,8,8)',
                      '--config.data.train_size=512', '--config.sweep.seeds_per_point=2',
                      '--config.sweep.lr_multipliers=(0.5,2.0)')
  assert c.opt.lr == 2.0 and tuple(c.model.widths) == (4, 8, 8) and c.num_models == 4


@pytest.mark.parametrize('arg,closest', [
    ('--config.nonsense=1', "'seed'"),
    ('--config.opt.lrr=1', "'opt.lr'"),
    ('--config.opt.learning_rate=1', "'opt.lr'"),
    ('--config.batch_size=8', "'train.batch_size'"),
    ('--config.train.lr=1', "'opt.lr'"),
    ('--config.data.sorce=tfds', "'data.source'"),
])
def test_unknown_override_names_the_closest_key(arg, closest):
  key = arg[len('--config.'):].split('=')[0]
  with pytest.raises(schema.ConfigError) as e:
    parse_and_check(arg)
  message = str(e.value)
  assert '\n' not in message and f"Unknown config key '{key}'" in message
  assert f'Did you mean {closest}?' in message, message


def test_unknown_key_in_a_config_file_suggests_the_closest():
  c = load_experiment('airbench', 'smoke')
  c.opt.learning_rate = 1.0
  with pytest.raises(schema.ConfigError, match="opt.learning_rate.*'opt.lr"):
    schema.check(c)


def test_other_flag_mistakes_are_one_line():
  flag_values = flags.FlagValues()
  flags.DEFINE_integer('steps', 1, '', flag_values=flag_values)
  with pytest.raises(flags.Error) as e:
    command_line.parse_flags(['varjax', '--steps=many'], flag_values)
  assert '\n' not in str(e.value) and 'steps' in str(e.value)


def test_unknown_variant():
  with pytest.raises(ValueError, match='variant'):
    load_experiment('airbench', 'huge')

