#!/usr/bin/env bash
# Shared settings and helpers for the Cloud TPU scripts in launch/. Sourced, not run.
#
# Environment (all scripts):
#   TPU_NAME          TPU VM name (required)
#   ZONE              e.g. us-central2-b, us-east5-b (required)
#   PROJECT           gcloud project; empty = gcloud's configured default
#   ACCELERATOR_TYPE  e.g. v4-8, v5litepod-8, v6e-8 (default v4-8)
#   RUNTIME_VERSION   TPU VM image; default derived from ACCELERATOR_TYPE
#   DRY_RUN=1         print the gcloud commands instead of running them
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"

default_runtime_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}"

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: set $name (see the header of $(basename "$0"))" >&2
      exit 2
    fi
  done
}

# Flags common to every `gcloud compute tpus tpu-vm` call.
gcloud_flags() {
  local flags=(--zone="$ZONE")
  if [[ -n "${PROJECT:-}" ]]; then flags+=(--project="$PROJECT"); fi
  printf '%s\n' "${flags[@]}"
}

# Runs a command, or prints it (shell-quoted, one line) when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    local quoted=() arg
    for arg in "$@"; do quoted+=("$(printf '%q' "$arg")"); done
    echo "${quoted[*]}"
  else
    "$@"
  fi
}
