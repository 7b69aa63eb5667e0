"""Writing a run's files so that a kill or a full disk never leaves one half-written.

On a local filesystem each writer writes a temporary file beside the target and
renames it over the target (atomic on POSIX), removing the temporary file if the
write fails. A remote path (``gs://...``, through ``etils.epath``) is written as
one object, which its store replaces whole.

Example:
  >>> write_json(os.path.join(workdir, 'summary.json'), {'num_models': 16})   # doctest: +SKIP
"""

import contextlib
import json
import os

from etils import epath


def is_remote(path):
  """Whether ``path`` is a URL of an object store (gs://, s3://) rather than a local path."""
  return '://' in str(path)


@contextlib.contextmanager
def atomic_open(path, mode='w'):
  """A file object for ``path``: written under ``path + '.tmp'``, renamed on success."""
  path = str(path)
  if is_remote(path):
    with epath.Path(path).open(mode) as f:
      yield f
    return
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
