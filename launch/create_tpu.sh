#!/usr/bin/env bash
# Creates a Cloud TPU VM (single host or pod slice).
#
#   TPU_NAME=bitseg ZONE=us-central2-b ACCELERATOR_TYPE=v4-8 launch/create_tpu.sh
#
# Extra environment: SPOT=1 asks for a Spot VM (preemptible; runs resume from the last
# checkpoint). See launch/common.sh for the rest.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "$0")/common.sh"
require TPU_NAME ZONE

mapfile -t flags < <(gcloud_flags)
extra=()
if [[ "${SPOT:-0}" == "1" ]]; then extra+=(--spot); fi
run gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
