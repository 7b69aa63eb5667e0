"""Command-line mistakes as one line: ``--config.KEY=VALUE`` overrides and other flags.

ml_collections applies ``--config.KEY=VALUE`` overrides while absl parses
``--config``: an unknown KEY surfaces there as a KeyError traceback, a VALUE its
key's type cannot take as a two-line flags error. ``parse_flags`` turns both
into ConfigError naming the key (with the closest known key, or what the key
accepts), like the errors of ``schema.check``.

Example (every entry point that takes ``--config``):
  app.run(main, flags_parser=command_line.flags_parser)

  $ python -m varjax.main --config=experiments/airbench.py:cpu --workdir=/tmp/w \\
      --config.opt.lrr=1
  varjax: ConfigError: Unknown config key 'opt.lrr' (from --config.opt.lrr=1). Did you mean 'opt.lr'?
"""

import re

from absl import flags

from varjax import errors
from varjax.config import schema
from varjax.errors import ConfigError
from varjax.errors import one_line

_OVERRIDE = re.compile(r'^--?(\w+)\.([\w.]+)(?:=(.*))?$')
_BAD_VALUE = re.compile(r'^flag --(\w+)\.([\w.]+)=(.*?): (.*)$', re.S)


def _overrides(argv, config_flag):
  """(key, arg) of every ``--CONFIG_FLAG.KEY[=VALUE]`` in ``argv``."""
  out = []
  for arg in argv[1:]:
    m = _OVERRIDE.match(arg)
    if m and m.group(1) == config_flag:
      out.append((m.group(2), arg))
  return out


def parse_flags(argv, flag_values=None, config_flag='config',
                known_keys=schema.KNOWN_KEYS):
  """Parses ``argv`` into ``flag_values`` (default absl's FLAGS); returns the rest.

  Raises ConfigError, one line naming the key, for an unknown
  ``--config.KEY`` (with the closest known key) or a VALUE its key's type cannot
  take; flags.Error, one line, for any other flag mistake.
  """
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    return flag_values(argv)
  except (KeyError, AttributeError) as e:  # ml_collections: an override of no field
    sections = {k.rsplit('.', 1)[0] for k in known_keys if '.' in k}
    for key, arg in _overrides(argv, config_flag):
      if key not in known_keys and key not in sections:
        raise ConfigError(
            schema.unknown_key_message(key, known_keys, flag=arg)) from None
    raise ConfigError(f'--{config_flag}: {one_line(e)}') from None
  except flags.Error as e:
    m = _BAD_VALUE.match(str(e))
    if m and m.group(1) == config_flag:
      key, value, why = m.group(2), m.group(3), one_line(m.group(4))
      rule = schema.RULES.get(key)
      wants = f' ({key} must be {rule.describe})' if rule else ''
      raise ConfigError(
          f'--{config_flag}.{key}={value}: cannot read {value!r}: {why}{wants}') from None
    raise flags.Error(one_line(e)) from None


def flags_parser(argv):
  """For ``app.run(main, flags_parser=...)``: parse_flags; a mistake is one line, exit 2."""
  try:
    return parse_flags(argv)
  except (ConfigError, flags.Error) as e:
    errors.exit_with_error(e)
