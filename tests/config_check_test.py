"""Config validation names the bad key or value."""

import pytest

from varjax import config_check

from conftest import load_experiment, tiny_config


@pytest.mark.parametrize('variant', ['', 'cpu', 'smoke'])
def test_shipped_configs_are_valid(variant):
  config_check.check(load_experiment('airbench', variant))


def test_unknown_key_suggests_the_closest():
  c = load_experiment('airbench', 'smoke')
  c.opt.learning_rate = 1.0
  with pytest.raises(config_check.ConfigError, match="opt.learning_rate.*'opt.lr"):
    config_check.check(c)


@pytest.mark.parametrize('key,value,match', [
    ('num_models', 0, 'num_models'),
    ('eval.tta_level', 3, 'tta_level'),
    ('aug.flip', 'sometimes', 'aug.flip'),
    ('train.epochs', 0, 'train.epochs'),
    ('analysis.ensemble_subsets', 0, 'ensemble_subsets'),
    ('analysis.seeds_needed_deltas', (0.001, 0.0), 'seeds_needed_deltas'),
    ('analysis.seeds_needed_power', 1.0, 'seeds_needed_power'),
    ('difficulty.depth_probes', ('whiten', 'input'), 'depth_probes'),
    ('difficulty.depth_probes', ('input', 'group4_conv1'), 'depth_probes'),
])
def test_bad_values(key, value, match):
  c = load_experiment('airbench', 'smoke')
  section, _, leaf = key.rpartition('.')
  (c[section] if section else c)[leaf] = value
  with pytest.raises(config_check.ConfigError, match=match):
    config_check.check(c)


def test_unknown_variant():
  with pytest.raises(ValueError, match='variant'):
    load_experiment('airbench', 'huge')


def test_lens_settings_are_validated():
  for key, value, match in (('lenses.hutchinson_probes', 1, 'hutchinson_probes >= 2'),
                            ('lenses.batch_size', 0, 'lenses.batch_size must be >= 1'),
                            ('lenses.alignment_components', 0, 'alignment_components must be'),
                            ('sweep.label_noise', (0.5, -0.1), 'label_noise must lie in')):
    with pytest.raises(config_check.ConfigError, match=match):
      config_check.check(tiny_config(**{key: value}))
