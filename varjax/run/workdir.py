"""What a run's workdir may hold before it starts, and what a resumed run writes again.

Example:
  >>> prepare_workdir('/tmp/run', config)          # doctest: +SKIP
"""

import json
import os

import ml_collections
from etils import epath

from varjax.errors import CheckpointError
from varjax.errors import WorkdirError
from varjax.run import checkpoint
from varjax.run import files
from varjax.run import summary
from varjax.run import writers

CONFIG_FILE = 'config.json'


def prepare_workdir(workdir, config, write=True):
  """Checks what ``workdir`` holds against ``config``; writes config.json.

  A finished run is kept unless ``config.overwrite`` (which also drops its
  checkpoints); checkpoints of a stopped run must come from the same config.
  Every process checks (so all raise the same error); only ``write`` ones write.
  The workdir is local (metrics and TensorBoard events are appended to files);
  checkpoints may go to an object store through ``checkpoint.directory``.
  """
  if files.is_remote(workdir):
    raise WorkdirError(
        f'--workdir={workdir}: the workdir must be a local directory (its metrics are appended '
        'to files); put checkpoints on the object store with --config.checkpoint.directory.')
  summary_path = os.path.join(workdir, summary.SUMMARY_FILE)
  config_path = os.path.join(workdir, CONFIG_FILE)
  checkpoints = checkpoint.checkpoint_dir(workdir, config)
  if not config.overwrite:
    if os.path.exists(summary_path):
      raise WorkdirError(
          f'{workdir} holds a finished run ({summary.SUMMARY_FILE} exists). Choose another '
          '--workdir, or pass --config.overwrite=True to discard it and start again.')
    saved = _saved_config(checkpoints, config_path)
    diff = checkpoint.config_differences(saved, config) if saved is not None else []
    if diff:
      raise CheckpointError(
          f'{checkpoints} holds checkpoints of a run with a different config: '
          + '; '.join(diff) + '. Rerun with the original config to resume, choose another '
          '--workdir, or pass --config.overwrite=True to start again.')
  if not write:
    return
  os.makedirs(workdir, exist_ok=True)
  if config.overwrite:
    for name in (summary.SUMMARY_FILE, summary.PER_EXAMPLE_FILE, writers.METRICS_FILE):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
    if epath.Path(checkpoints).exists():
      epath.Path(checkpoints).rmtree()
  files.write_text(config_path, config.to_json_best_effort(indent=2, sort_keys=True))


def _saved_config(checkpoints, config_path):
  """The config of the run whose checkpoints are in ``checkpoints`` (kept beside them,
  or in the workdir by runs that predate that), or None without checkpoints."""
  if not checkpoint.finished_steps(checkpoints):
    return None
  for path in (epath.Path(checkpoints) / checkpoint.CONFIG_FILE, epath.Path(config_path)):
    if path.exists():
      return ml_collections.ConfigDict(json.loads(path.read_text()))
  return None


def rewritten_on_resume(record, done, total_steps):
  """Whether a run resumed after ``done`` steps writes metrics ``record`` again.

  It writes every record after step ``done``; resumed at the very end, it
  re-enters the last epoch and writes its epoch and final records again.
  """
  step = record.get('step', total_steps + 1)
  if step != done:
    return step > done
  return done == total_steps and ('epoch_seconds' in record or 'test_accuracy_mean' in record)
