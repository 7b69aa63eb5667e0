r"""Writes a finished run's or sweep's report (report/tables.py) and prints the files' paths.

  python -m varjax.report --workdir=DIR
"""

from absl import app
from absl import flags

from varjax import errors
from varjax.report import tables

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished run or merged sweep.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  with errors.exit_on_error('varjax.report'):
    for path in tables.write_report(_WORKDIR.value):
      print(path)


if __name__ == '__main__':
  app.run(main)
