#!/usr/bin/env bash
# Deletes the slice: the queued resource and its TPU node (or the node alone).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE [--yes] [--async] [--node-only] [options]

Deletes the queued resource NAME together with its TPU node (gcloud ... queued-resources delete
--force). Everything on the workers' disks goes with them; a workdir in a mounted bucket stays.
Run launch/stop.sh first to have the job save a checkpoint.

Options:
  --yes         do not ask for confirmation
  --async       return without waiting for the deletion to finish
  --node-only   delete only the TPU node NAME (for a TPU made with 'tpu-vm create')

${COMMON_HELP}"

YES=0
ASYNC=0
NODE_ONLY=0
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --yes) YES=1 CONSUMED=1 ;;
    --async) ASYNC=1 CONSUMED=1 ;;
    --node-only) NODE_ONLY=1 CONSUMED=1 ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone
require_gcloud

gcloud_common_flags
if ((NODE_ONLY)); then
  DELETE=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}")
else
  DELETE=(gcloud compute tpus queued-resources delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --force)
fi
((!ASYNC)) || DELETE+=(--async)
((!YES)) || DELETE+=(--quiet)
run "${DELETE[@]}"
