#!/usr/bin/env bash
# varjax on a Cloud TPU pod slice: every worker runs the same command; JAX's
# multi-controller runtime (jax.distributed, auto-detected on TPU VMs) joins them.
#
#   launch/tpu_pod.sh create|install|run|logs|delete
#
# Settings (environment):
#   TPU_NAME (varjax-pod)  ZONE (us-central2-b)  ACCELERATOR_TYPE (v4-32)
#   RUNTIME_VERSION (tpu-ubuntu2204-base)  PROJECT (gcloud's default)
#   REPO_URL   git URL of varjax to install on every worker
#   BUCKET     GCS bucket (no gs://) mounted with gcsfuse at /gcs/$BUCKET on every
#              worker: workdirs and checkpoints must be one filesystem for all workers
#   RUN_NAME (airbench94)  CONFIG (experiments/airbench.py)  EXTRA_FLAGS ('')
#   TFDS_DATA_DIR (gs://$BUCKET/tensorflow_datasets)
#   DRY_RUN=1  print the commands instead of running them
set -euo pipefail

TPU_NAME=${TPU_NAME:-varjax-pod}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
REPO_URL=${REPO_URL:-https://github.com/varjax/varjax.git}
BUCKET=${BUCKET:-my-varjax-bucket}
RUN_NAME=${RUN_NAME:-airbench94}
CONFIG=${CONFIG:-experiments/airbench.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
TFDS_DATA_DIR=${TFDS_DATA_DIR:-gs://$BUCKET/tensorflow_datasets}
WORKDIR=/gcs/$BUCKET/varjax/$RUN_NAME

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

project_flags=()
if [[ -n "$PROJECT" ]]; then
  project_flags=(--project "$PROJECT")
fi

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}" \
    --worker=all --command "$1"
}

case "${1:-}" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}" \
      --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
    ;;
  install)
    on_all_workers "set -e; sudo apt-get -y install gcsfuse || true; \
sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET; \
mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET; \
[ -d varjax ] || git clone $REPO_URL varjax; cd varjax && git pull --ff-only; \
python3 -m pip install -q -e . 'jax[tpu]'"
    ;;
  run)
    # Same command on every worker; rerunning it resumes from the latest checkpoint.
    on_all_workers "cd varjax && TFDS_DATA_DIR=$TFDS_DATA_DIR python3 -m varjax.main \
--config=$CONFIG --workdir=$WORKDIR --distributed $EXTRA_FLAGS 2>&1 | tee -a ~/varjax_$RUN_NAME.log"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}" \
      --worker=0 --command "tail -f ~/varjax_$RUN_NAME.log"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" "${project_flags[@]}" --quiet
    ;;
  *)
    echo "usage: $0 create|install|run|logs|delete (settings: see the top of this file)" >&2
    exit 2
    ;;
esac
