"""Writing a run's files so that a kill or a full disk never leaves one half-written.

Each writer writes a temporary file beside the target and renames it over the
target (atomic on POSIX filesystems), removing the temporary file if the write
fails.

Example:
  >>> write_json(os.path.join(workdir, 'summary.json'), {'num_models': 16})   # doctest: +SKIP
"""

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_open(path, mode='w'):
  """A file object for ``path``: written under ``path + '.tmp'``, renamed on success."""
  tmp = path + '.tmp'
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path, obj, indent=1):
  """``obj`` as JSON at ``path``, atomically."""
  with atomic_open(path) as f:
    json.dump(obj, f, indent=indent)


def write_text(path, text):
  """``text`` at ``path``, atomically."""
  with atomic_open(path) as f:
    f.write(text)
