#!/usr/bin/env bash
# varjax on a Cloud TPU pod slice: every worker runs the same command; JAX's
# multi-controller runtime (jax.distributed, auto-detected on TPU VMs) joins them.
#
#   launch/tpu_pod.sh create    make the slice (runtime image chosen from ACCELERATOR_TYPE)
#   launch/tpu_pod.sh install   on every worker: clone varjax, a Python 3.12 venv, '.[tpu]'
#   launch/tpu_pod.sh check     on every worker: jax.distributed joins; device counts
#   launch/tpu_pod.sh prepare   on every worker: CIFAR-10 onto the worker's own disk, once
#   launch/tpu_pod.sh run       on every worker: start varjax detached, log in ~/varjax_RUN_NAME.log
#   launch/tpu_pod.sh logs      follow worker WORKER's log
#   launch/tpu_pod.sh status    on every worker: running or not, and the log's last lines
#   launch/tpu_pod.sh stop      on every worker: end the run (TERM, then KILL after 30 s)
#   launch/tpu_pod.sh delete    delete the slice
#
# Settings (environment):
#   TPU_NAME (varjax-pod)  ZONE (us-central2-b)  PROJECT (gcloud's default)
#   ACCELERATOR_TYPE (v4-32): v4-N, v5litepod-N (v5e), v5p-N, v6e-N
#   RUNTIME_VERSION: the TPU VM image; default by ACCELERATOR_TYPE (Cloud TPU's table):
#       v2/v3/v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
#       v6e v2-alpha-tpuv6e
#   CREATE_ARGS ('')  more 'tpu-vm create' options, split on spaces (--spot ...)
#   REPO_URL   git URL of varjax to install on every worker
#   REPO_REF   branch, tag or commit to check out (default: the remote's default branch);
#              every worker checks out the same commit
#   PYTHON_VERSION (3.12)  the workers' venv Python, provided by uv (jax 0.10 needs 3.11 or
#              newer; on Ubuntu 22.04's python3, 3.10, pip would quietly pick jax 0.6)
#   JAX_VERSION (0.10.2)  jax (and, through jax[tpu], its libtpu) on the workers: the
#              version varjax was last tested with; empty: the newest
#   BUCKET     GCS bucket (no gs://) that holds the runs
#   WORKDIR (varjax_runs/$RUN_NAME)  the run's outputs on each worker's disk (relative: to
#              the home directory); worker 0 writes them, 'fetch' copies them here
#   CHECKPOINT_DIR (gs://$BUCKET/varjax/$RUN_NAME/checkpoints)  where every worker writes its
#              shards of each checkpoint: one place all workers see; orbax writes gs:// itself
#   RUN_NAME (airbench94)  CONFIG (experiments/airbench.py)
#   EXTRA_FLAGS ('')  more varjax flags, split on spaces (--config.num_models=1024 ...)
#   DATA_GCS   gs:// directory holding the CIFAR-10 binary files (data_batch_1.bin ...
#              data_batch_5.bin, test_batch.bin): 'prepare' copies them to each worker and
#              the run reads them through VARJAX_DATA_DIR. Unset: 'prepare' builds cifar10
#              with tensorflow-datasets (downloads from the internet) and the run reads
#              it through TFDS_DATA_DIR
#   LOCAL_DATA_DIR (varjax_data)  the data's directory on each worker (relative: to the
#              home directory)
#   VENV (varjax-venv)  the venv on each worker (relative: to the home directory)
#   WORKER (0)  the worker whose log 'logs' follows
#   FETCH_TO (.)  where 'fetch' puts worker 0's workdir
#   DRY_RUN=1  print the gcloud commands instead of running them
set -euo pipefail

TPU_NAME=${TPU_NAME:-varjax-pod}
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
CREATE_ARGS=${CREATE_ARGS:-}
REPO_URL=${REPO_URL:-https://github.com/varjax/varjax.git}
REPO_REF=${REPO_REF:-}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
JAX_VERSION=${JAX_VERSION-0.10.2}
BUCKET=${BUCKET:-}
RUN_NAME=${RUN_NAME:-airbench94}
WORKDIR=${WORKDIR:-varjax_runs/$RUN_NAME}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-${BUCKET:+gs://$BUCKET/varjax/$RUN_NAME/checkpoints}}
CONFIG=${CONFIG:-experiments/airbench.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
DATA_GCS=${DATA_GCS:-}
LOCAL_DATA_DIR=${LOCAL_DATA_DIR:-varjax_data}
VENV=${VENV:-varjax-venv}
WORKER=${WORKER:-0}

usage() {
  echo "usage: $0 create|install|check|prepare|run|fetch|logs|status|stop|delete" \
       "(settings: see the top of this file)" >&2
  exit 2
}

fail() {
  echo "$0: $*" >&2
  exit 2
}

# A command line as one string that bash reads back into the same words.
quoted() {
  local line
  line=$(printf '%q ' "$@")
  echo "${line% }"
}

# The runtime image that Cloud TPU's "TPU software versions" page gives for JAX on each
# generation.
runtime_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# RUN_NAME names files on the workers and objects in the bucket.
[[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || fail "RUN_NAME='$RUN_NAME': letters, digits, . _ - only"

project_flags=()
if [[ -n "$PROJECT" ]]; then
  project_flags=(--project "$PROJECT")
fi

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    quoted "$@"
  else
    "$@"
  fi
}

# Runs the bash script $2 on worker(s) $1 (a number or 'all'). Dry runs print the command
# with the script as a here-document, which is what the command sends and reads better
# than one quoted line.
on_workers() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}"
             --worker="$1")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "$(quoted "${cmd[@]}") --command \"\$(cat <<'REMOTE'"
    echo "$2"
    echo "REMOTE"
    echo ")\""
  else
    "${cmd[@]}" --command "$2"
  fi
}

# The start of every worker script: strict mode, the home directory, and the settings the
# script uses, as assignments (quoted here, so no value is re-read as code on the worker).
preamble() {
  cat <<'REMOTE'
set -euo pipefail
cd "$HOME"
REMOTE
  printf 'run_name=%q\n' "$RUN_NAME"
  printf 'venv=%q\n' "$VENV"
  printf 'data_root=%q\n' "$LOCAL_DATA_DIR"
  printf 'data_gcs=%q\n' "${DATA_GCS%/}"
  cat <<'REMOTE'
case "$venv" in /*) ;; *) venv=$HOME/$venv ;; esac
case "$data_root" in /*) ;; *) data_root=$HOME/$data_root ;; esac
log=$HOME/varjax_$run_name.log
pidfile=$HOME/varjax_$run_name.pid
# The run's process group (its leader wrote the pid file), if varjax is still in it (a
# finished run's number may have been reused).
running_group() {
  local group
  [ -s "$pidfile" ] && group=$(cat "$pidfile") && pgrep -g "$group" -f 'varjax[.]main' >/dev/null &&
    echo "$group"
}
# Binary files through VARJAX_DATA_DIR when they come from the bucket, else tfds's
# ArrayRecord through TFDS_DATA_DIR; both on this worker's disk.
if [ -n "$data_gcs" ]; then
  data_dir=$data_root/cifar-10-batches-bin
else
  data_dir=$data_root/tensorflow_datasets
fi
REMOTE
}

install_script() {
  preamble
  printf 'repo_url=%q\n' "$REPO_URL"
  printf 'repo_ref=%q\n' "$REPO_REF"
  printf 'python_version=%q\n' "$PYTHON_VERSION"
  printf 'jax_version=%q\n' "$JAX_VERSION"
  cat <<'REMOTE'
if [ ! -d varjax/.git ]; then
  git clone --quiet "$repo_url" varjax
fi
git -C varjax fetch --quiet origin
# A branch name means the remote's branch, not a stale local copy of it.
ref=${repo_ref:-HEAD}
commit=$(git -C varjax rev-parse --verify --quiet "origin/$ref^{commit}" ||
         git -C varjax rev-parse --verify "$ref^{commit}")
git -C varjax checkout --quiet --detach "$commit"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m pip install --user --quiet uv
  python3 -m uv venv --quiet --seed --python "$python_version" "$venv"
fi
python3 -m uv pip install --quiet --python "$venv/bin/python" -e "./varjax[tpu]" \
  ${jax_version:+"jax==$jax_version"}
echo "$(hostname): varjax $(git -C varjax rev-parse --short HEAD)," \
     "$("$venv/bin/python" -c 'import jax; print("jax", jax.__version__)')"
REMOTE
}

check_script() {
  preamble
  cat <<'REMOTE'
if group=$(running_group); then
  echo "$(hostname): $run_name is running (process group $group) and holds the TPU" >&2
  exit 1
fi
timeout 600 "$venv/bin/python" -c '
import jax
jax.distributed.initialize()
print(f"process {jax.process_index()} of {jax.process_count()}: "
      f"{jax.local_device_count()} local of {jax.device_count()} {jax.devices()[0].device_kind}")'
REMOTE
}

prepare_script() {
  preamble
  cat <<'REMOTE'
mkdir -p "$data_root"
# One preparer per directory: a second 'prepare' on this worker waits here, then finds the
# data ready (gcloud's ssh runs one process per worker, but a user may start two).
exec 9>"$data_root/.prepare.lock"
flock 9
if [ -e "$data_dir/.varjax_prepared" ]; then
  echo "$(hostname): CIFAR-10 already prepared in $data_dir"
  exit 0
fi
if [ -n "$data_gcs" ]; then
  # Into a fresh directory, renamed only when complete: a cut-off copy is never used.
  rm -rf "$data_dir.partial"
  mkdir -p "$data_dir.partial"
  sources=()
  for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin \
           data_batch_5.bin test_batch.bin; do
    sources+=("$data_gcs/$f")
  done
  gcloud storage cp "${sources[@]}" "$data_dir.partial/"
  touch "$data_dir.partial/.varjax_prepared"
  rm -rf "$data_dir"
  mv "$data_dir.partial" "$data_dir"
else
  # What varjax itself runs when it finds no data (the 'tfds build' command line tool of
  # tensorflow-datasets 4.9.10 does not start without apache-beam). try_download_gcs=False:
  # tfds's prepared copy on GCS is TFRecord, and varjax reads ArrayRecord.
  "$venv/bin/python" -c '
import sys
import tensorflow_datasets as tfds
builder = tfds.builder("cifar10", data_dir=sys.argv[1], file_format="array_record")
builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False))' "$data_dir"
  touch "$data_dir/.varjax_prepared"
fi
echo "$(hostname): CIFAR-10 prepared in $data_dir"
REMOTE
}

run_script() {
  local extra_flags
  read -ra extra_flags <<<"$EXTRA_FLAGS"
  preamble
  printf 'workdir=%q\n' "$WORKDIR"
  echo "varjax_args=($(quoted --config="$CONFIG" --distributed \
                       --config.checkpoint.directory="$CHECKPOINT_DIR" "${extra_flags[@]}"))"
  cat <<'REMOTE'
case "$workdir" in /*) ;; *) workdir=$HOME/$workdir ;; esac
varjax_args+=(--workdir="$workdir")
REMOTE
  cat <<'REMOTE'
if group=$(running_group); then
  echo "$(hostname): $run_name is still running (process group $group): stop it first" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "$(hostname): no $venv/bin/python: run 'launch/tpu_pod.sh install' first" >&2
  exit 1
fi
if [ ! -e "$data_dir/.varjax_prepared" ]; then
  echo "$(hostname): no prepared CIFAR-10 in $data_dir: run 'launch/tpu_pod.sh prepare'" \
       "with the same DATA_GCS first" >&2
  exit 1
fi
if [ -n "$data_gcs" ]; then
  export VARJAX_DATA_DIR=$data_dir
else
  unset VARJAX_DATA_DIR
  export TFDS_DATA_DIR=$data_dir
fi
cd "$HOME/varjax"
echo "=== $(date -u +%FT%TZ) $(hostname): starting varjax.main ${varjax_args[*]}" >>"$log"
# Detached (its own session, no terminal, no descriptor of this ssh session), so a
# dropped connection does not end the run. The session leader records its pid, which is
# also the process group that 'stop' signals; it outlives a TERM (a handler, not an
# ignored signal, so varjax.main still ends on TERM) to log how the run ended.
setsid nohup bash -c '
echo $$ >"$0"
trap : TERM
"$@"
status=$?
echo "=== $(date -u +%FT%TZ) varjax.main exited with status $status"
exit "$status"' "$pidfile" "$venv/bin/python" -m varjax.main "${varjax_args[@]}" \
  >>"$log" 2>&1 </dev/null &
echo "$(hostname): started $run_name; log $log"
REMOTE
}

stop_script() {
  preamble
  cat <<'REMOTE'
if ! group=$(running_group); then
  echo "$(hostname): $run_name is not running"
  exit 0
fi
# The whole group: varjax.main and anything it started. KILL if TERM has not ended it.
kill -TERM -- "-$group" 2>/dev/null || true
for _ in $(seq 30); do
  kill -0 -- "-$group" 2>/dev/null || break
  sleep 1
done
kill -KILL -- "-$group" 2>/dev/null || true
echo "$(hostname): stopped $run_name (process group $group)"
REMOTE
}

status_script() {
  preamble
  cat <<'REMOTE'
if group=$(running_group); then
  echo "$(hostname): $run_name running (process group $group)"
else
  echo "$(hostname): $run_name not running"
fi
if [ -f "$log" ]; then
  tail -n 3 "$log"
fi
REMOTE
}

logs_script() {
  preamble
  cat <<'REMOTE'
tail -n 100 -F "$log"
REMOTE
}

case "${1:-}" in
  create)
    version=$RUNTIME_VERSION
    if [[ -z "$version" ]]; then
      version=$(runtime_version "$ACCELERATOR_TYPE") ||
        fail "no default runtime image for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION"
    fi
    read -ra create_args <<<"$CREATE_ARGS"
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}" \
      --accelerator-type "$ACCELERATOR_TYPE" --version "$version" "${create_args[@]}"
    ;;
  install) on_workers all "$(install_script)" ;;
  check) on_workers all "$(check_script)" ;;
  prepare)
    [[ -z "$DATA_GCS" || "$DATA_GCS" == gs://* ]] || fail "DATA_GCS='$DATA_GCS': a gs:// path is needed"
    on_workers all "$(prepare_script)"
    ;;
  run)
    [[ -n "$CHECKPOINT_DIR" ]] ||
      fail "set BUCKET (checkpoints go to gs://\$BUCKET/varjax/\$RUN_NAME/checkpoints) or CHECKPOINT_DIR"
    [[ "$WORKDIR" != gs://* ]] ||
      fail "WORKDIR=$WORKDIR: the workdir is each worker's local directory; put checkpoints on gs:// with CHECKPOINT_DIR"
    if [[ "$CHECKPOINT_DIR" != gs://* ]]; then
      echo "$0: warning: CHECKPOINT_DIR=$CHECKPOINT_DIR is not a gs:// path; every worker must" \
           "see the same directory (checkpoint shards of all workers go there)" >&2
    fi
    on_workers all "$(run_script)"
    ;;
  fetch)
    run gcloud compute tpus tpu-vm scp --zone "$ZONE" "${project_flags[@]}" --worker=0 \
      --recurse "$TPU_NAME:$WORKDIR" "${FETCH_TO:-.}"
    ;;
  logs) on_workers "$WORKER" "$(logs_script)" ;;
  status) on_workers all "$(status_script)" ;;
  stop) on_workers all "$(stop_script)" ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}" --quiet
    ;;
  *) usage ;;
esac
