#!/usr/bin/env bash
# Runs `python -m bitseg_jax.main ... --multihost` on every worker of the TPU VM.
#
#   TPU_NAME=bitseg ZONE=us-central2-b BUCKET=my-bucket CONFIG=configs/base.py NAME=base \
#     launch/run.sh [--config.optim.lr=2e-4 ...]
#
# Extra environment: BUCKET (required; workdir gs://$BUCKET/workdirs/$NAME and TFDS data
# dir gs://$BUCKET/tensorflow_datasets), CONFIG (default configs/base.py), NAME (default:
# the config's file stem), MODE (train|eval|export, default train), REMOTE_DIR, DETACH=1 to
# run under nohup and return (logs in ~/NAME.log on each worker).
# Arguments are passed on to main (config overrides, --eval_setup=...).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "$0")/common.sh"
require TPU_NAME ZONE BUCKET
CONFIG="${CONFIG:-configs/base.py}"
NAME="${NAME:-$(basename "${CONFIG%%:*}" .py)}"
MODE="${MODE:-train}"
REMOTE_DIR="${REMOTE_DIR:-bitseg-jax}"

mapfile -t flags < <(gcloud_flags)
args=("--config=$CONFIG" "--workdir=gs://$BUCKET/workdirs/$NAME" "--mode=$MODE" --multihost "$@")
cmdline=""
for arg in "${args[@]}"; do cmdline+=" $(printf '%q' "$arg")"; done
main="TFDS_DATA_DIR=gs://$BUCKET/tensorflow_datasets python -m bitseg_jax.main$cmdline"
if [[ "${DETACH:-0}" == "1" ]]; then
  main="nohup $main > ~/$NAME.log 2>&1 &"
fi
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --worker=all \
  --command="cd ~/$REMOTE_DIR && . ~/venv/bin/activate && $main"
