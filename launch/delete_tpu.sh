#!/usr/bin/env bash
# Deletes the TPU VM (workdirs and data in the bucket stay).
#
#   TPU_NAME=bitseg ZONE=us-central2-b launch/delete_tpu.sh
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "$0")/common.sh"
require TPU_NAME ZONE

mapfile -t flags < <(gcloud_flags)
run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${flags[@]}" --quiet
