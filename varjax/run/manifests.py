"""SHA-256 checksums of each finished checkpoint, written and checked process by process.

orbax writes a step into a temporary directory and finalises it only when every
process has written its part, so a half-written step is never loaded. The
checksums catch what happens to a finished step afterwards (a damaged disk, a
truncated copy). Each process hashes only the files it wrote and, on restore,
checks only its share of the manifests, so no process reads the whole
checkpoint twice.

A file belongs to process ``i`` when a component of its path is
``ocdbt.process_i`` or ``process_i`` (orbax's per-process data and metadata),
to process 0 otherwise (the step's shared metadata). Manifests are
``manifests/STEP.process_I.json``; a run resumed with P processes checks
manifest ``I`` on process ``I mod P`` (so a different process count still
checks every file once). All paths go through ``etils.epath``: a checkpoint
directory on ``gs://`` works like a local one.

Example:
  >>> write(manifest_dir, step_dir, 40, process=0)           # doctest: +SKIP
  >>> verify(manifest_dir, step_dir, 40, process=0, num_processes=1)   # doctest: +SKIP
  []
"""

import hashlib
import json
import re

from etils import epath

from varjax.run import files

_PROCESS = re.compile(r'^(?:ocdbt\.)?process_(\d+)$')
_MANIFEST = re.compile(r'^(\d+)\.process_(\d+)\.json$')


def owner(relative_path):
  """The process that wrote a file of a step, from its path relative to the step."""
  for part in epath.Path(relative_path).parts:
    match = _PROCESS.match(part)
    if match:
      return int(match.group(1))
  return 0


def _files(directory):
  """Every file under ``directory``, one listing per directory (an object store has no
  recursive glob)."""
  for path in epath.Path(directory).iterdir():
    if path.is_dir():
      yield from _files(path)
    else:
      yield path


def digests(step_dir, process=None):
  """{relative path: sha256} of the step's files (those of ``process`` when given)."""
  step_dir = epath.Path(step_dir)
  out = {}
  for path in sorted(_files(step_dir)):
    rel = str(path.relative_to(step_dir))
    if process is None or owner(rel) == process:
      out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def manifest_path(manifest_dir, step, process):
  return epath.Path(manifest_dir) / f'{step}.process_{process}.json'


def write(manifest_dir, step_dir, step, process):
  """Writes process ``process``'s manifest of ``step`` unless it exists; False if the step is gone."""
  path = manifest_path(manifest_dir, step, process)
  if path.exists():
    return True
  if not epath.Path(step_dir).exists():
    return False
  files.write_json(str(path), digests(step_dir, process), indent=None)
  return True


def manifests_of(manifest_dir, step):
  """{process: path} of the manifests of ``step``."""
  out = {}
  manifest_dir = epath.Path(manifest_dir)
  if manifest_dir.exists():
    for path in manifest_dir.iterdir():
      match = _MANIFEST.match(path.name)
      if match and int(match.group(1)) == step:
        out[int(match.group(2))] = path
  return out


def verify(manifest_dir, step_dir, step, process, num_processes):
  """Files of ``step`` that differ from this process's share of its manifests ([] if none).

  Returns None when the step has no manifest at all (a run killed right after
  orbax finalised it, before its checksums were written).
  """
  found = manifests_of(manifest_dir, step)
  if not found:
    return None
  bad = []
  for writer, path in sorted(found.items()):
    if writer % num_processes != process:
      continue
    want = json.loads(path.read_text())
    got = digests(step_dir, writer)
    bad += sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  return bad


def prune(manifest_dir, finished):
  """Removes the manifests of steps not in ``finished`` (orbax deleted them)."""
  manifest_dir = epath.Path(manifest_dir)
  if not manifest_dir.exists():
    return
  for path in manifest_dir.iterdir():
    match = _MANIFEST.match(path.name)
    if match and int(match.group(1)) not in finished:
      path.unlink(missing_ok=True)


def size_bytes(step_dir):
  """Bytes of every file of a step (what one save writes)."""
  return sum(p.stat().length for p in _files(step_dir))
