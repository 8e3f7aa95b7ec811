#!/usr/bin/env bash
# Copies this checkout to every worker of the TPU VM and installs it in a venv there.
#
#   TPU_NAME=bitseg ZONE=us-central2-b launch/setup_tpu.sh
#
# Extra environment: REMOTE_DIR (default bitseg-jax, under the worker's home).
# Installs the pinned package set, then `jax[tpu]` on top (newer jax is allowed on TPU hosts).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "$0")/common.sh"
require TPU_NAME ZONE
REMOTE_DIR="${REMOTE_DIR:-bitseg-jax}"
repo_root="$(cd "$(dirname "$0")/.." && pwd)"

mapfile -t flags < <(gcloud_flags)
archive="/tmp/bitseg-jax-$$.tar.gz"
run git -C "$repo_root" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "${flags[@]}" --worker=all "$archive" "$TPU_NAME:~/bitseg-jax.tar.gz"
remote="set -e; rm -rf ~/$REMOTE_DIR; tar xzf ~/bitseg-jax.tar.gz -C ~;"
remote+=" python3 -m venv ~/venv; . ~/venv/bin/activate; pip install -q -U pip;"
remote+=" pip install -q -e ~/$REMOTE_DIR; pip install -q -U 'jax[tpu]';"
remote+=" python -c 'import jax; print(jax.process_index(), jax.local_device_count())'"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --worker=all --command="$remote"
run rm -f "$archive"
